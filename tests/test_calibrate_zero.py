"""`meterveil calibrate --zero` and the provisioned calibration defaults, on the unix port."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from brokerutil import free_port

from meterveil.tools import meter_config
from meterveil.tools.broker_config import generate
from meterveil.tools.build import REPO_ROOT
from meterveil.tools.calibrate import calibrate, calibrate_zero
from meterveil.tools.fileio import ToolError
from meterveil.tools.provision import MeterSpec, provision_one
from meterveil.tools.workspace import Workspace

PROFILE = REPO_ROOT / "tests" / "data" / "profiles" / "stepped.csv"
sys.path.insert(0, str(REPO_ROOT / "firmware"))

from meter import calboot  # noqa: E402


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return generate(tmp_path / "ws", port=free_port(), hostnames=["localhost"], bind="127.0.0.1").workspace


def _cal(ws: Workspace, meter_id: str) -> dict:
    return json.loads(ws.meter_config(meter_id).read_text())["calibration"]


def test_provisioning_ships_the_firmware_defaults(ws):
    provision_one(ws.root, MeterSpec("d1", "F1", sim_profile=str(PROFILE)))
    cal = _cal(ws, "d1")
    assert cal["noise_rms_codes"] == calboot.DEFAULTS["noise_rms_codes"] == meter_config.DEFAULT_CALIBRATION["noise_rms_codes"]
    assert cal["creep_ma"] == calboot.DEFAULTS["creep_ma"] == meter_config.DEFAULT_CALIBRATION["creep_ma"]


def test_zero_measures_the_floor_and_ends_the_phantom_load(ws):
    # A board noisier than the default guess (2.5 codes rms vs 1.5): unloaded it reads watts of
    # nothing until --zero measures its floor; afterwards it reads 0 W.
    provision_one(ws.root, MeterSpec("z1", "F1", sim_profile=str(PROFILE)))
    res = calibrate_zero(ws.root, "z1", blocks=60, sim_noise=2.5)
    # 2.5 codes of noise plus quantisation (1/12 code^2), block mean removed ((n-1)/n, n = 64 in
    # the simulation's sparse blocks); 60 blocks of 64 samples: 1.1% standard error on the rms.
    assert res.noise_rms_codes == pytest.approx(((2.5 ** 2 + 1 / 12) * 63 / 64) ** 0.5, rel=0.05)
    assert res.phantom_watts > 5 and res.after_watts == 0
    assert _cal(ws, "z1")["noise_rms_codes"] == res.noise_rms_codes
    # the gain trim still works on top of the measured floor (and keeps it)
    g = calibrate(ws.root, "z1", 2000.0, sim_gain=1.03, blocks=30)
    assert abs(g.residual_pct) < 0.5 and _cal(ws, "z1")["noise_rms_codes"] == res.noise_rms_codes


def test_zero_refuses_a_loaded_ct(ws):
    provision_one(ws.root, MeterSpec("z2", "F1", sim_profile=str(PROFILE)))
    before = ws.meter_config("z2").read_bytes()
    with pytest.raises(ToolError, match="that is a load, not ADC noise"):
        calibrate_zero(ws.root, "z2", blocks=10, sim_noise=20.0)  # 20 codes rms: 1 A, 3% of rated
    assert ws.meter_config("z2").read_bytes() == before


def test_zero_on_the_command_line(ws):
    provision_one(ws.root, MeterSpec("z3", "F1", sim_profile=str(PROFILE)))
    exe = Path(sys.executable).with_name("meterveil")
    res = subprocess.run([str(exe), "calibrate", "--workspace", str(ws.root), "--meter", "z3", "--zero",
                          "--blocks", "10"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "calibration.noise_rms_codes = " in res.stdout
    assert _cal(ws, "z3")["noise_rms_codes"] == pytest.approx(0.85, abs=0.05)  # the simulator's default board
    both = subprocess.run([str(exe), "calibrate", "--workspace", str(ws.root), "--meter", "z3", "--zero",
                           "--reference-watts", "100"], capture_output=True, text=True, timeout=60)
    assert both.returncode != 0 and "not allowed with" in both.stderr
