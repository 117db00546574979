"""Config validation: the firmware's own validator, on CPython and through main.py on the unix port."""

from __future__ import annotations

import json
import sys

import pytest
from fwutil import meter_config

from meterveil.host.demo import firmware_runner as fr

sys.path.insert(0, str(fr.FIRMWARE))
from meter import config  # noqa: E402  (firmware module; pure, imports on CPython)


def _base(tmp_path):
    return json.loads(meter_config(tmp_path, "mqtt://127.0.0.1:1883").read_text())


def test_example_config_is_valid():
    rc, out = fr.check_config(fr.FIRMWARE / "config.example.json")
    assert rc == 0 and "CONFIG OK m0001" in out


@pytest.mark.parametrize("mutate,field", [
    (lambda c: c.update(meter_id="bad id!"), "meter_id"),
    (lambda c: c.update(master_key="abcd"), "master_key"),
    (lambda c: c["dp"].update(epsilon_milli=0), "dp.epsilon_milli"),
    (lambda c: c["dp"].pop("m"), "dp.m"),
    (lambda c: c["calibration"].update(burden_ohm="33"), "calibration.burden_ohm"),
    (lambda c: c["broker"].update(url="http://x:1"), "broker.url"),
    (lambda c: c.update(interval_s=700), "interval_s"),
    (lambda c: c["sim"].update(mode="fast"), "sim.mode"),
    (lambda c: c.update(intervall_s=900), "intervall_s"),
    (lambda c: c.pop("feeder"), "feeder"),
    # noise scale clamp/epsilon = 1e9 Wh: shares would overflow the frame's int32 (found in review)
    (lambda c: c["dp"].update(epsilon_milli=1, clamp_wh=1000000), "dp.clamp_wh"),
    # CONNECT with will must fit the 384-byte packet buffer, else the meter never connects
    (lambda c: c["broker"].update(username="u", password="p" * 220), "broker.username"),
    # the default client id (the meter id) counts too
    (lambda c: c["broker"].update(username="u" * 100, password="p" * 96), "broker.username"),
])
def test_validate_names_the_field(tmp_path, mutate, field):
    cfg = _base(tmp_path)
    mutate(cfg)
    errs = config.validate(config.with_defaults(cfg))
    assert field in [f for f, _ in errs], errs


def test_bad_config_rejected_by_main_with_fields_named(tmp_path):
    cfg = _base(tmp_path)
    cfg["meter_id"] = "way-too-long-meter-id"
    cfg["dp"]["clamp_wh"] = -5
    cfg["broker"]["url"] = "mqtt://:0"
    cfg["sim"]["profile"] = str(tmp_path / "missing.csv")
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(cfg))
    rc, out = fr.check_config(path)
    assert rc == fr.EXIT_BAD_CONFIG
    assert "CONFIG ERROR: 4 bad field(s)" in out
    for field in ("meter_id:", "dp.clamp_wh:", "broker.url:", "sim.profile: file not found"):
        assert field in out, out
    # The meter itself (not just --check) refuses to start with the same message.
    p = fr.MeterProcess(path, tmp_path / "state")
    p.start()
    assert p.wait(30) == fr.EXIT_BAD_CONFIG
    assert "dp.clamp_wh" in p.output


def test_not_json_rejected(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{nope")
    rc, out = fr.check_config(path)
    assert rc == fr.EXIT_BAD_CONFIG and "not valid JSON" in out


def test_board_requires_wifi(tmp_path):
    path = meter_config(tmp_path, "mqtt://127.0.0.1:1883")
    rc, out = fr.check_config(path, board=True)
    assert rc == fr.EXIT_BAD_CONFIG and "wifi.ssid: required on a board" in out


def test_load_raises_typed_error(tmp_path):
    cfg = _base(tmp_path)
    cfg["status_every"] = 0
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(config.ConfigError) as ei:
        config.load(str(path))
    assert ei.value.reason == "bad_config"
    assert [f for f, _ in ei.value.errors] == ["status_every"]


def test_board_hal_imports_with_stub_machine(tmp_path):
    """The board backend loads on the unix port under the board stub (RP2040 profile)."""
    import subprocess
    script = fr.REPO / "tests" / "mpy" / "hal_board_stub.py"
    res = subprocess.run([fr.micropython_binary(), str(script), str(tmp_path)], capture_output=True,
                         text=True, env=fr.firmware_env(), timeout=60)
    assert res.returncode == 0, res.stdout
    assert res.stdout.split() == ["BOARD", "400", "2000", "True", "True", "1", "deadbeef0001", "0", "True"]


@pytest.mark.parametrize("board,field", [
    ({"adc_pin": "34"}, "board.adc_pin"), ({"adc_pin": 99}, "board.adc_pin"),
    ({"adc_width": 16}, "board.adc_width"), ({"adc_pinn": 3}, "board.adc_pinn"),
])
def test_board_section_types_are_checked(tmp_path, board, field):
    """Types and ranges here; whether the chip has the pin is checked on the board at boot."""
    cfg = _base(tmp_path)
    cfg["board"] = board
    assert field in [f for f, _ in config.validate(config.with_defaults(cfg), board=True)]
    cfg["board"] = {"adc_pin": 7, "adc_width": 12}
    assert not [f for f, _ in config.validate(config.with_defaults(cfg)) if f.startswith("board")]
