"""Firmware sensing + simulated CT: accuracy on the MicroPython unix port, exact maths on CPython lists."""

from __future__ import annotations

import array
import json
import math
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
MPY_DIR = REPO / "tests" / "mpy"
PROFILES = REPO / "tests" / "data" / "profiles"
sys.path.insert(0, str(REPO / "firmware"))
sys.path.insert(0, str(MPY_DIR))

from meter import ctsim, sensing  # noqa: E402
from mpyrun import micropython_bin, mpy_env, run_cpython, run_mpy  # noqa: E402

from meterveil.protocol import frame  # noqa: E402

CAL = {"ct_turns": 2000, "burden_ohm": 33.0, "adc_bits": 12, "vref_mv": 3300, "volts": 230.0,
       "power_factor": 1.0, "rated_amps": 30.0}
RATED_W = 230.0 * 30.0
HARM = [[3, 0.3, 0], [5, 0.15, 180]]
T0 = 1763856000000


def flat_profile(tmp: Path, pct: float) -> str:
    p = tmp / f"flat{pct:g}.csv"
    p.write_text(f"seconds,watts\n0,{RATED_W * pct / 100:.3f}\n")
    return str(p)


def case(name, profile, mains=50, seconds=60, **kw):
    c = {"name": name, "profile": str(profile), "mains": mains, "seconds": seconds,
         "calibrate_noise": True, "zero_profile": str(PROFILES / "zero.csv"), "drift": 5.0, "offset": 12.0}
    c.update(kw)
    return c


LOADS = (5, 10, 25, 50, 75, 100)
# The 1% class target (5-100% of rated): what the accuracy tests assert, and what the negative
# controls must miss.
TARGET_PCT = 1.0
OFF_NOMINAL = (49.5, 50.5, 59.5, 60.5) + tuple(round(random.Random(16).uniform(lo, hi), 3)
                                             for lo, hi in ((49.5, 50.5), (59.5, 60.5)))
NOLOAD_HOURS = 24


def within_target(r) -> bool:
    return abs(r["err_pct"]) < TARGET_PCT


def substep_profile(tmp: Path, seconds: int = 600) -> str:
    """A 1.5 kW load cycling on and off at random millisecond times (0.3-20 s each state)."""
    rng = random.Random(1616)
    rows, t, on = [], 0, True
    while t < seconds * 1000:
        rows.append(f"{t / 1000:.3f},{1500 if on else 0}")
        t += rng.randint(300, 20000)
        on = not on
    p = tmp / "substeps.csv"
    p.write_text("seconds,watts\n" + "\n".join(rows) + "\n")
    return str(p)


