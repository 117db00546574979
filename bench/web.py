"""Web console benchmark: server time per page with a fleet-sized store, and the household's
in-browser decryption of a month of its own intervals. Prints JSON.

    .venv/bin/python bench/web.py [--meters 10000] [--days 31] [--repeat 30] [--quick]

Store: `--meters` meters x `--days` of 15-minute readings (10,000 x 31 days = 29.76 million rows)
written straight into the store schema. The ciphertext column holds an 8-byte placeholder instead of
a 512-byte Paillier ciphertext: no page reads that column (the web tier holds no key), and real
ciphertexts would make the file ~18 GB; the one step that reads whole rows, the operator page's
first scan (fleet index warm-up), is reported apart and would grow with the file. Registry, meter
statuses, rejection counters, a released bill run for every meter, a released month of feeder
load and a signed audit log with one entry per decision are all real. The household's meter runs in
end-to-end mode: its rows are kind 3 frames sealed by the protocol's own `e2e.seal` (real Paillier
ciphertext, real household copy in ``readings.household``), so the portal serves and the browser
opens exactly what an E2E gateway stores.

Server time is the Server-Timing header the app sets (request in to response headers out), over
real HTTP to uvicorn on loopback. Baselines in the same run: the GROUP BY a page would run without
the fleet tail index, and CPython opening the same household copies (protocol/household.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from webutil import PASSWORD, Browserless, Server, seal_e2e  # noqa: E402

from meterveil.host.audit import signing  # noqa: E402
from meterveil.host.audit.chain import AuditLog  # noqa: E402
from meterveil.host.common.registry import MeterRecord, MeterRegistry  # noqa: E402
from meterveil.host.common.release_queue import ReleaseQueue  # noqa: E402
from meterveil.host.decryption.secret_key import generate_keypair  # noqa: E402
from meterveil.host.store.base import SCHEME_PACKED_E2E_V1, int_to_blob, open_store  # noqa: E402
from meterveil.host.web.accounts import ROLES, Accounts  # noqa: E402
from meterveil.host.web.app import WebConfig  # noqa: E402
from meterveil.protocol import e2e, household  # noqa: E402

T0 = 1793471400  # 2026-11-01 00:00 IST
IV = 900
HOUSEHOLD_KEY = bytes(range(32))  # benchmark key, not a secret


def wh(i: int, k: int) -> int:
    return 30 + (i * 7 + k * 37) % 200


def build(root: Path, meters: int, days: int) -> tuple[WebConfig, dict]:
    n_int = days * 96
    ids = [f"m{i:05d}" for i in range(meters)]
    feeders = max(1, meters // 250)
    t = time.perf_counter()
    store_path = root / "store.db"
    open_store(store_path).close()  # schema
    c = sqlite3.connect(store_path)
    c.execute("PRAGMA journal_mode=OFF")
    c.execute("PRAGMA synchronous=OFF")
    c.execute("DROP INDEX readings_feeder_interval")
    c.execute("DROP INDEX readings_meter_interval")
    # the overlap trigger scans a meter's stored rows per insert (without the index above: all of them);
    # these rows cannot overlap by construction, so it is put back after the bulk load
    overlap_sql = c.execute("SELECT sql FROM sqlite_master WHERE type='trigger' AND name='readings_no_overlap'"
                            ).fetchone()[0]
    c.execute("DROP TRIGGER readings_no_overlap")
    now = int(time.time())
    ph, dig = b"\x01" * 8, b"\x00" * 4

    n = generate_keypair(1024)[0].n  # the household meter's rows carry real ciphertexts under it
    truth = []

    def rows():
        for i, m in enumerate(ids):
            f = f"F{i % feeders:03d}"
            for k in range(n_int):
                if i == 0:  # the household's meter: E2E rows with its sealed copy
                    ct, copy = seal_e2e(n, m, k + 1, T0 + k * IV, wh(0, k), HOUSEHOLD_KEY)
                    truth.append((T0 + k * IV, wh(0, k)))
                    yield (m, k + 1, f, T0 + k * IV, IV, 1000, 500, 5, 0, SCHEME_PACKED_E2E_V1, int_to_blob(ct), dig,
                           now - 600, copy)
                else:
                    yield (m, k + 1, f, T0 + k * IV, IV, 1000, 500, 5, 0, "paillier-packed-v1", ph, dig, now - 600,
                           b"")

    c.execute("BEGIN")
    c.executemany("INSERT INTO readings(meter_id, counter, feeder, interval_start, interval_len, epsilon_milli, "
                  "clamp_wh, m, flags, scheme, ciphertext, frame_digest, received_at, household) "
                  "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows())
    status = json.dumps({"outbox_depth": 0, "dp_spend_milli": 96000, "reconnects": 1, "boot_count": 1})
    c.executemany("INSERT INTO meter_status(meter_id, counter, received_at, status_json) VALUES (?,?,?,?)",
                  [(m, n_int + 1, now - (99999 if i % 97 == 0 else 60), status) for i, m in enumerate(ids)])
    c.executemany("INSERT INTO meter_counters VALUES (?,?,?)", [(m, "bad_tag", 1) for m in ids[::50]])
    c.execute("INSERT INTO counters VALUES ('accepted', ?)", (meters * n_int,))
    c.execute("COMMIT")
    t_rows = time.perf_counter() - t
    c.execute("CREATE INDEX readings_feeder_interval ON readings(feeder, interval_start)")
    c.execute("CREATE INDEX readings_meter_interval ON readings(meter_id, interval_start)")
    c.execute(overlap_sql)
    c.commit()
    c.close()
    t_store = time.perf_counter() - t

    reg = MeterRegistry.load(root / "registry" / "meters.json")
    for i, m in enumerate(ids):
        reg.put(MeterRecord(m, f"F{i % feeders:03d}", 1000, 500, 5, {"rated_amps": 60}), save=False)
    reg.save()

    role = root / "decryption"
    role.mkdir(mode=0o700, exist_ok=True)
    signing.generate(role)
    log = AuditLog(role / "decryption.db", signer=signing.load_signing(role / signing.SIGNING_NAME))
    log._db.execute("PRAGMA synchronous=OFF")
    for m in ids:
        log.append("web:billing#1", "bill", {"meter_id": m, "period": "2026-11", "readings": n_int}, "allow", "ok")
    for k in range(min(n_int, 31 * 96)):
        log.append("web:analyst#2", "feeder-load", {"feeder": "F000", "interval_start": T0 + k * IV,
                                                    "dp_params": [[1000, 500, 5]], "members_digest": "x",
                                                    "contributors": meters // feeders}, "allow", "ok")
    log.close()

    q = ReleaseQueue(root / "releases.db")
    rid = q.submit("bill", {"period": "2026-11", "tariff": "tou3"}, "billing")
    q.claim()
    lines = [{"band": "offpeak", "kind": "energy", "wh": 1000, "rate": "5", "amount_minor": 500},
             {"band": "TOTAL", "kind": "total", "wh": 1000, "rate": None, "amount_minor": 500}]
    q.finish(rid, "done", bills=[{"meter_id": m, "period": "2026-11", "currency": "INR", "minor_unit": "paise",
                                  "total_minor": 500, "total_wh": 1000, "readings": n_int, "missing_intervals": 0,
                                  "lines": lines} for m in ids], summary={"bills": meters})
    rid = q.submit("feeder-load", {"feeder": "F000", "t_from": T0, "t_to": T0 + n_int * IV}, "analyst")
    q.claim()
    q.finish(rid, "done", feeder_loads=[{"feeder": "F000", "interval_start": T0 + k * IV, "interval_len": IV,
                                         "contributors": meters // feeders, "m": 5, "epsilon_milli": 1000,
                                         "clamp_wh": 500, "status": "ok", "analytics_sum_wh": 25000 + k % 96 * 300}
                                        for k in range(n_int)], summary={"released": n_int})
    q.close()

    acc = Accounts(root / "web.db")
    for r in ROLES:
        acc.add_user(r, r, PASSWORD, ids[0] if r == "household" else None)
    acc.close()
    cfg = WebConfig(store=store_path, web_db=root / "web.db", queue=root / "releases.db",
                    registry=root / "registry" / "meters.json", audit_db=role / "decryption.db", tariffs=("tou3",))
    info = {"rows": meters * n_int, "store_bytes": store_path.stat().st_size, "build_rows_s": round(t_rows, 1),
            "build_store_s": round(t_store, 1), "truth": truth, "household": ids[0], "meters": meters}
    return cfg, info


def server_ms(resp) -> float:
    m = re.search(r"dur=([0-9.]+)", resp.headers.get("server-timing", ""))
    assert m and resp.status_code == 200, (resp.status_code, resp.text[:300])
    return float(m.group(1))


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))], 2)


def naive_last_reading_ms(store: Path) -> float:
    c = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    t = time.perf_counter()
    c.execute("SELECT meter_id, MAX(interval_start), MAX(received_at), COUNT(*) FROM readings GROUP BY meter_id").fetchall()
    ms = (time.perf_counter() - t) * 1000
    c.close()
    return round(ms, 1)


def cpython_open_ms(cfg: WebConfig, meter: str, month: str) -> float:
    from meterveil.host.web.households import month_bounds

    store = open_store(cfg.store, create=False)
    try:
        copies = store.household_copies(meter, *month_bounds(month))
    finally:
        store.close()
    keys = e2e.household_keys(HOUSEHOLD_KEY)
    t = time.perf_counter()
    for c in copies:
        household.open_copy(keys, c.sealed, c.meter_id, c.counter, c.interval_start, c.interval_len)
    return round((time.perf_counter() - t) * 1000, 1)


def browser_decrypt(url: str, month: str, repeat: int) -> dict:
    import shutil

    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=["--no-sandbox"])
        page = b.new_page()
        page.goto(url + "/login")
        page.fill("input[name=username]", "household")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_load_state()
        page.goto(url + "/household/intervals")
        runs = []
        for _ in range(repeat):
            runs.append(page.evaluate("""async ([key, month]) => {
                const t0 = performance.now();
                const data = await (await fetch(`/household/copies.json?month=${month}`)).json();
                const t1 = performance.now();
                const r = await window.meterveilDecrypt(key, data.meter_id, data.copies);
                const t2 = performance.now();
                return {fetch_ms: t1 - t0, decrypt_ms: t2 - t1, count: r.readings.length, bad: r.bad,
                        sum: r.readings.reduce((s, x) => s + x.wh, 0)};
            }""", [HOUSEHOLD_KEY.hex(), month]))
        # the whole click path, as a household sees it (status line written by the page)
        page.fill("#household-key", HOUSEHOLD_KEY.hex())
        page.select_option("#month", month)
        t = time.perf_counter()
        page.click("#decrypt-form button")
        while page.evaluate("document.getElementById('decrypt-status').dataset.done") != "1":
            time.sleep(0.005)  # polled here: wait_for_function evals its predicate, which the CSP forbids
        click_ms = (time.perf_counter() - t) * 1000
        b.close()
    return {"runs": runs, "click_to_chart_ms": round(click_ms, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meters", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=31)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="500 meters, 31 days, 10 repeats")
    ap.add_argument("--keep", help="build the workspace in this folder and keep it (reused when it is there)")
    ap.add_argument("--build-only", action="store_true", help="with --keep: build, then exit")
    a = ap.parse_args()
    if a.quick:
        a.meters, a.repeat = 500, 10
    tmp = None
    if a.keep:
        root = Path(a.keep)
        root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="mv-webbench-")
        root = Path(tmp.name)
    saved = root / "bench-info.json"
    if a.keep and saved.is_file():
        info = json.loads(saved.read_text())
        cfg = WebConfig(store=root / "store.db", web_db=root / "web.db", queue=root / "releases.db",
                        registry=root / "registry" / "meters.json", audit_db=root / "decryption" / "decryption.db",
                        tariffs=("tou3",))
    else:
        cfg, info = build(root, a.meters, a.days)
        if a.keep:
            saved.write_text(json.dumps(info))
    if a.build_only:
        return 0
    month = "2026-11"
    out: dict = {"meters": a.meters, "days": a.days, "readings": info["rows"], "store_mb": info["store_bytes"] >> 20,
                 "build_s": {"readings": info["build_rows_s"], "store_with_indexes": info["build_store_s"]},
                 "cpus": os.cpu_count(), "load_avg_1m_at_start": round(os.getloadavg()[0], 1),
                 "target_ms": 200, "pages": {}}
    with Server(cfg) as s:
        pages = {
            "operator": ["/operator", "/operator?page=3", "/operator?q=m0012"],
            "billing": ["/billing", "/billing/requests/1", "/billing/requests/1?page=20"],
            "auditor": ["/auditor"],
            "analyst": ["/analyst", "/analyst/requests/2"],
            "household": ["/household", "/household/intervals", f"/household/copies.json?month={month}"],
        }
        for role, paths in pages.items():
            c = Browserless(s.url)
            assert c.login(role).status_code == 303
            for i, path in enumerate(paths):
                first = server_ms(c.get(path))
                if role == "operator" and i == 0:
                    out["fleet_index_warmup_ms"] = round(first, 1)
                c.get(path)
                times = [server_ms(c.get(path)) for _ in range(a.repeat)]
                out["pages"][path] = {"p50_ms": pct(times, 50), "p95_ms": pct(times, 95), "max_ms": pct(times, 100)}
            c.close()
        out["baseline_last_reading_group_by_ms"] = naive_last_reading_ms(cfg.store)
        op = out["pages"]["/operator"]["p50_ms"]
        out["operator_vs_group_by"] = round(out["baseline_last_reading_group_by_ms"] / op, 1) if op else None
        out["all_pages_p95_within_target"] = all(v["p95_ms"] <= 200 for v in out["pages"].values())
        bd = browser_decrypt(s.url, month, 5)
    decrypts = [r["decrypt_ms"] for r in bd["runs"]]
    from meterveil.host.web.households import month_bounds

    t0, t1 = month_bounds(month)
    want = [w for t, w in info["truth"] if t0 <= t < t1]
    out["household_browser"] = {
        "intervals": bd["runs"][0]["count"], "bad": bd["runs"][0]["bad"],
        "equals_truth": all(r["count"] == len(want) and r["sum"] == sum(want) for r in bd["runs"]),
        "decrypt_ms_p50": round(statistics.median(decrypts), 1), "decrypt_ms_max": round(max(decrypts), 1),
        "fetch_ms_p50": round(statistics.median(r["fetch_ms"] for r in bd["runs"]), 1),
        "click_to_chart_ms": bd["click_to_chart_ms"], "target_ms": 1000,
        "cpython_open_same_copies_ms": cpython_open_ms(cfg, info["household"], month),
    }
    out["load_avg_1m_at_end"] = round(os.getloadavg()[0], 1)  # other jobs on the machine inflate p95
    print(json.dumps(out, indent=1))
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
