"""Scale benchmark: ingest through mosquitto (1 vs 2 workers, SQLite vs PostgreSQL), bytes per stored
reading, and billing from a large store (wall time, peak RSS) with an extrapolation.

Everything is real and in its own process: mosquitto, `meterveil gateway` workers on a shared
subscription, a throwaway PostgreSQL 15 cluster with fsync on (tests/pgutil.py), `meterveil loadgen`
publishing sealed frames, `meterveil bill` (the decryption role) reading the store. Ratios are against
the baseline measured in the same run: one worker on SQLite for ingest, 1,000 meters for billing.

Benchmark-only shortcut (billing): the stores are filled directly (bulk INSERT / COPY into `readings`,
not through MQTT and ingest) with valid Paillier ciphertexts of the packed readings whose obfuscators
r^n come from a pool of 16 real ones: 4,096 such ciphertexts are reused across the rows (2.9 M real
encryptions at ~1,400/s would take ~35 min per store). They decrypt and add like any other; a store
made this way is NOT private. Billing cases: 1,000 meters x 3 days, 1,000 meters x 30 days (a real
month: 2.88 M readings, 10x the readings of the same meters: peak RSS must not move) and 10,000 meters
x 3 days (the same 2.88 M readings over 10x the meters). 10,000 meters x a month is 28.8 M readings
(~22 GB of SQLite file, ~40 min to fill and bill here): it is extrapolated from these, with
100,000 meters, not measured.

    .venv/bin/python bench/scale.py                 # ~1 h on 2 cores
    .venv/bin/python bench/scale.py --only billing  # ~25 min
    .venv/bin/python bench/scale.py --quick         # ~3 min, small sizes
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from brokerutil import Mosquitto, wait_until  # noqa: E402
from pgutil import PgCluster  # noqa: E402
from roles import split_keys  # noqa: E402

from meterveil.host.common import packing  # noqa: E402
from meterveil.host.common.registry import MeterRecord, MeterRegistry  # noqa: E402
from meterveil.host.decryption.secret_key import generate_keypair  # noqa: E402
from meterveil.host.gateway.meter_keys import KeyedRegistry  # noqa: E402
from meterveil.host.gateway.mqtt import LatencyHistogram  # noqa: E402
from meterveil.host.store.base import (  # noqa: E402
    ORDER_BY,
    SCHEME_PACKED_V1,
    Batch,
    StoredReading,
    int_to_blob,
    open_store,
)
from meterveil.host.store.sqlite import _COLS as COLS  # noqa: E402

PY = sys.executable
TICK = os.sysconf("SC_CLK_TCK")
TARIFF = HERE.parent / "tariffs" / "tou3.toml"


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children (/proc/PID/stat)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in f[11:15]) / TICK  # utime stime cutime cstime


def pg_pids(pg: PgCluster) -> list[int]:
    """The postmaster and every backend it forked."""
    pm = int((pg.data / "postmaster.pid").read_text().split()[0])
    kids = subprocess.run(["pgrep", "-P", str(pm)], capture_output=True, text=True).stdout.split()
    return [pm, *map(int, kids)]


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "meterveil.host.cli", *args], capture_output=True, text=True, **kw)


def measured(args: list[str]) -> dict:
    """Wall time, peak RSS and CPU of one CLI run (os.wait4)."""
    t0 = time.monotonic()
    p = subprocess.Popen([PY, "-m", "meterveil.host.cli", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    out_chunks = []

    # drain the pipes without communicate(), which would reap the child before wait4 sees its rusage
    def drain(stream) -> None:
        out_chunks.append(stream.read())

    ts = [threading.Thread(target=drain, args=(s,)) for s in (p.stdout, p.stderr)]
    for t in ts:
        t.start()
    _, status, ru = os.wait4(p.pid, 0)
    for t in ts:
        t.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": p.returncode, "wall_s": round(time.monotonic() - t0, 2), "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),
            "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
            "output": b"".join(out_chunks).decode(errors="replace")[-1500:]}


# -- ingest --------------------------------------------------------------------------------------------

class Workers:
    def __init__(self, n: int, db: str, broker: Mosquitto, keys: Path, registry: Path, tag: str, logdir: Path):
        self.procs, self.logs = [], []
        for i in range(n):
            log = logdir / f"{tag}-{i}.log"
            cmd = ["gateway", "--broker", broker.url, "--db", db, "--keys", str(keys), "--registry", str(registry),
                   "--client-id", f"{tag}-{i}", "--share-group", f"bench-{tag}"]
            self.procs.append(subprocess.Popen([PY, "-m", "meterveil.host.cli", *cmd], stdout=subprocess.DEVNULL,
                                               stderr=open(log, "wb")))
            self.logs.append(log)
        for p, log in zip(self.procs, self.logs, strict=True):
            ok = wait_until(lambda log=log, p=p: b"gateway ready" in log.read_bytes() or p.poll() is not None, 120)
            if not ok or p.poll() is not None:
                raise RuntimeError(log.read_text()[-2000:])

    def cpu(self) -> float:
        return sum(cpu_s(p.pid) for p in self.procs)

    def stop(self) -> LatencyHistogram:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        merged = LatencyHistogram()
        for p, log in zip(self.procs, self.logs, strict=True):
            p.wait(60)
            m = re.findall(rb"ack latency \(receipt to PUBACK, ms\): (\{.*\})", log.read_bytes())
            if m:
                s = json.loads(m[-1])
                for b, v in s["buckets"].items():
                    merged.buckets[int(b)] = merged.buckets.get(int(b), 0) + v
                merged.n += s["n"]
                merged.max_s = max(merged.max_s, s["max"] / 1000)
        return merged


def bench_ingest(work: Path, pg: PgCluster, meters: int, days: float, paced_rate: int, paced_days: float,
                 runs: list[str] | None = None) -> dict:
    pub, priv = generate_keypair(2048)
    keys, _ = split_keys(work / "ingest", pub, priv)
    registry = work / "ingest" / "registry" / "meters.json"
    reg = KeyedRegistry.load(keys, registry)
    for i in range(meters):
        reg.add(f"lg{i:06d}", feeder=f"LG{i % 10:03d}", epsilon_milli=1000, clamp_wh=1000, m=10, save=False)
    reg.save()
    out = {}
    with Mosquitto(work / "broker") as broker:
        for backend, n in (("sqlite", 1), ("sqlite", 2), ("postgres", 1), ("postgres", 2)):
            tag = f"{backend}-{n}w"
            # "max": publish as fast as the load generator can (throughput; latency then includes the
            # queue at the gateway); "paced": a fixed rate below capacity (latency of a healthy system)
            for phase, rate, d in (("max", 0, days), ("paced", paced_rate, paced_days)):
                run = f"{tag}-{phase}"
                if runs and run not in runs and tag not in runs:
                    continue
                db = str(work / f"{run}.db") if backend == "sqlite" else pg.reset_db(f"ingest_{n}_{phase}")
                if backend == "postgres":
                    open_store(db).close()  # schema made before the clock starts
                workers = Workers(n, db, broker, keys, registry, run, work)
                mosq0, w0 = cpu_s(broker.proc.pid), workers.cpu()
                pg0 = sum(cpu_s(p) for p in pg_pids(pg)) if backend == "postgres" else 0.0
                lg = measured(["loadgen", "--meters", str(meters), "--days", str(d), "--rate", str(rate),
                               "--broker", broker.url, "--keys", str(keys), "--registry", str(registry), "--db", db,
                               "--quiet", "--settle-s", "900"])
                w_cpu = workers.cpu() - w0
                pg_cpu = sum(cpu_s(p) for p in pg_pids(pg)) - pg0 if backend == "postgres" else 0.0
                mosq_cpu = cpu_s(broker.proc.pid) - mosq0
                lat = workers.stop()
                rep = json.loads(lg["output"][lg["output"].index("{"):])
                store = open_store(db, create=False)
                stored = store.count_readings()
                size = store.storage_bytes()
                store.close()
                acc = max(1, rep["accepted"])
                out.setdefault(tag, {})[phase] = {
                    "rate_asked": rate or "max", "published": rep["published"], "accepted": rep["accepted"],
                    "rejected": rep["rejected_total"], "stored": stored, "readings_per_s": rep["ingest_rate"],
                    "wall_s": rep["ingest_s"],
                    "ack_latency_ms": {"p50": round(lat.percentile_ms(50), 1), "p99": round(lat.percentile_ms(99), 1),
                                       "max": round(lat.max_s * 1000, 1), "n": lat.n},
                    "cpu_ms_per_reading": {"gateway": round(1000 * w_cpu / acc, 3),
                                           "postgres": round(1000 * pg_cpu / acc, 3),
                                           "mosquitto": round(1000 * mosq_cpu / acc, 3),
                                           "loadgen": round(1000 * lg["cpu_s"] / acc, 3)},
                    "bytes_per_reading": round(sum(size.values()) / max(1, stored), 1),
                }
                print(f"ingest {run}: {out[tag][phase]}", file=sys.stderr)
    base = out.get("sqlite-1w", {}).get("max", {}).get("readings_per_s")
    for v in out.values():
        if base and "max" in v:
            v["max"]["x_sqlite_1w"] = round(v["max"]["readings_per_s"] / base, 2)
    return out


# -- store operations alone ------------------------------------------------------------------------------

def bench_store_ops(work: Path, pg: PgCluster, n: int) -> dict:
    """What the gateway asks of the store per reading (lookup, overlap check, a share of a 256-reading
    batch commit), without MQTT or encryption: client CPU, server CPU, wall per reading per backend."""
    out = {}
    for backend in ("sqlite", "postgres"):
        db = str(work / "ops.db") if backend == "sqlite" else pg.reset_db("ops")
        store = open_store(db)
        t0 = int(time.time()) // 900 * 900 - 86400
        srv = (lambda: sum(cpu_s(p) for p in pg_pids(pg))) if backend == "postgres" else (lambda: 0.0)
        c0, s0, w0 = time.process_time(), srv(), time.monotonic()
        k = 0
        while k < n:
            batch = Batch()
            for _ in range(256):
                m, st = f"m{k % 1000:04d}", t0 + (k // 1000) * 900
                store.lookup(m, k)
                store.overlapping(m, st, st + 900)
                batch.readings.append(StoredReading(m, k, "F", st, 900, 1000, 1000, 10, (1 << 4095) + k,
                                                    frame_digest=k.to_bytes(16, "big"), received_at=st))
                k += 1
            store.write_batch(batch)
        out[backend] = {"readings": k, "client_cpu_ms": round((time.process_time() - c0) / k * 1e3, 3),
                        "server_cpu_ms": round((srv() - s0) / k * 1e3, 3),
                        "wall_ms": round((time.monotonic() - w0) / k * 1e3, 3)}
        store.close()
        print(f"store ops {backend}: {out[backend]}", file=sys.stderr)
    return out


# -- billing -------------------------------------------------------------------------------------------

def fill(db: str, pub, meters: int, days: int, t0: int, seed: int = 7) -> dict:
    """Readings of `meters` meters for `days` days from t0, written straight into the readings table
    (benchmark-only shortcut, see the module docstring): bulk INSERT on SQLite, COPY on PostgreSQL, in
    time order as a gateway would have written them. Billing reads only `readings`; PostgreSQL's
    `reading_keys` (the ingest arbiter) is left empty, so bytes per stored reading come from the store
    benchmark (scale-store.json), not from here."""
    import gmpy2

    rng = random.Random(seed)
    nsq, n = gmpy2.mpz(pub.nsquare), gmpy2.mpz(pub.n)
    pool = [gmpy2.powmod(rng.randrange(1, pub.n), n, nsq) for _ in range(16)]
    # 4,096 ciphertexts of random readings, reused: a bill is still a real homomorphic sum and
    # decryption; the rows cost no arithmetic to make (the fill is not what is measured)
    cts = [int_to_blob(int((1 + packing.pack(b, b) * n) * pool[i % 16] % nsq))
           for i, b in enumerate(40 + rng.randrange(200) for _ in range(4096))]
    ids = [f"b{m:06d}" for m in range(meters)]
    feeders = [f"F{m % 100:03d}" for m in range(meters)]

    def rows():
        k = 0
        for d in range(days * 96):
            t = t0 + d * 900
            for m in range(meters):
                k += 1
                yield (ids[m], d + 1, feeders[m], t, 900, 1000, 1000, 10, 0, SCHEME_PACKED_V1, cts[k % 4096],
                       k.to_bytes(16, "big"), t + 60, b"")

    store = open_store(db)
    t_start = time.monotonic()
    if db.startswith("postgresql://"):
        store._ensure_partitions({t0, t0 + days * 86400 - 1})
        store.close()
        import psycopg

        with psycopg.connect(db) as conn, conn.cursor() as cur, cur.copy(f"COPY readings({COLS}) FROM STDIN") as cp:
            for r in rows():
                cp.write_row(r)
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE readings")
            size = int(conn.execute("SELECT SUM(pg_total_relation_size(c.oid)) FROM pg_class c "
                                    "WHERE c.relname LIKE 'readings_y%'").fetchone()[0])
    else:
        store.close()
        import sqlite3

        with sqlite3.connect(db, isolation_level=None) as conn:
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("BEGIN")
            conn.executemany(f"INSERT INTO readings({COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows())
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = Path(db).stat().st_size
    fill_s = time.monotonic() - t_start
    total = meters * days * 96
    return {"readings": total, "fill_s": round(fill_s, 1), "fill": "benchmark-only shortcut: rows written "
            "straight into `readings`, 4,096 real ciphertexts reused (NOT private)",
            "readings_bytes": size, "readings_bytes_per_row": round(size / total, 1)}


def billing_plan(db: str, t_from: int, t_to: int) -> str:
    """The query plan of the billing stream (order="meter"): an index scan, no sort of the month."""
    sql = (f"SELECT {COLS} FROM readings WHERE interval_start >= {t_from} AND interval_start < {t_to}"
           + ORDER_BY["meter"])
    if db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as conn:
            return " / ".join(r[0].strip() for r in conn.execute("EXPLAIN " + sql))
    import sqlite3

    with sqlite3.connect(db) as conn:
        return " / ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql))


def bench_billing(work: Path, pg: PgCluster, cases: list[tuple[int, int]], backends: list[str]) -> dict:
    pub, priv = generate_keypair(2048)
    out: dict = {}
    year, month = 2026, 10  # a closed month in the past
    from meterveil.host.backoffice.tariff import load_tariff

    t_from, t_to = load_tariff(TARIFF).period_bounds(f"{year}-{month:02d}")
    t0 = t_from  # the local month's first slot: 30 days of readings lie inside the billing period
    for backend in backends:
        for meters, days in cases:
            tag = f"{backend}-{meters}m-{days}d"
            root = work / tag
            keys, role = split_keys(root, pub, priv)
            reg = MeterRegistry.load(root / "registry" / "meters.json")
            for m in range(meters):
                reg.put(MeterRecord(f"b{m:06d}", f"F{m % 100:03d}", 1000, 1000, 10), save=False)
            reg.save()
            db = str(root / "store.db") if backend == "sqlite" else pg.reset_db(f"bill_{meters}_{days}")
            f = fill(db, pub, meters, days, t0)
            f["plan"] = billing_plan(db, t_from, t_to)
            res = measured(["bill", "--db", db, "--role-dir", str(role), "--registry", str(reg.path),
                            "--tariff", str(TARIFF), "--period", f"{year}-{month:02d}", "--out",
                            str(root / "bills.csv"), "--actor", "bench"])
            bills = {r["meter_id"] for r in csv.DictReader((root / "bills.csv").open())} \
                if (root / "bills.csv").exists() else set()
            out[tag] = {**f, "meters": meters, "days": days, "bill_rc": res["rc"], "bills": len(bills),
                        "bill_wall_s": res["wall_s"], "bill_peak_rss_mb": res["peak_rss_mb"],
                        "bill_cpu_s": res["cpu_s"], "loadavg_1m": round(os.getloadavg()[0], 1)}
            if backend == "postgres":
                pg.reset_db(f"bill_{meters}_{days}")  # free the disk for the next case
            if res["rc"] != 0:
                out[tag]["bill_output"] = res["output"]
            print(f"billing {tag}: {out[tag]}", file=sys.stderr)
    return out


def extrapolate(billing: dict, backend: str, cases: list[tuple[int, int]]) -> dict:
    """From three runs (few meters/few days, few meters/more days, many meters): what one more reading
    and one more meter cost in CPU and peak RSS, and a projection to 100,000 meters x one month
    (2,880 readings each). CPU time, not wall, is fitted: the machine is shared and the bill is one
    process; wall is projected with the wall/CPU ratio of the largest run (it includes the database).
    A fitted RSS growth per reading below zero is noise (streaming holds none) and counts as zero."""
    (m1, d1), (m2, d2), (m3, d3) = cases
    a, b, c = (billing[f"{backend}-{m}m-{d}d"] for m, d in cases)
    cpu_per_reading = (b["bill_cpu_s"] - a["bill_cpu_s"]) / (b["readings"] - a["readings"])
    cpu_per_meter = (c["bill_cpu_s"] - a["bill_cpu_s"] - cpu_per_reading * (c["readings"] - a["readings"])) / (m3 - m1)
    cpu_base = a["bill_cpu_s"] - cpu_per_reading * a["readings"] - cpu_per_meter * m1
    rss_per_million_readings = (b["bill_peak_rss_mb"] - a["bill_peak_rss_mb"]) / (b["readings"] - a["readings"]) * 1e6
    rss_per_meter = (c["bill_peak_rss_mb"] - a["bill_peak_rss_mb"]
                     - max(0.0, rss_per_million_readings) * (c["readings"] - a["readings"]) / 1e6) / (m3 - m1)
    wall_ratio = c["bill_wall_s"] / max(c["bill_cpu_s"], 1e-9)

    def project(meters: int) -> dict:
        readings = meters * 2880
        cpu = cpu_base + cpu_per_reading * readings + cpu_per_meter * meters
        rss = (a["bill_peak_rss_mb"] + rss_per_meter * (meters - m1)
               + max(0.0, rss_per_million_readings) * (readings - a["readings"]) / 1e6)
        return {"readings": readings, "cpu_s": round(cpu), "wall_s": round(cpu * wall_ratio), "peak_rss_mb": round(rss)}

    return {"cpu_us_per_reading": round(cpu_per_reading * 1e6, 2), "cpu_ms_per_meter": round(cpu_per_meter * 1e3, 2),
            "rss_mb_per_million_more_readings_same_meters": round(rss_per_million_readings, 2),
            "rss_kb_per_meter": round(rss_per_meter * 1024, 2),
            "readings_bytes_per_million": 1e6 * 512, "wall_over_cpu": round(wall_ratio, 2),
            "projected_10k_meters_month": project(10_000), "projected_100k_meters_month": project(100_000)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=("ingest", "store", "billing"))
    ap.add_argument("--backends", default="sqlite,postgres", help="billing: which stores")
    ap.add_argument("--ingest-runs", help="ingest: only these runs, e.g. postgres-1w-max,postgres-2w-max")
    ap.add_argument("--tag", default="", help="suffix of the output file name (e.g. before/after a change)")
    ap.add_argument("--cases", help="billing: three MxD cases (meters x days), e.g. 1000x3,1000x30,10000x3")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the cluster and broker on the way out
    result: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "loadavg_start": os.getloadavg()}}
    if args.quick:
        ingest = (40, 0.25, 200, 0.125)
        cases = [(100, 1), (100, 3), (300, 1)]
    else:
        ingest = (200, 0.75, 300, 0.25)   # meters, days at full speed, paced rate /s, days paced
        cases = [(1000, 3), (1000, 30), (10_000, 3)]  # meters x days of 15-minute readings
    if args.cases:
        cases = [tuple(int(x) for x in c.split("x")) for c in args.cases.split(",")]
    with tempfile.TemporaryDirectory(prefix="meterveil-scale-") as tmp, PgCluster(fsync=True) as pg:
        work = Path(tmp)
        os.chmod(work, 0o755)
        if args.only in (None, "ingest"):
            result["ingest"] = bench_ingest(work, pg, *ingest,
                                            runs=args.ingest_runs.split(",") if args.ingest_runs else None)
        if args.only in (None, "store"):
            result["store_ops"] = bench_store_ops(work, pg, 2560 if args.quick else 20480)
        if args.only in (None, "billing"):
            backends = args.backends.split(",")
            billing = bench_billing(work, pg, cases, backends)
            result["billing"] = billing
            result["billing_fit"] = {b: extrapolate(billing, b, cases) for b in backends}
    result["machine"]["loadavg_end"] = os.getloadavg()
    name = "scale" + (f"-{args.only}" if args.only else "") + ("-quick" if args.quick else "") + \
        (f"-{args.tag}" if args.tag else "")
    out = HERE / "out" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