def _cases(tmp: Path) -> list[dict]:
    cases = []
    for pct in LOADS + (1, 2, 300):
        prof = flat_profile(tmp, pct)
        for mains in (50, 60):
            for h in (0, 1):
                cases.append(case(f"flat{pct}-{mains}-h{h}", prof, mains, harm=HARM if h else []))
    for mains in (50, 60):
        cases.append(case(f"stepped-{mains}", PROFILES / "stepped.csv", mains, 300, harm=HARM))
        for bm in (100, 1000):
            cases.append(case(f"bursts-{mains}-blk{bm}", PROFILES / "bursts.csv", mains, 600, harm=HARM,
                              block_ms=bm))
        cases.append(case(f"zero-{mains}", PROFILES / "zero.csv", mains, 300))
        cases.append(case(f"standby-{mains}", PROFILES / "standby.csv", mains, 300))
        # control: no noise floor, no creep threshold (the firmware before both were on by default)
        cases.append(case(f"zero-nocal-{mains}", PROFILES / "zero.csv", mains, 300, calibrate_noise=False,
                          cal_over={"noise_rms_codes": 0, "creep_ma": 0}))
        for prof, secs in (("stepped", 300), ("bursts", 600), ("zero", 300)):
            for dither in (0, 1):
                cases.append(case(f"sparse-{prof}-{mains}-d{dither}", PROFILES / f"{prof}.csv", mains, secs,
                                  harm=HARM, sparse_cycles=3, dither=dither))
        # board-like blocks (200 ms at 2 kHz): 10 W standby with the measured floor and with the
        # shipped default floor; load steps at random sub-second times
        w10 = flat_profile(tmp, 10 / RATED_W * 100)
        cases.append(case(f"w10-{mains}", w10, mains, 900, block_ms=200))
        cases.append(case(f"w10-default-{mains}", w10, mains, 300, block_ms=200, calibrate_noise=False))
        for bm in (100, 200):
            cases.append(case(f"substeps-{mains}-blk{bm}", substep_profile(tmp), mains, 600, block_ms=bm))
        # over rated current (150%, not yet clipping) and just under it
        for pct in (95, 150):
            cases.append(case(f"rated{pct}-{mains}", flat_profile(tmp, pct), mains, 20, harm=HARM, block_ms=200))
    # the true mains off nominal: the 2 kHz sample rate is no multiple of it, blocks are not whole cycles
    for mains in OFF_NOMINAL:
        for pct in (5, 50, 100):
            cases.append(case(f"off{mains}-{pct}", flat_profile(tmp, pct), mains, 60, harm=HARM, block_ms=200))
        cases.append(case(f"off{mains}-bursts", PROFILES / "bursts.csv", mains, 600, harm=HARM, block_ms=200))
    # no load for a day, board-like blocks, in two halves (one per core)
    half_s = NOLOAD_HOURS * 1800
    for i in (0, 1):
        cases.append(case(f"noload-{i}", PROFILES / "zero.csv", 50, half_s, block_ms=200, seed=40 + i,
                          t0_ms=T0 + i * half_s * 1000))
    cases.append(case("noload-default", PROFILES / "zero.csv", 50, 3600, block_ms=200, calibrate_noise=False))
    # negative control: the CT is 2% off its nominal ratio and the meter was not told
    cases.append(case("gain102", flat_profile(tmp, 50), 50, harm=HARM, gain=1.02))
    # load power factor differs from the configured one (model error, not sensing error)
    cases.append(case("pf090", flat_profile(tmp, 50), 50, pf_load=0.9))
    # negative controls for the meter's own arithmetic: the simulator computes codes from its
    # parts, so neither a slipped unit in the formula nor a wrong constant can cancel out
    cases.append(case("fault-vref1024", flat_profile(tmp, 50), 50, harm=HARM, cal_fault="vref_1024"))
    cases.append(case("fault-burden", flat_profile(tmp, 50), 50, harm=HARM, cal_over={"burden_ohm": 33.7}))
    return cases


@pytest.fixture(scope="module")
def mpy_results(tmp_path_factory):
    """All accuracy cases, run on the MicroPython unix port in two parallel processes (2 cores)."""
    tmp = tmp_path_factory.mktemp("sensing")
    cases = _cases(tmp)
    # balance the two processes by samples (the no-load day dominates)
    halves: list[list[dict]] = [[], []]
    load = [0, 0]
    for c in sorted(cases, key=lambda c: -c["seconds"]):
        i = 0 if load[0] <= load[1] else 1
        halves[i].append(c)
        load[i] += c["seconds"]
    specs = [{"cal": CAL, "cases": h} for h in halves]
    with ThreadPoolExecutor(2) as ex:
        outs = list(ex.map(lambda i: run_mpy("sensing_check.py", specs[i], tmp, f"spec{i}"), range(2)))
    res = {r["name"]: r for o in outs for r in o["cases"]}
    res["_alloc_free"] = all(o["alloc_free"] for o in outs)
    (tmp / "results.json").write_text(json.dumps(res, indent=1))
    return res


@pytest.mark.parametrize("pct", LOADS)
@pytest.mark.parametrize("mains", (50, 60))
@pytest.mark.parametrize("h", (0, 1))
def test_flat_load_within_one_percent_on_micropython(mpy_results, pct, mains, h):
    r = mpy_results[f"flat{pct}-{mains}-h{h}"]
    assert within_target(r), r
    assert r["clipped"] == 0
    assert r["samples"] == 60 * 2000  # dense: every sample of every second


def test_below_five_percent_still_tight(mpy_results):
    # Not part of the 1% target, but the noise-floor removal should keep 1-2% of rated close.
    for pct in (1, 2):
        for mains in (50, 60):
            for h in (0, 1):
                assert abs(mpy_results[f"flat{pct}-{mains}-h{h}"]["err_pct"]) < 1.0


