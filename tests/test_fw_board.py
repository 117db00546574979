"""The board HAL against the ports' real limits, per chip profile (issue: a meter that works on a real
ESP32 and Pico W). tests/mpy/boardstub.py stands in for `machine`, `network`, `ntptime`, `time`, `os`
on the unix port and enforces what each port enforces (docs/BOARDS.md cites the port sources):
WDT maximum timeout, ADC pins and widths per chip, the epoch, ntptime failures, the RTC at boot,
the os.urandom source. Each test here failed on the firmware before the board fixes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "mpy"))
from mpyrun import MPY_DIR, micropython_bin, mpy_env  # noqa: E402

ALL = ["esp32", "esp32s3", "esp32c3", "rp2040", "rp2350"]
ESP = ["esp32", "esp32s3", "esp32c3"]
EPOCH_2000 = 946684800
AFTER_2031_BOMB = EPOCH_2000 + 1_000_000_000 + 86400  # 2031-09-10: 2000-based seconds pass 1e9


def board(tmp_path: Path, profile: str, scenario: str, **spec) -> dict:
    spec.update(profile=profile, scenario=scenario, dir=str(tmp_path))
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    res = subprocess.run([micropython_bin(), str(MPY_DIR / "board_check.py"), str(path)], env=mpy_env(),
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-1000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("profile", ALL)
def test_hal_boots_with_a_watchdog_the_port_accepts_and_the_chips_adc_pin(tmp_path, profile):
    """rp2 refuses WDT timeouts above 8388 ms (the Pico W boot-looped on 30 s); GPIO34 is not an ADC
    pin on an S3 or C3."""
    r = board(tmp_path, profile, "boot")
    assert r["ok"], r
    assert r["wdt_ms"] <= 8388
    assert r["pin"] == {"esp32": 34, "esp32s3": 1, "esp32c3": 3, "rp2040": 26, "rp2350": 26}[profile]


@pytest.mark.parametrize("profile,pin,width,field", [
    ("esp32s3", 34, None, "board.adc_pin"),
    ("esp32", 4, None, "board.adc_pin"),       # ADC2: taken by Wi-Fi
    ("rp2040", 29, None, "board.adc_pin"),     # Pico W: GP29 belongs to the wireless chip
    ("esp32c3", 3, 10, "board.adc_width"),
])
def test_adc_pin_and_width_are_checked_against_the_chip(tmp_path, profile, pin, width, field):
    r = board(tmp_path, profile, "boot", board={"adc_pin": pin, "adc_width": width})
    assert not r["ok"] and field in r["error"], r


def test_configured_adc_pin_is_used(tmp_path):
    assert board(tmp_path, "esp32s3", "boot", board={"adc_pin": 7})["pin"] == 7


@pytest.mark.parametrize("profile", ALL)
@pytest.mark.parametrize("true_unix", [1764547200, AFTER_2031_BOMB])  # 2025-12-01 and 2031-09-10
def test_wall_clock_is_unix_time_on_either_epoch_and_after_2031(tmp_path, profile, true_unix):
    """ESP32 counts from 2000: past 2031-09-09 a `t < 1e9` test stopped adding the offset."""
    r = board(tmp_path, profile, "clock", true_unix=true_unix)
    assert abs(r["now_s"] - r["true_s"]) <= 2, r


@pytest.mark.parametrize("profile", ["esp32", "rp2040"])
def test_ntp_is_retried_with_backoff_until_the_first_success(tmp_path, profile):
    """One lost NTP packet used to mean an hour of unsynced (rejected) readings."""
    r = board(tmp_path, profile, "ntp", ntp=["timeout", "timeout", "timeout"], steps=60, step_ms=10000)
    assert r["synced_after_ms"] is not None and r["synced_after_ms"] <= 150000, r
    gaps = [b - a for a, b in zip(r["attempts"], r["attempts"][1:], strict=False)]
    assert gaps[0] >= 15000 and gaps[1] > gaps[0], r   # backs off: no hammering of the NTP server
    assert abs(r["now_s"] - r["true_s"]) <= 2, r


@pytest.mark.parametrize("profile", ["esp32", "rp2350"])
def test_clock_is_resynced_and_small_corrections_are_slewed(tmp_path, profile):
    """Crystal drift (10-30 ppm) is minutes a year: the clock is re-synced, without a jump."""
    r = board(tmp_path, profile, "resync", drift_s=3, steps=420, step_ms=60000)
    assert r["synced"] and r["attempts"] >= 2, r
    assert abs(r["off_ms"]) < 1500, r                  # corrected (to NTP's whole seconds)
    assert r["max_delta"] <= 700 and r["min_delta"] >= -700, r  # never stepped by the full 3 s


@pytest.mark.parametrize("profile", ["rp2040", "esp32"])
def test_tls_waits_for_the_clock(tmp_path, profile):
    """Certificate dates cannot validate on an rp2 RTC that restarts at 2021."""
    r = board(tmp_path, profile, "tls_wait", ntp=["timeout"] * 5)
    assert r["error"] and "clock not set" in r["error"], r


def test_esp32_flags_currents_beyond_the_linear_range(tmp_path):
    """At 11 dB the ESP32 ADC is linear to ~2.45 V: 40 A compresses without reaching code 4095."""
    high = board(tmp_path, "esp32", "adc", amps_rms=40.0)
    assert high["max_code"] < 4095 and high["clipped"] > 0, high
    normal = board(tmp_path, "esp32", "adc", amps_rms=20.0)
    assert normal["clipped"] == 0 and normal["mw"] > 0, normal


@pytest.mark.parametrize("profile", ["rp2040", "esp32c3"])
def test_boot_scan_of_a_large_outbox_feeds_the_watchdog(tmp_path, profile):
    r = board(tmp_path, profile, "boot_scan", records=300)
    assert r["ok"] and r["depth"] == 300, r
    assert r["feeds"] >= 300 // 64, r


def test_ivs_never_repeat_with_the_rp2040_ring_oscillator(tmp_path):
    """os.urandom on rp2 before 1.28: a biased ring-oscillator bit through an 8-bit LFSR."""
    r = board(tmp_path, "rp2040", "ivs", frames=100)
    assert r["distinct"] == r["frames"] == 200, r


def test_energy_waits_unsealed_until_the_clock_is_trusted(tmp_path):
    """ESP32 after a watchdog reset: RTC kept, NTP not answered yet. Readings sealed meanwhile carried
    the unsynced flag (the gateway rejects them) and moved last_interval past the checkpoint of the
    interval the reset cut short, which was then discarded: its energy never billed."""
    from fwutil import START, meter_config

    iv = 900
    cut = START - iv                      # the interval the reset cut short
    profile = tmp_path / "flat.csv"
    profile.write_text("seconds,watts\n0,1000\n")
    cfg = meter_config(tmp_path, "mqtt://127.0.0.1:9", sim={
        "profile": str(profile), "period_s": 0, "speed": 100000, "mode": "sparse", "block_s": 10,
        "start_time": cut + 660})
    storage = tmp_path / "state"
    storage.mkdir()
    (storage / "state").write_text(f"-1 0 0 {cut - iv}\n")
    cp_mwh = 123456                        # 123 Wh measured before the reset, 10 min of it
    (storage / "partial").write_text(f"{cut} {cp_mwh} 0 600000 1000 0\n")
    spec = tmp_path / "late.json"
    spec.write_text(json.dumps({"config": str(cfg), "storage": str(storage), "intervals": 3,
                                "sync_at_ms": (START + 300) * 1000}))
    res = subprocess.run([micropython_bin(), str(MPY_DIR / "late_sync.py"), str(spec)], env=mpy_env(),
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:]
    readings = json.loads(res.stdout.strip().splitlines()[-1])
    assert not [r for r in readings if r["flags"] & 1], readings           # none sealed unsynced
    by_start = {r["interval_start"]: r for r in readings}
    assert cut in by_start and by_start[cut]["energy_wh"] >= cp_mwh // 1000, readings
    # what was measured while the clock was untrusted (1 kW from cut+660 to START+300) is billed
    # in the first trusted interval rather than dropped
    assert by_start[START]["energy_wh"] >= (iv + iv - 660) * 1000 // 3600 - 1, readings
