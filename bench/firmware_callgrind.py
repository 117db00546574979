"""Firmware cost per 15-minute interval on the MicroPython unix port: instructions and peak heap.

Instructions are counted with valgrind callgrind (``--collect-atstart=no --toggle-collect='*run_main*'``,
so only MicroPython's own work counts; the count is deterministic run to run). Each part is the
difference of two runs of the same driver, so interpreter start-up and imports cancel out:

  sampling   ctsim.SimADC.read_block (the unix stand-in for the ADC; a board reads its ADC instead)
  sensing    sensing.block_power_mw + EnergyAccumulator.add, integer maths
  emonlib    baseline in the same run: EmonLib-style per-sample float high-pass filter + float energy
  tail       privacy.noise_share + analytics_value + protocol.frame.seal + outbox.Outbox.append
             (once per interval, os.urandom as on the meter)

per second costs come from S1 and S2 simulated seconds: (I(S2) - I(S1)) / (S2 - S1); one interval
is 900 s x per-second + tail. Dense = every sample (fs = 32 x mains = 1600 Hz, 200 ms blocks, as
hal_unix); sparse = 2 mains cycles per simulated second. Peak heap: a full dense interval plus the
tail under ``-X heapsize=64k``, gc.mem_alloc() high-water sampled after every block.

    .venv/bin/python bench/firmware_callgrind.py          # prints one JSON object
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

REPO = Path(__file__).resolve().parents[1]
MAINS = 50
FS = 32 * MAINS
DENSE_BLOCK_MS = 200
SPARSE_CYCLES = 2
S1, S2 = 4, 16        # simulated seconds for the two callgrind runs
TAIL_R = (1, 5)       # tail repetitions for the two callgrind runs
INTERVAL_S = 900

DRIVER = r'''
import array, gc, os, sys
gc.collect()
m_start = gc.mem_alloc()
mode = sys.argv[1]
from meter import sensing, privacy
if mode != "tail":
    from meter import ctsim
outbox = frame = None
if mode in ("tail", "full"):
    from protocol import frame
    try:
        from meter import outbox
    except ImportError:
        pass
gc.collect()
m_imports = gc.mem_alloc()
mode, secs, sparse, prof, store = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
# gc.mem_alloc() walks the heap: sample it only in heap runs, never under callgrind
watch = sys.argv[6] == "heap"
MAINS = %(mains)d
FS = %(fs)d
CAL = {"ct_turns": 2000, "burden_ohm": 33.0, "adc_bits": 12, "vref_mv": 3300, "volts": 230.0,
       "power_factor": 1.0, "rated_amps": 30.0, "noise_rms_codes": 0.85}
cal = sensing.Calibration(CAL)
sim = None if mode == "tail" else ctsim.SimADC(prof, MAINS, 7, harmonics=((3, 0.3, 0), (5, 0.15, 180)), epoch_ms=0)
if sparse:
    n = sensing.cycle_samples(FS, MAINS, %(sparse_cycles)d)
    step = 1000
else:
    n = FS * %(block_ms)d // 1000
    step = %(block_ms)d
buf = array.array("H", bytes(2 * n))
acc = sensing.EnergyAccumulator()
stats = [0, 0]
T0 = 1763856000000


def emon_block(buf, n, st):
    # EmonLib calcIrms, transcribed: float high-pass offset filter, float sum of squares.
    offset = st[0]
    sumsq = 0.0
    for i in range(n):
        s = buf[i]
        offset = offset + (s - offset) / 1024.0
        f = s - offset
        sumsq += f * f
    st[0] = offset
    irms = cal.amps_per_code * (sumsq / n) ** 0.5
    return 230.0 * irms


ob = outbox.Outbox(store) if outbox is not None and mode in ("tail", "full") else None
keys = frame.derive_keys(bytes(range(32))) if frame else None
gc.collect()
base = gc.mem_alloc()
emon = [2048.0, 0.0]
blocks = secs * 1000 // step if mode != "tail" else 0
live = 0        # live heap after a collection, max over blocks (state, no garbage)
g_sense = 0     # garbage per block, max: sensing or the emonlib baseline
g_tail = 0      # garbage per reading: noise + seal + outbox
for b in range(blocks):
    sim.read_block(buf, T0 + b * step, n, FS)
    if watch:
        # (the simulator's own float garbage is unix-only and not measured: it rebuilds its
        # cycle table on load changes, which needs the collector running)
        gc.collect()
        gc.disable()
        a1 = gc.mem_alloc()
    if mode in ("sense", "full"):
        acc.add(sensing.block_power_mw(buf, n, cal, stats), step)
    elif mode == "emon" and watch:
        # boxed floats: a whole block's garbage would not fit the heap with gc off; measure 32
        # samples and scale to the block
        emon_block(buf, 32, emon)
    elif mode == "emon":
        emon[1] += emon_block(buf, n, emon) * step / 3600000.0
    if watch:
        a2 = gc.mem_alloc()
        gc.enable()
        live = max(live, a1)
        g_sense = max(g_sense, (a2 - a1) * (n // 32 if mode == "emon" else 1))
if mode in ("tail", "full"):
    for r in range(secs if mode == "tail" else 1):
        if watch:
            gc.collect()
            gc.disable()
            a0 = gc.mem_alloc()
        wh = acc.take_wh()
        noise = privacy.noise_share(1000, 1000, 10)
        hdr = {"kind": frame.KIND_READING, "meter_id": "m0001", "counter": r + 1,
               "interval_start": 1763856000 + 900 * r, "interval_len": 900,
               "epsilon_milli": 1000, "clamp_wh": 1000, "m": 10}
        fields = {"billing_wh": wh, "analytics_wh": privacy.analytics_value(wh, 1000, noise), "flags": 0,
                  "samples": blocks * n, "clipped": stats[0], "missing_s": 0}
        blob = frame.seal(keys, hdr, fields)
        if ob is not None:
            ob.append(blob)
        if watch:
            g_tail = max(g_tail, gc.mem_alloc() - a0)
            gc.enable()
            live = max(live, a0)
print("RESULT", 1 if ob is not None else 0, m_imports - m_start, base - m_imports, live - base,
      g_sense, g_tail, acc.peek_mwh())
'''


def micropython_bin() -> str:
    cand = Path(sys.executable).parent / "micropython"
    return str(cand) if cand.exists() else (shutil.which("micropython") or "micropython")


def build(tmp: Path) -> Path:
    """mpy-cross the firmware, protocol and driver, as tools/build does for a board: without it
    the unix port compiles sources on import and that transient alone overflows a 64 KB heap."""
    lib = tmp / "lib"
    cross = Path(sys.executable).parent / "mpy-cross"
    cross_cmd = str(cross) if cross.exists() else "mpy-cross"
    jobs = [(REPO / "firmware" / "meter", lib / "meter"), (REPO / "protocol", lib / "protocol")]
    for src, dst in jobs:
        dst.mkdir(parents=True)
        for f in src.glob("*.py"):
            subprocess.run([cross_cmd, "-o", str(dst / (f.stem + ".mpy")), str(f)], check=True)
    subprocess.run([cross_cmd, "-o", str(lib / "driver.mpy"), str(tmp / "driver.py")], check=True)
    return lib


def env(lib: Path) -> dict:
    return dict(os.environ, MICROPYPATH=f".frozen:{lib}")


def run(tmp: Path, args: list[str], callgrind: bool, heap: str | None = None) -> tuple[int | None, list[str]]:
    store = tmp / f"outbox-{len(list(tmp.iterdir()))}"
    cmd = [micropython_bin()]
    if heap:
        cmd += ["-X", f"heapsize={heap}"]
    cmd += ["-c", "import driver", *args[:3], str(tmp / "profile.csv"), str(store),
            "heap" if heap else "count"]
    out_file = tmp / "cg.out"
    if callgrind:
        cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=*run_main*",
               f"--callgrind-out-file={out_file}", *cmd]
    proc = subprocess.run(cmd, env=env(tmp / "lib"), capture_output=True, text=True, timeout=600)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"driver failed: {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    instr = None
    if callgrind:
        m = re.search(r"Collected\s*:\s*(\d+)", proc.stderr) or re.search(r"refs:\s*([\d,]+)", proc.stderr)
        if m is None:
            text = out_file.read_text()
            m = re.search(r"^summary:\s*(\d+)", text, re.M) or re.search(r"^totals:\s*(\d+)", text, re.M)
        instr = int(m.group(1).replace(",", ""))
    return instr, line[0].split()[1:]


def per_unit(tmp: Path, mode: str, sparse: int, lo: int, hi: int) -> float:
    a, _ = run(tmp, [mode, str(lo), str(sparse)], True)
    b, _ = run(tmp, [mode, str(hi), str(sparse)], True)
    return (b - a) / (hi - lo)


def main() -> None:
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind not found (apt-get install valgrind)")
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "driver.py").write_text(DRIVER % {"mains": MAINS, "fs": FS, "block_ms": DENSE_BLOCK_MS,
                                                 "sparse_cycles": SPARSE_CYCLES})
        # 50% of rated current for the first 10 minutes, 5% after: both levels get exercised
        build(tmp)
        (tmp / "profile.csv").write_text("seconds,watts\n0,3450\n600,345\n")
        res: dict = {"mains_hz": MAINS, "fs_hz": FS, "dense_block_ms": DENSE_BLOCK_MS,
                     "sparse_cycles_per_s": SPARSE_CYCLES, "interval_s": INTERVAL_S}
        per_s = {}
        for label, sparse in (("dense", 0), ("sparse", SPARSE_CYCLES)):
            sim = per_unit(tmp, "sim", sparse, S1, S2)
            sense = per_unit(tmp, "sense", sparse, S1, S2) - sim
            per_s[label] = {"sampling_sim": sim, "sensing": sense}
        per_s["dense"]["emonlib_float"] = per_unit(tmp, "emon", 0, S1, S2) - per_s["dense"]["sampling_sim"]
        tail = per_unit(tmp, "tail", 0, *TAIL_R)
        _, out = run(tmp, ["tail", "1", "0"], False)
        res["outbox_included"] = out[0] == "1"
        res["instr_per_second"] = {k: {kk: round(vv) for kk, vv in v.items()} for k, v in per_s.items()}
        res["instr_tail_per_interval"] = round(tail)
        per_iv = {}
        for label in ("dense", "sparse"):
            p = per_s[label]
            per_iv[label] = {
                "sampling_sim": round(INTERVAL_S * p["sampling_sim"]),
                "sensing": round(INTERVAL_S * p["sensing"]),
                "tail_noise_seal_outbox": round(tail),
                "total_with_sim": round(INTERVAL_S * (p["sampling_sim"] + p["sensing"]) + tail),
                "total_board_work": round(INTERVAL_S * p["sensing"] + tail),
            }
        per_iv["dense"]["emonlib_float_sensing"] = round(INTERVAL_S * per_s["dense"]["emonlib_float"])
        res["instr_per_interval"] = per_iv
        samples_per_s = FS
        res["instr_per_sample_dense"] = {
            "sensing": round(per_s["dense"]["sensing"] / samples_per_s, 2),
            "emonlib_float": round(per_s["dense"]["emonlib_float"] / samples_per_s, 2),
            "sampling_sim": round(per_s["dense"]["sampling_sim"] / samples_per_s, 2),
        }
        res["ratios"] = {
            "emonlib_over_sensing": round(per_s["dense"]["emonlib_float"] / per_s["dense"]["sensing"], 3),
            "dense_over_sparse_board_work": round(per_iv["dense"]["total_board_work"]
                                                  / per_iv["sparse"]["total_board_work"], 2),
            "tail_share_of_dense_board_work": round(tail / per_iv["dense"]["total_board_work"], 5),
        }
        # peak heap: one full dense interval + tail, capped at 64 KB like an ESP32 without PSRAM
        heap = {}
        for key, mode, secs, size in (("sensing_interval_64k", "sense", INTERVAL_S, "64k"),
                                      ("emonlib_interval_64k", "emon", INTERVAL_S, "64k"),
                                      ("tail_64k", "tail", 3, "64k"),
                                      ("everything_128k", "full", 60, "128k")):
            _, out = run(tmp, [mode, str(secs), "0"], False, heap=size)
            v = [int(x) for x in out[1:6]]
            heap[key] = {"imports_mpy": v[0], "state": v[1], "live_growth": v[2],
                         "garbage_per_block_sensing": v[3], "garbage_per_reading_tail": v[4],
                         "peak_need": v[0] + v[1] + v[2] + max(v[3], v[4])}
        heap["note"] = ("bytes. imports: .mpy loaded into RAM on unix (frozen into flash on a board); state: "
                        "SimADC tables + profile (unix only), block buffer, calibration (+ outbox, keys); "
                        "garbage: allocated per block / per reading with gc disabled, freed by the next "
                        "collection; peak_need = imports + state + max transient. All modules as RAM-loaded "
                        ".mpy do not fit 64k, hence the 128k run for everything together")
        res["heap"] = heap
    res["bench_seconds"] = round(time.monotonic() - t_start, 1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
