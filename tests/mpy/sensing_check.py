# Accuracy run of the real sensing code against the simulated CT (meter.ctsim), for the MicroPython
# unix port (called from tests/test_fw_sensing.py) and CPython.
# usage: sensing_check.py SPEC_FILE (JSON); prints one JSON line: {"cases": [...], "alloc_free": bool}
#   SPEC = {"cal": {...calibration...}, "cases": [{"name", "profile", "mains", "seconds",
#     optional: "harm" [[order, amp, phase_deg]], "fs" (2000), "block_ms" (1000),
#     "sparse_cycles" (0 = dense: every sample of every second), "dither" (sparse window placed
#     pseudo-randomly inside each second), "t0_ms", "noise", "seed", "drift", "offset",
#     "pf_load", "gain", "parts" / "tolerance" (the simulated hardware: ctsim.SimADC),
#     "calibrate_noise" (measure the no-load floor first, as `calibrate --zero` does),
#     "cal_over" (calibration keys for this case), "cal_fault" (a deliberate arithmetic error
#     patched into the meter's calibration maths: a negative control)}]}
#   "mains" is the true mains frequency; the meter samples whole cycles of the nominal 50/60 Hz.
import array
import json
import sys

from meter import ctsim, sensing

T0 = 1763856000000  # a wall-clock interval boundary (2025-11-23 00:00 UTC)


def nominal(mains):
    return 50 if mains < 55 else 60


def calibrate_noise(cfg, case):
    # No-load calibration: what `calibrate --zero` does with the CT unplugged (own seed): the
    # noise floor in codes rms from the mean of block mean squares.
    cal = sensing.Calibration(cfg)
    sim = ctsim.SimADC(case["zero_profile"], case["mains"], seed=99, parts=case.get("parts"),
                       noise_rms_codes=case.get("noise", 0.8), bias_offset_codes=case.get("offset", 0.0))
    fs = case.get("fs", 2000)
    n = sensing.cycle_samples(fs, nominal(case["mains"]), nominal(case["mains"]))
    buf = array.array("H", bytes(2 * n))
    acc = 0
    for s in range(10):
        sim.read_block(buf, T0 - 100000 + s * 1000, n, fs)
        acc += sensing.block_rms_q(buf, n, cal)
    return (acc / 10) ** 0.5 / 4096.0


def _fault_vref_1024(vref_mv, bits, burden_ohm, ct_turns, gain):
    # mV read as 1/1024 V: a plausible unit slip (-2.3%).
    return vref_mv / 1024.0 / (1 << bits) / burden_ohm * ct_turns * gain


FAULTS = {"vref_1024": _fault_vref_1024}


def calibration(cfg, fault):
    if fault:
        from meter import calboot  # Calibration() imports this same module object, then drops it
        calboot.amps_per_code = FAULTS[fault]
    return sensing.Calibration(cfg)


def run_case(cfg, case):
    cfg = dict(cfg)
    cfg.update(case.get("cal_over", {}))
    if case.get("calibrate_noise"):
        cfg["noise_rms_codes"] = calibrate_noise(cfg, case)
    cal = calibration(cfg, case.get("cal_fault"))
    mains = case["mains"]
    fs = case.get("fs", 2000)
    sim = ctsim.SimADC(case["profile"], mains, seed=case.get("seed", 1), parts=case.get("parts"),
                       tolerance=case.get("tolerance", 0.0),
                       harmonics=[tuple(h) for h in case.get("harm", [])],
                       power_factor=case.get("pf_load"), noise_rms_codes=case.get("noise", 0.8),
                       bias_offset_codes=case.get("offset", 0.0), drift_codes=case.get("drift", 0.0),
                       gain=case.get("gain", 1.0), epoch_ms=case.get("t0_ms", T0))
    t0 = case.get("t0_ms", T0)
    secs = case["seconds"]
    sparse = case.get("sparse_cycles", 0)
    block_ms = case.get("block_ms", 1000)
    if sparse:
        n = sensing.cycle_samples(fs, nominal(mains), sparse)
        step = 1000
    else:
        n = fs * block_ms // 1000
        step = block_ms
    buf = array.array("H", bytes(2 * n))
    acc = sensing.EnergyAccumulator()
    stats = [0, 0]
    samples = 0
    blocks = 0
    lcg = 12345
    t = t0
    while t < t0 + secs * 1000:
        ts = t
        if sparse and case.get("dither"):
            lcg = (lcg * 1103515245 + 12345) & 0x7FFFFFFF
            ts = t + lcg % (step - n * 1000 // fs)
        sim.read_block(buf, ts, n, fs)
        acc.add(sensing.block_power_mw(buf, n, cal, stats), step)
        samples += n
        blocks += 1
        t += step
    true = sim.true_energy_mwms(t0, t0 + secs * 1000)
    true_mwh = true / 3600000.0
    got = acc.peek_mwh() + acc.rem / 3600000.0
    return {"name": case["name"], "mwh": got, "true_mwh": true_mwh, "wh": acc.take_wh(),
            "err_pct": (got - true_mwh) / true_mwh * 100.0 if true_mwh else None,
            "err_mwh": got - true_mwh, "clipped": stats[0], "over_rated": stats[1],
            "blocks": blocks, "samples": samples, "noise_cal": cfg.get("noise_rms_codes")}


def alloc_free(cfg):
    # block_power_mw and EnergyAccumulator.add must not allocate (heap locked: any allocation
    # raises MemoryError). CPython has no heap lock: reported as None there.
    try:
        import micropython
    except ImportError:
        return None
    cal = sensing.Calibration(cfg)
    n = 2000
    buf = array.array("H", [2048 + (i * 37) % 900 for i in range(n)])
    acc = sensing.EnergyAccumulator()
    stats = [0, 0]
    micropython.heap_lock()
    try:
        p = sensing.block_power_mw(buf, n, cal, stats)
        acc.add(p, 1000)
        ok = True
    except MemoryError:
        ok = False
    micropython.heap_unlock()
    return ok


def main():
    # A file, not argv: the pip-installed unix port aborts on arguments longer than ~256 bytes.
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    out = [run_case(spec["cal"], c) for c in spec["cases"]]
    print(json.dumps({"cases": out, "alloc_free": alloc_free(spec["cal"])}))


main()