@pytest.mark.parametrize("mains", (50, 60))
def test_profiles_within_one_percent(mpy_results, mains):
    assert abs(mpy_results[f"stepped-{mains}"]["err_pct"]) < 1.0
    assert abs(mpy_results[f"bursts-{mains}-blk100"]["err_pct"]) < 1.0
    assert abs(mpy_results[f"bursts-{mains}-blk1000"]["err_pct"]) < 1.0
    # rms over a block that straddles a switching edge overestimates (Jensen): 100 ms blocks
    # (5 cycles at 50 Hz, 6 at 60 Hz) shrink that bias well below the 1 s blocks'.
    assert (abs(mpy_results[f"bursts-{mains}-blk100"]["err_pct"])
            < abs(mpy_results[f"bursts-{mains}-blk1000"]["err_pct"]) / 3)


@pytest.mark.parametrize("mains", (50, 60))
def test_near_zero_load_absolute_bound(mpy_results, mains):
    # With the no-load noise floor calibrated, phantom power stays below 1.5 W on average
    # (<= 0.375 Wh per 15-min interval, under the 1 Wh reading resolution).
    for name in (f"zero-{mains}", f"standby-{mains}"):
        r = mpy_results[name]
        assert abs(r["err_mwh"]) <= 1.5 * 300 / 3.6, r
    assert mpy_results[f"zero-{mains}"]["mwh"] == 0  # creep suppression: not a single block
    # ...and the floor and the creep threshold are what make the difference: without them
    # noise reads as ~9 W.
    assert mpy_results[f"zero-nocal-{mains}"]["err_mwh"] > 5 * 300 / 3.6


def test_no_load_for_a_day_registers_nothing(mpy_results):
    # IEC 62053-21's no-load test asks for at most one test-output pulse; this meter registers
    # not one mWh in a simulated day with the CT unloaded (measured floor, offset and drift on).
    runs = [mpy_results[f"noload-{i}"] for i in (0, 1)]
    assert sum(r["blocks"] for r in runs) * 200 == NOLOAD_HOURS * 3600 * 1000
    assert [r["mwh"] for r in runs] == [0, 0] and [r["wh"] for r in runs] == [0, 0]
    # the provisioned default floor (never measured) is further from creeping
    assert mpy_results["noload-default"]["mwh"] == 0


@pytest.mark.parametrize("mains", (50, 60))
def test_ten_watt_standby_within_five_percent(mpy_results, mains):
    r = mpy_results[f"w10-{mains}"]
    assert abs(r["err_pct"]) < 5.0, r
    # With the default floor (1.5 codes, not measured) a 10 W load is below what the meter can
    # tell from noise: it reads low, never high (the customer is not billed for noise).
    d = mpy_results[f"w10-default-{mains}"]
    assert d["err_mwh"] <= 0, d


@pytest.mark.parametrize("mains", (50, 60))
def test_sub_second_load_steps(mpy_results, mains):
    # A 1.5 kW load switching at random millisecond times: a block straddling an edge reads the
    # rms of a mixture, above the mean power (Jensen). Within the class target at board-like
    # blocks, and shorter blocks halve the over-read.
    b100, b200 = mpy_results[f"substeps-{mains}-blk100"], mpy_results[f"substeps-{mains}-blk200"]
    assert within_target(b100) and within_target(b200), (b100, b200)
    assert 0 < b100["err_pct"] < b200["err_pct"]


@pytest.mark.parametrize("mains", OFF_NOMINAL)
def test_off_nominal_mains(mpy_results, mains):
    # Blocks of 200 ms at 2 kHz are not whole cycles of 49.5-50.5 or 59.5-60.5 Hz: the block
    # mean is then not exactly the DC offset; accuracy must hold anyway.
    for name in (f"off{mains}-5", f"off{mains}-50", f"off{mains}-100", f"off{mains}-bursts"):
        assert within_target(mpy_results[name]), mpy_results[name]


@pytest.mark.parametrize("mains", (50, 60))
def test_over_rated_current_is_counted(mpy_results, mains):
    over, under = mpy_results[f"rated150-{mains}"], mpy_results[f"rated95-{mains}"]
    assert over["over_rated"] == over["blocks"] and over["clipped"] == 0 and within_target(over)
    assert under["over_rated"] == 0


