"""Firmware sensing + simulated CT: accuracy on the MicroPython unix port, exact maths on CPython lists."""

from __future__ import annotations

import array
import json
import math
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
from mpyrun import run_cpython, run_mpy  # noqa: E402

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


@pytest.fixture(scope="module")
def mpy_results(tmp_path_factory):
    """All accuracy cases, run on the MicroPython unix port in two parallel processes (2 cores)."""
    tmp = tmp_path_factory.mktemp("sensing")
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
        cases.append(case(f"zero-nocal-{mains}", PROFILES / "zero.csv", mains, 300, calibrate_noise=False))
        for prof, secs in (("stepped", 300), ("bursts", 600), ("zero", 300)):
            for dither in (0, 1):
                cases.append(case(f"sparse-{prof}-{mains}-d{dither}", PROFILES / f"{prof}.csv", mains, secs,
                                  harm=HARM, sparse_cycles=3, dither=dither))
    # negative control: the CT is 2% off its nominal ratio and the meter was not told
    cases.append(case("gain102", flat_profile(tmp, 50), 50, harm=HARM, gain=1.02))
    # load power factor differs from the configured one (model error, not sensing error)
    cases.append(case("pf090", flat_profile(tmp, 50), 50, pf_load=0.9))
    half = len(cases) // 2
    specs = [{"cal": CAL, "cases": cases[:half]}, {"cal": CAL, "cases": cases[half:]}]
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
    assert abs(r["err_pct"]) < 1.0, r
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
    # ...and the calibration is what makes the difference: without it noise reads as ~9 W.
    assert mpy_results[f"zero-nocal-{mains}"]["err_mwh"] > 5 * 300 / 3.6


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


# ---------------------------------------------------------------- CPython, plain lists


def test_square_wave_exact_power():
    cal = sensing.Calibration(CAL)
    n = 400
    buf = [2048 + (100 if i % 2 else -100) for i in range(n)]
    p = sensing.block_power_mw(buf, n, cal)
    expect = 100 * cal.amps_per_code * 230.0 * 1000
    assert abs(p - expect) <= 1
    # DC offset anywhere on the rail changes nothing (mean removed inside the block)
    assert sensing.block_power_mw([c + 537 for c in buf], n, cal) == p
    assert sensing.block_power_mw(array.array("H", [c - 900 for c in buf]), n, cal) == p


def test_noise_floor_and_creep():
    cal = sensing.Calibration(dict(CAL, noise_rms_codes=10.0))
    buf = [2048 + (10 if i % 2 else -10) for i in range(100)]
    assert sensing.block_power_mw(buf, 100, cal) == 0  # exactly the floor: removed
    cal2 = sensing.Calibration(dict(CAL, creep_ma=1000))
    assert sensing.block_power_mw(buf, 100, cal2) == 0  # 10 codes = 0.49 A < 1 A creep
    assert sensing.block_power_mw(buf, 100, sensing.Calibration(CAL)) > 0


def test_clipped_samples_counted():
    cal = sensing.Calibration(CAL)
    buf = [0, 4095, 2048, 2050, 1, 4094]
    stats = [0]
    sensing.block_power_mw(buf, len(buf), cal, stats)
    assert stats == [2]


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
    cal = sensing.Calibration(CAL)
    sim = ctsim.SimADC(str(p), 50, cal, epoch_ms=T0)
    # 100 W * 10.5 s + 2000.25 W * 9.5 s = 20052.375 J = 5570.1 mWh
    assert sim.true_energy_mwms(T0, T0 + 30000) == 100000 * 10500 + 2000250 * 9500
    assert sim.true_energy_mwh(T0, T0 + 30000) == 5570
    assert sim.watts_at(T0 + 10499) == 100 and sim.watts_at(T0 + 10500) == 2000.25
    wrap = ctsim.SimADC(str(p), 50, cal, epoch_ms=T0, period_s=30)
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
    cal = sensing.Calibration(CAL)
    sim = ctsim.SimADC(str(p), 50, cal, epoch_ms=T0, noise_rms_codes=0.0)
    buf = array.array("H", bytes(4000))
    sim.read_block(buf, T0, 2000, 2000)
    assert max(buf[:500]) - min(buf[:500]) <= 1
    assert max(buf[500:540]) - min(buf[500:540]) > 1000
