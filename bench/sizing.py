"""The sizing table of docs/DEPLOYMENT.md, computed from the scale benchmark's JSON (bench/out/).

Assumptions (stated in the doc): 15-minute readings; the interval's burst must drain within
DRAIN_S; cores at UTILISATION at that rate; BROKER_CONNS TLS connections per broker node.

    .venv/bin/python bench/sizing.py    # prints the markdown table and the JSON it came from
"""

from __future__ import annotations

import json
import math
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
INTERVAL_S = 900
READINGS_PER_MONTH = 2880
DRAIN_S = 300
UTILISATION = 0.75
BROKER_CONNS = 500_000
IDLE_GATEWAY_MS = 1000 / 1422 + 0.2 + 0.2  # encryption on an idle core (bench/ingest.py) + store client + checks


def main() -> None:
    ingest = json.loads((OUT / "scale-ingest.json").read_text())["ingest"]
    store = json.loads((OUT / "scale-store.json").read_text())["store_ops"]
    billing = json.loads((OUT / "scale-billing.json").read_text())
    pg = ingest["postgres-2w"]["paced"]["cpu_ms_per_reading"]
    gw_ms, pg_ms = pg["gateway"], pg["postgres"]
    pg_idle_ms = store["postgres"]["server_cpu_ms"]
    # a whole stored reading (heap, indexes, key table) as ingest writes it; the billing stores are
    # bulk-filled without the key table
    bytes_per_reading = max(v[p]["bytes_per_reading"] for k, v in ingest.items() if k.startswith("postgres")
                            for p in v)
    fit = billing["billing_fit"]["postgres"]
    rows = []
    for meters in (10_000, 100_000, 1_000_000, 10_000_000):
        avg = meters / INTERVAL_S
        design = meters / DRAIN_S
        bill_cpu_s = fit["cpu_ms_per_meter"] / 1e3 * meters + fit["cpu_us_per_reading"] / 1e6 * meters * READINGS_PER_MONTH
        rows.append({
            "meters": meters, "avg_readings_s": round(avg), "design_readings_s": round(design),
            "gateway_cores": math.ceil(design * gw_ms / 1e3 / UTILISATION),
            "gateway_cores_idle_estimate": math.ceil(design * IDLE_GATEWAY_MS / 1e3 / UTILISATION),
            "postgres_cores": math.ceil(design * pg_ms / 1e3 / UTILISATION),
            "postgres_cores_idle_estimate": math.ceil(design * pg_idle_ms / 1e3 / UTILISATION),
            "disk_gb_per_month": round(meters * READINGS_PER_MONTH * bytes_per_reading / 1e9, 1),
            "broker_connections": meters, "broker_nodes": max(1, math.ceil(meters / BROKER_CONNS)) + (meters > BROKER_CONNS),
            "billing_core_hours_per_month": round(bill_cpu_s / 3600, 1),
        })
    print("| meters | readings/s avg / design | gateway cores (measured; idle-core estimate) | PostgreSQL cores "
          "(measured; store-ops estimate) | disk per month | broker connections (nodes) | billing CPU per month |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['meters']:,} | {r['avg_readings_s']:,} / {r['design_readings_s']:,} | {r['gateway_cores']} "
              f"({r['gateway_cores_idle_estimate']}) | {r['postgres_cores']} ({r['postgres_cores_idle_estimate']}) | "
              f"{r['disk_gb_per_month']:,} GB | {r['broker_connections']:,} ({r['broker_nodes']}) | "
              f"{r['billing_core_hours_per_month']:,} core-h |")
    print(json.dumps({"inputs": {"gateway_ms": gw_ms, "postgres_ms": pg_ms, "postgres_idle_ms": pg_idle_ms,
                                 "idle_gateway_ms": round(IDLE_GATEWAY_MS, 3), "bytes_per_reading": bytes_per_reading,
                                 "billing_fit": fit}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