@pytest.mark.parametrize("mains", (50, 60))
def test_sparse_mode_accuracy(mpy_results, mains):
    for prof in ("stepped", "bursts"):
        for d in (0, 1):
            r = mpy_results[f"sparse-{prof}-{mains}-d{d}"]
            assert abs(r["err_pct"]) < 1.0, r
            secs = 300 if prof == "stepped" else 600
            assert r["samples"] == secs * sensing.cycle_samples(2000, mains, 3)  # 3 cycles per second
    for d in (0, 1):
        assert abs(mpy_results[f"sparse-zero-{mains}-d{d}"]["err_mwh"]) <= 1.5 * 300 / 3.6


def test_negative_controls_are_seen(mpy_results):
    # An uncalibrated 2% CT error must show up as ~+2%: the accuracy checks can fail.
    assert 1.8 < mpy_results["gain102"]["err_pct"] < 2.2
    # Load pf 0.9 with the meter configured for 1.0: the CT-only model reads apparent power.
    assert 10.5 < mpy_results["pf090"]["err_pct"] < 11.7


def test_calibration_arithmetic_errors_fail_the_accuracy_check(mpy_results):
    # The simulator derives codes from its own parts, so an error in the meter's calibration
    # maths shows at its full size and the accuracy check fails (with a simulator that borrowed
    # the meter's Calibration both would have read 0.000%).
    slip = mpy_results["fault-vref1024"]  # mV / 1024 instead of / 1000: -2.34%
    assert not within_target(slip) and abs(slip["err_pct"] - (1000 / 1024 - 1) * 100) < 0.05, slip
    burden = mpy_results["fault-burden"]  # config says 33.7 ohm, the part is 33 ohm: -2.08%
    assert not within_target(burden) and abs(burden["err_pct"] - (33 / 33.7 - 1) * 100) < 0.05, burden


def test_overload_clips_and_is_counted(mpy_results):
    for mains in (50, 60):
        r = mpy_results[f"flat300-{mains}-h1"]
        assert r["clipped"] > 0
        assert r["err_pct"] < -1.0  # clipping reads low; the meter flags it (FLAG_ADC_CLIPPED)


def test_sensing_loop_allocates_nothing_on_micropython(mpy_results):
    assert mpy_results["_alloc_free"] is True


def test_cpython_and_micropython_agree(tmp_path):
    c = case("agree", PROFILES / "bursts.csv", 60, 120, harm=HARM, block_ms=100)
    spec = {"cal": CAL, "cases": [c]}
    mp = run_mpy("sensing_check.py", spec, tmp_path, "agree")["cases"][0]
    cp = run_cpython("sensing_check.py", tmp_path, "agree")["cases"][0]
    assert cp["mwh"] == mp["mwh"] and cp["samples"] == mp["samples"]


# ------------------------------------------------- the real meter loop (app.Meter, unix HAL)


