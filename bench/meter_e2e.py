"""The meter in end-to-end mode: cost per encryption, sampling stall, heap, outbox bytes; proxy mode beside it.

1. Instructions per encryption on the MicroPython unix port (valgrind callgrind; the difference of a run
   with one encryption and one with none, so start-up and imports cancel out; deterministic for a fixed
   exponent). One encryption = the DJN obfuscator hs^a mod n^2 (a of bits(n)/2 bits, base-n digit
   arithmetic, protocol/paillier.py) + the packed plaintext + the kind 3 seal with the household copy.
   Converted to seconds on an ESP32 (240 MHz) and an RP2040 (133 MHz) with the factors stated in the
   output: the unix port on x86-64 stores big integers in 32-bit digits, the boards in 16-bit digits
   (4x the digit operations for schoolbook multiplication and division); IPC and instruction-set
   factors are assumptions, printed with the result.
2. Longest gap between two ADC blocks (nothing is sampled then) with the real firmware on the unix port,
   E2E and proxy mode in the same run (`HEAP {"max_block_gap_ms"}`; 1-second blocks, 2048-bit key).
3. Heap low point (free after a collection) of the same runs, and in E2E mode from ROMFS.
4. Outbox bytes per reading per mode, and what 30 days (ESP32) and 7 days (Pico W) of 15-minute
   readings plus a status frame every 4 readings need.

    .venv/bin/python bench/meter_e2e.py          # prints one JSON object (~2-4 min)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from phe import paillier

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from meterveil.host.common.pubkey import make_hs  # noqa: E402
from meterveil.host.demo import firmware_runner as fr  # noqa: E402
from meterveil.protocol import e2e as proto_e2e  # noqa: E402
from meterveil.protocol import frame  # noqa: E402

ESP32_HZ, RP2040_HZ = 240e6, 133e6
DIGIT_FACTOR = 4.0      # 16-bit mpz digits on 32-bit boards vs 32-bit digits on the x86-64 unix port
IPC = {"esp32": 1.0, "rp2040": 0.7}          # assumed instructions per cycle in the mpz inner loops
ISA_FACTOR = {"esp32": 1.0, "rp2040": 1.3}   # assumed target instructions per x86-64 instruction
INTERVAL_S = 900
STATUS_EVERY = 4

DRIVER = r'''
import sys
from protocol import e2e, frame, paillier
args = open(sys.argv[2]).read().split()  # a long argv crashes the unix port: numbers come in a file
n = int(args[0], 16)
hs = int(args[1], 16)
bits = int(args[2])
a = int(args[3], 16)
keys = (bytes(16), bytes(32))
hk = (bytes(16), bytes(32))
for k in range(int(sys.argv[1])):
    o = paillier.Obfuscator(hs, n, bits, a)
    while not o.step(8):
        pass
    hdr = {"kind": 3, "meter_id": "m0001", "counter": k + 1, "interval_start": 1763856000 + 900 * k,
           "interval_len": 900, "epsilon_milli": 1000, "clamp_wh": 1000, "m": 10}
    f = {"billing_wh": 321, "analytics_wh": -5, "flags": 0, "samples": 900, "clipped": 0, "missing_s": 0}
    blob = e2e.seal(keys, hk, hdr, f, n, o.value(), bytes(16))
print("DONE", int(sys.argv[1]))
'''


def callgrind(tmp: Path, count: int, pub, hs: int, a: int) -> int:
    out = tmp / f"cg.{count}"
    env = dict(os.environ, MICROPYPATH=f".frozen:{REPO}")
    (tmp / "args").write_text(f"{pub.n:x} {hs:x} {pub.n.bit_length() // 2} {a:x}")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", fr.micropython_binary(),
           str(tmp / "driver.py"), str(count), str(tmp / "args")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if res.returncode != 0 or "DONE" not in res.stdout:
        raise SystemExit(f"callgrind driver failed:\n{res.stdout}\n{res.stderr}")
    m = re.search(r"Collected\s*:\s*(\d+)", res.stderr) or re.search(r"refs:\s*([\d,]+)", res.stderr)
    if m is None:
        m = re.search(r"^(?:summary|totals):\s*(\d+)", out.read_text(), re.M)
    return int(m.group(1).replace(",", ""))


def run_meter(tmp: Path, name: str, e2e: dict | None, *, heapsize: str, romfs: bool, intervals: int) -> dict:
    from fwutil import meter_config  # the tests' unix-port meter config (stepped profile, sparse sampling)

    d = tmp / name
    d.mkdir()
    over = {"e2e": e2e} if e2e else {}
    # no broker: readings stay in the outbox (what is measured here is sampling, sealing and heap)
    cfg = meter_config(d, "mqtt://127.0.0.1:9", status_every=STATUS_EVERY, sim={"block_s": 1}, **over)
    m = fr.MeterProcess(cfg, d / "state", intervals=intervals, drain_timeout=1, heapsize=heapsize,
                        log_path=d / "meter.log", romfs=romfs)
    m.start()
    rc = m.wait(900)
    heap = m.heap()
    if heap is None:
        raise SystemExit(f"meter {name} exited {rc} without a HEAP line:\n{m.output[-3000:]}")
    records = [len(p.read_bytes()) for p in (d / "state" / "outbox").glob("s*.log")]
    return {"exit": rc, "readings": len(m.truth()), **heap, "outbox_bytes": sum(records)}


def outbox_sizes(reading_frame: int, status_frame: int) -> dict:
    rec = 6  # outbox record header: length + CRC32
    per_day = 86400 // INTERVAL_S
    day = per_day * (reading_frame + rec) + per_day // STATUS_EVERY * (status_frame + rec)
    return {"bytes_per_reading": reading_frame + rec, "bytes_per_day_with_status": day,
            "esp32_30_days": 30 * day, "pico_w_7_days": 7 * day}


def main() -> int:
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind not found")
    t0 = time.monotonic()
    pub, _sk = paillier.generate_paillier_keypair(n_length=2048)
    hs = make_hs(pub.n)
    a = int.from_bytes(os.urandom(128), "big")
    res: dict = {"bench": "meter_e2e", "key_bits": 2048, "exp_bits": 1024}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "driver.py").write_text(DRIVER)
        i0, i1 = callgrind(tmp, 0, pub, hs, a), callgrind(tmp, 1, pub, hs, a)
        per = i1 - i0
        print(f"callgrind: {per} instructions per encryption", file=sys.stderr)
        est = {b: per * DIGIT_FACTOR * ISA_FACTOR[b] / IPC[b] / hz for b, hz in (("esp32", ESP32_HZ),
                                                                             ("rp2040", RP2040_HZ))}
        res["instructions_per_encryption_unix_x86_64"] = round(per)
        res["estimate_s"] = {b: round(v, 1) for b, v in est.items()}
        res["estimate_share_of_interval"] = {b: round(v / INTERVAL_S, 4) for b, v in est.items()}
        res["estimate_assumptions"] = {"digit_factor": DIGIT_FACTOR, "ipc": IPC, "isa_factor": ISA_FACTOR,
                                       "clock_hz": {"esp32": ESP32_HZ, "rp2040": RP2040_HZ},
                                       "popcount_of_exponent": bin(a).count("1")}
        e2e_cfg = {"n": f"{pub.n:x}", "hs": f"{hs:x}", "exp_bits": 1024, "household_key": "11" * 32}
        fr.build_firmware()
        runs = {"proxy": run_meter(tmp, "proxy", None, heapsize="128k", romfs=False, intervals=6),
                "e2e": run_meter(tmp, "e2e", e2e_cfg, heapsize="128k", romfs=False, intervals=6),
                "e2e_romfs_112k": run_meter(tmp, "e2e-romfs", e2e_cfg, heapsize="112k", romfs=True, intervals=4)}
        res["firmware_unix_port"] = runs
        res["max_block_gap_ms"] = {k: v["max_block_gap_ms"] for k, v in runs.items()}
        res["heap_min_free_after_gc"] = {k: v["min_free_after_gc"] for k, v in runs.items()}
    status = frame.MIN_FRAME + 48
    res["outbox"] = {"proxy": outbox_sizes(frame.MIN_FRAME + 32, status),
                     "e2e_2048": outbox_sizes(frame.MIN_FRAME + proto_e2e.body_len(512), status),
                     "e2e_3072": outbox_sizes(frame.MIN_FRAME + proto_e2e.body_len(768), status)}
    res["bench_seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
