"""Render a meter's config.json and validate it with the firmware's own code on the unix port.

Why run the firmware: firmware/meter/config.py is the one definition of a valid config; a second
copy of the rules on the host would drift. `main.py CONFIG --check [--board]` prints
"CONFIG OK <id>" or one "  field: message" line per bad field.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .build import REPO_ROOT
from .fileio import ToolError

FIRMWARE = REPO_ROOT / "firmware"


def _calboot():
    """The firmware's calibration defaults (firmware/meter/calboot.py), loaded by path: one source."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_meter_calboot", FIRMWARE / "meter" / "calboot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_CAL = _calboot()
# Written into every new config so that the value is visible and `calibrate --zero` replaces it:
# the noise floor is a deliberately high guess until measured, the creep threshold the starting
# current (docs/SENSING.md).
DEFAULT_CALIBRATION: dict[str, Any] = {"ct_turns": 2000, "burden_ohm": 33.0, "adc_bits": 12, "vref_mv": 3300,
                                       "volts": 230.0, "power_factor": 1.0, "rated_amps": 30.0,
                                       **_CAL.DEFAULTS}
CA_NAME = "ca.der"  # next to config.json, on the board and in the workspace
# Which command-line option sets a config field (for error messages).
FIELD_OPTIONS = {"wifi.ssid": "--wifi-ssid", "wifi.password": "--wifi-password", "feeder": "--feeder",
                 "dp.epsilon_milli": "--epsilon-milli", "dp.clamp_wh": "--clamp-wh", "dp.m": "--m",
                 "broker.url": "--broker-url", "interval_s": "--interval-s", "sim.profile": "--sim-profile",
                 "sim.speed": "--sim-speed", "sim.start_time": "--sim-start", "meter_id": "METER_ID",
                 "calibration.volts": "--volts", "calibration.rated_amps": "--rated-amps"}


def render(*, meter_id: str, master_key: bytes, feeder: str, dp: dict[str, int], broker_url: str,
           username: str, password: str, ca_der: bool, wifi_ssid: str | None, wifi_password: str | None,
           calibration: dict[str, Any], interval_s: int, sim: dict[str, Any] | None) -> dict[str, Any]:
    """The config dict (schema: firmware/meter/config.py); `sim` set means a unix-port meter."""
    cfg: dict[str, Any] = {
        "_comment": "Written by `meterveil provision`. Holds this meter's secrets: keep it 0600, never commit it.",
        "meter_id": meter_id,
        "master_key": master_key.hex(),
        "feeder": feeder,
        "dp": dict(dp),
        "calibration": dict(calibration),
        "broker": {"url": broker_url, "username": username, "password": password,
                   "ca_der_path": CA_NAME if ca_der else None},
        "interval_s": interval_s,
    }
    if wifi_ssid is not None or wifi_password is not None:
        cfg["wifi"] = {"ssid": wifi_ssid, "password": wifi_password}
    if sim is not None:
        cfg["sim"] = dict(sim)
    return cfg


def micropython_exe() -> str | None:
    here = Path(sys.executable).with_name("micropython")
    return str(here) if here.exists() else shutil.which("micropython")


def _hint(field: str) -> str:
    opt = FIELD_OPTIONS.get(field)
    return f" (set it with {opt})" if opt else ""


def validate_file(path: Path, *, board: bool, label: str | None = None) -> None:
    """Run the firmware's validation on `path`; ToolError naming every bad field."""
    path = Path(path).resolve()
    exe = micropython_exe()
    if exe is None:
        errors = _validate_cpython(path, board)
    else:
        env = dict(os.environ, MICROPYPATH=f".frozen:{FIRMWARE}:{REPO_ROOT}")
        args = [exe, str(FIRMWARE / "main.py"), str(path), "--check"] + (["--board"] if board else [])
        res = subprocess.run(args, capture_output=True, text=True, env=env, cwd=path.parent, timeout=60)
        if res.returncode == 0 and "CONFIG OK" in res.stdout:
            return
        if "CONFIG ERROR" not in res.stdout:
            raise ToolError(f"the firmware's config check crashed on {path}:\n{(res.stdout + res.stderr)[-1500:]}")
        errors = []
        for ln in res.stdout.splitlines():
            if ln.startswith("  ") and ": " in ln:
                field, _, msg = ln.strip().partition(": ")
                errors.append((field, msg))
    if errors:
        lines = "\n".join(f"  {f}: {m}{_hint(f)}" for f, m in errors)
        raise ToolError(f"the config for {label or path} fails the firmware's validation "
                        f"({'board' if board else 'unix port'}):\n{lines}")


def _validate_cpython(path: Path, board: bool) -> list[tuple[str, str]]:
    """Fallback where no micropython binary exists (e.g. Windows): the same module under CPython."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_meter_config", FIRMWARE / "meter" / "config.py")
    if spec is None or spec.loader is None:
        raise ToolError(f"cannot load {FIRMWARE / 'meter' / 'config.py'}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        mod.load(str(path), board=board)
    except mod.ConfigError as e:
        return list(e.errors)
    return []


def dumps(cfg: dict[str, Any]) -> bytes:
    return (json.dumps(cfg, indent=1) + "\n").encode()