def run_meter(tmp: Path, name: str, profile: str, intervals: int, calibration: dict, **sim) -> list[dict]:
    """Run firmware/main.py with the network cut (readings stay in the outbox); its TRUTH lines."""
    from fwutil import meter_config

    d = tmp / name
    (d / "state").mkdir(parents=True)
    (d / "state" / "netcut").write_text("")
    sim = dict({"profile": profile, "period_s": 0, "speed": 10000000, "mode": "sparse", "block_s": 1}, **sim)
    cfg = meter_config(d, "mqtt://127.0.0.1:9", calibration=calibration, sim=sim)
    proc = subprocess.run([micropython_bin(), str(REPO / "firmware" / "main.py"), str(cfg), "--intervals",
                           str(intervals), "--drain-timeout", "0.5", "--storage", str(d / "state")],
                          env=mpy_env(), cwd=d, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr  # 3: outbox not drained (no network)
    return [json.loads(ln[6:]) for ln in proc.stdout.splitlines() if ln.startswith("TRUTH ")]


def test_meter_loop_registers_nothing_in_a_day_with_nothing_connected(tmp_path):
    # The whole firmware, a day of 15-minute readings, the CT unloaded, the noise floor as
    # `calibrate --zero` measures it on this simulated board: every reading is 0 Wh.
    from meterveil.tools import meter_config

    cal = dict(meter_config.DEFAULT_CALIBRATION, noise_rms_codes=0.85)
    truth = run_meter(tmp_path, "day", str(PROFILES / "zero.csv"), 96, cal)
    assert len(truth) == 96 and [t["energy_wh"] for t in truth] == [0] * 96
    assert all(t["flags"] & ~frame.FLAG_PARTIAL_INTERVAL == 0 for t in truth)


def test_meter_loop_flags_over_rated_current_and_saturated_clip_count(tmp_path):
    from meterveil.tools import meter_config

    cal = dict(meter_config.DEFAULT_CALIBRATION)
    over = run_meter(tmp_path, "over", flat_profile(tmp_path, 150), 1, cal)[0]
    assert over["flags"] & frame.FLAG_OVER_RATED and not over["flags"] & frame.FLAG_ADC_CLIPPED
    assert abs(over["energy_wh"] * 1000 / over["true_mwh"] - 1) < 0.01
    # 300% of rated clips ~3/4 of 256 samples a block (6.4 kHz, two cycles): ~170,000 in an
    # interval, more than the u16 field holds; the flag says so
    clip = run_meter(tmp_path, "clip", flat_profile(tmp_path, 300), 1, cal, fs_hz=6400)[0]
    want = frame.FLAG_OVER_RATED | frame.FLAG_ADC_CLIPPED | frame.FLAG_CLIPPED_SATURATED
    assert clip["flags"] & want == want
    normal = run_meter(tmp_path, "normal", flat_profile(tmp_path, 50), 1, cal)[0]
    assert normal["flags"] & want == 0


# ---------------------------------------------------------------- CPython, plain lists


def test_square_wave_exact_power():
    cal = sensing.Calibration(dict(CAL, noise_rms_codes=0))
    n = 400
    buf = [2048 + (100 if i % 2 else -100) for i in range(n)]
    p = sensing.block_power_mw(buf, n, cal)
    expect = 100 * cal.amps_per_code * 230.0 * 1000
    assert abs(p - expect) <= 1
    # DC offset anywhere on the rail changes nothing (mean removed inside the block)
    assert sensing.block_power_mw([c + 537 for c in buf], n, cal) == p
    assert sensing.block_power_mw(array.array("H", [c - 900 for c in buf]), n, cal) == p


def test_noise_floor_and_creep():
    bare = dict(CAL, noise_rms_codes=0, creep_ma=0)
    cal = sensing.Calibration(dict(bare, noise_rms_codes=10.0))
    buf = [2048 + (10 if i % 2 else -10) for i in range(100)]
    assert sensing.block_power_mw(buf, 100, cal) == 0  # exactly the floor: removed
    cal2 = sensing.Calibration(dict(bare, creep_ma=1000))
    assert sensing.block_power_mw(buf, 100, cal2) == 0  # 10 codes = 0.49 A < 1 A creep
    assert sensing.block_power_mw(buf, 100, sensing.Calibration(bare)) > 0


def test_creep_on_by_default():
    # No calibration keys: the safe default floor and the starting current apply.
    from meter import calboot

    cal = sensing.Calibration(CAL)
    assert cal.noise_rms_codes == calboot.DEFAULTS["noise_rms_codes"] > 0
    assert cal.creep_ma == calboot.DEFAULTS["creep_ma"] > 0
    one_code = [2048 + (1 if i % 2 else -1) for i in range(400)]  # 1 code rms = 48.8 mA, 11 W
    assert sensing.block_power_mw(one_code, 400, cal) == 0
    assert sensing.block_power_mw(one_code, 400, sensing.Calibration(dict(CAL, noise_rms_codes=0, creep_ma=0))) > 0


def test_creep_threshold_follows_noise_statistics():
    # The threshold is _CREEP_Z standard deviations of the noise-only variance estimate,
    # noise^2 * sqrt(2/n): 4x the samples, half the threshold (above the starting current).
    cal = sensing.Calibration(dict(CAL, noise_rms_codes=2.0, creep_ma=0))
    thr = {}
    for n in (100, 400):
        thr[n] = sensing.creep_threshold_q(cal, n) / 2**24
        expect = sensing._CREEP_Z * 4.0 * math.sqrt(2 / n)
        assert abs(thr[n] - expect) < 0.01 * expect
    assert abs(thr[100] / thr[400] - 2) < 0.01
    # where noise is tiny, the starting current sets the threshold
    cal = sensing.Calibration(dict(CAL, noise_rms_codes=0.01, creep_ma=20))
    assert abs(math.sqrt(sensing.creep_threshold_q(cal, 400)) / 4096 * cal.amps_per_code - 0.020) < 1e-4


def test_over_rated_blocks_counted():
    cal = sensing.Calibration(CAL)
    rated = cal.rated_amps / cal.amps_per_code  # codes rms at rated current
    for amps_pct, over in ((98, 0), (102, 1)):
        a = rated * amps_pct / 100
        buf = [2048 + round(a if i % 2 else -a) for i in range(400)]
        stats = [0, 0]
        sensing.block_power_mw(buf, 400, cal, stats)
        assert stats == [0, over]


def test_clipped_samples_counted():
    cal = sensing.Calibration(CAL)
    buf = [0, 4095, 2048, 2050, 1, 4094]
    stats = [0, 0]
    sensing.block_power_mw(buf, len(buf), cal, stats)
    assert stats == [2, 1]  # 2 samples at the rails; the block's rms is far above rated


def test_empty_and_oversize_blocks():
    cal = sensing.Calibration(CAL)
    assert sensing.block_power_mw([], 0, cal) == 0
    with pytest.raises(ValueError):
        sensing.block_power_mw([2048] * 70000, 70000, cal)


@given(st.integers(min_value=0, max_value=1 << 70))
def test_isqrt_matches_math(v):
    assert sensing._isqrt(v) == math.isqrt(v)


@given(st.lists(st.integers(0, 4095), min_size=1, max_size=3000))
def test_block_rms_matches_float_reference(codes):
    cal = sensing.Calibration(CAL)
    n = len(codes)
    mean = sum(codes) / n
    var = sum((c - mean) ** 2 for c in codes) / n
    got = sensing.block_rms_q(codes, n, cal) / 4096**2
    assert abs(got - var) <= 1e-6 * max(1.0, var) + 2.0 / 4096**2


def test_energy_accumulator_keeps_remainder():
    acc = sensing.EnergyAccumulator()
    for _ in range(900):
        acc.add(1234, 1000)  # 1.234 W for 900 s = 308.5 mWh
    assert acc.peek_mwh() == 308 and acc.rem == 1800000
    assert acc.take_wh() == 0
    for _ in range(3600 * 4):
        acc.add(1000, 1000)  # 4 Wh more
    assert acc.take_wh() == 4 and acc.peek_mwh() == 308
    with pytest.raises(ValueError):
        acc.add(-1, 10)


def test_interval_start_and_cycle_samples():
    assert sensing.interval_start(1763856899, 900) == 1763856000
    assert sensing.interval_start(1763856900, 900) == 1763856900
    assert sensing.cycle_samples(2000, 50, 5) == 200
    assert sensing.cycle_samples(2000, 60, 3) == 100
    assert sensing.cycle_samples(1000, 60, 1) == 17


@pytest.mark.parametrize("field,value", [("ct_turns", 0), ("burden_ohm", "33"), ("adc_bits", 12.5),
                                         ("volts", None), ("power_factor", 1.5), ("gain", 3.0)])
def test_bad_calibration_names_the_field(field, value):
    cfg = dict(CAL)
    if value is None:
        del cfg[field]
    else:
        cfg[field] = value
    with pytest.raises(sensing.CalibrationError) as ei:
        sensing.Calibration(cfg)
    assert ei.value.field == field and ei.value.reason == "bad_calibration"
    assert field in str(ei.value)


def test_profile_integral_exact_and_wrapping(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("# comment\nseconds,watts\n0,100\n10.5,2000.25\n20,0\n")
    sim = ctsim.SimADC(str(p), 50, epoch_ms=T0)
    # 100 W * 10.5 s + 2000.25 W * 9.5 s = 20052.375 J = 5570.1 mWh
    assert sim.true_energy_mwms(T0, T0 + 30000) == 100000 * 10500 + 2000250 * 9500
    assert sim.true_energy_mwh(T0, T0 + 30000) == 5570
    assert sim.watts_at(T0 + 10499) == 100 and sim.watts_at(T0 + 10500) == 2000.25
    wrap = ctsim.SimADC(str(p), 50, epoch_ms=T0, period_s=30)
    assert wrap.true_energy_mwms(T0 + 30000, T0 + 60000) == sim.true_energy_mwms(T0, T0 + 30000)
    assert wrap.watts_at(T0 + 30000 + 11000) == 2000.25


@pytest.mark.parametrize("text", ["seconds,watts\n0,1\nx,2\n", "0,5\n0,6\n", "0,-5\n", "# only\n"])
def test_bad_profiles_rejected(tmp_path, text):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(ctsim.ProfileError) as ei:
        ctsim.load_profile(str(p))
    assert ei.value.reason == "bad_profile"


def test_sim_switches_load_inside_a_block(tmp_path):
    # A change at 0.25 s inside a 1 s block: the first quarter of samples must be quiet.
    p = tmp_path / "s.csv"
    p.write_text("0,0\n0.25,6900\n")
    sim = ctsim.SimADC(str(p), 50, epoch_ms=T0, noise_rms_codes=0.0)
    buf = array.array("H", bytes(4000))
    sim.read_block(buf, T0, 2000, 2000)
    assert max(buf[:500]) - min(buf[:500]) <= 1
    assert max(buf[500:540]) - min(buf[500:540]) > 1000


def _codes_rms(sim, n=2000, fs=2000):
    buf = array.array("H", bytes(2 * n))
    sim.read_block(buf, T0, n, fs)
    m = sum(buf) / n
    return math.sqrt(sum((c - m) ** 2 for c in buf) / n)


def test_sim_codes_follow_its_own_parts(tmp_path):
    # 6900 W at 230 V is 30 A; through 2000 turns 15 mA; across 33 ohm 0.495 V; at 3.3 V / 4096
    # per code: 614.4 codes rms. Worked out here by hand, not by either module.
    p = tmp_path / "f.csv"
    p.write_text("0,6900\n")
    assert abs(_codes_rms(ctsim.SimADC(str(p), 50, noise_rms_codes=0.0)) - 614.4) < 0.3
    # other parts: 240 V mains, 1000 turns, 22 ohm, 3.0 V reference
    parts = {"volts": 240.0, "ct_turns": 1000, "burden_ohm": 22.0, "vref_mv": 3000}
    expect = 6900 / 240 / 1000 * 22 / (3.0 / 4096)
    assert abs(_codes_rms(ctsim.SimADC(str(p), 50, parts=parts, noise_rms_codes=0.0)) - expect) < 0.3


def test_sim_part_tolerances_are_seeded_draws(tmp_path):
    p = tmp_path / "f.csv"
    p.write_text("0,1000\n")
    a = ctsim.true_parts(None, 0.02, 5)
    assert a == ctsim.true_parts(None, 0.02, 5) and a != ctsim.true_parts(None, 0.02, 6)
    for k, nominal in (("ct_turns", 2000), ("burden_ohm", 33.0), ("vref_mv", 3300)):
        assert a[k] != nominal and abs(a[k] / nominal - 1) <= 0.02
    reference = {"ct_turns": 2000, "burden_ohm": 33.0, "vref_mv": 3300, "adc_bits": 12, "volts": 230.0}
    assert ctsim.true_parts(None, 0.0, 5) == reference  # no tolerance: the reference design
    # the simulator is built from exactly these parts: its codes scale with burden / (turns * vref)
    nominal = _codes_rms(ctsim.SimADC(str(p), 50, seed=5, noise_rms_codes=0.0))
    drawn = _codes_rms(ctsim.SimADC(str(p), 50, seed=5, tolerance=0.02, noise_rms_codes=0.0))
    ratio = a["burden_ohm"] / 33.0 * 2000 / a["ct_turns"] * 3300 / a["vref_mv"]
    assert abs(drawn / nominal - ratio) < 1e-3


def test_sim_noise_power_is_the_same_for_every_seed(tmp_path):
    # The noise table is normalised: a no-load calibration with one seed measures what the
    # meter later sees with another.
    p = tmp_path / "z.csv"
    p.write_text("0,0\n")
    for seed in (1, 2, 99):
        sim = ctsim.SimADC(str(p), 50, seed=seed, noise_rms_codes=3.0)
        tab = sim._noise
        rms = math.sqrt(sum(v * v for v in tab) / len(tab)) / 256
        assert abs(rms - 3.0) < 0.002 and abs(sum(tab) / len(tab)) < 0.5
