"""`meterveil flash`, `calibrate --port` and `provision --port` against a stub board (tests/stubboard):
the tools' real mpremote steps, a board whose watchdog survives the raw REPL's soft resets and whose
main.py runs only after a hard reset.

Before the maintenance mode, a flash to a board running the meter was cut by the meter's watchdog
(about 25 mpremote calls outlast a 30 s timeout), the final soft reset did not start the meter, and
the calibration snippet armed the watchdog and never fed it between its calls.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from meterveil.tools.build import build
from meterveil.tools.flash import flash

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "stubboard"))
from mpremote_stub import Board, new_board  # noqa: E402


@pytest.fixture(scope="module")
def board_build(tmp_path_factory):
    return build(tmp_path_factory.mktemp("fb") / "build")


@pytest.fixture
def stub_mpremote(tmp_path, monkeypatch):
    exe = tmp_path / "mpremote"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {REPO / 'tests' / 'stubboard' / 'mpremote_stub.py'} \"$@\"\n")
    exe.chmod(0o755)
    monkeypatch.setenv("MPREMOTE", str(exe))
    return exe


def board_config() -> dict:
    cfg = json.loads((REPO / "firmware" / "config.example.json").read_text())
    for k in ("sim", "run", "_comment"):
        cfg.pop(k, None)
    cfg["broker"]["url"] = "mqtt://127.0.0.1:9"  # nothing listens: the meter measures and retries
    return cfg


def make_board(tmp_path: Path, profile: str) -> Path:
    path = new_board(tmp_path / f"board-{profile}", profile)
    (path / "fs" / "config.json").write_text(json.dumps(board_config()))
    return path


def state(path: Path) -> dict:
    return Board(path).state


@pytest.mark.parametrize("profile", ["esp32", "rp2040"])
def test_flash_ends_with_the_meter_running(tmp_path, stub_mpremote, board_build, profile):
    port = make_board(tmp_path, profile)
    flash(board_build.out, str(port), log=lambda *a: None)
    s = state(port)
    assert s["meter_starts"] == 1, s["calls"][-3:]        # the hard reset at the end ran main.py
    assert s["wdt"] is not None and s["wdt"]["timeout"] <= 8388
    assert not (port / "fs" / "maintenance").exists()    # cleared: every later reset starts the meter


@pytest.mark.parametrize("profile", ["esp32", "rp2040"])
def test_flash_onto_a_running_meter_never_races_its_watchdog(tmp_path, stub_mpremote, board_build, profile):
    port = make_board(tmp_path, profile)
    shutil.copytree(board_build.out / "lib", port / "fs" / "lib")   # flashed earlier
    for name in ("main.py", "boot.py"):
        shutil.copy(board_build.out / name, port / "fs" / name)
    board = Board(port)
    board.hard_reset("power on")                                      # the meter runs, watchdog armed
    board.save()
    assert state(port)["meter_starts"] == 1
    flash(board_build.out, str(port), log=lambda *a: None)           # ~25 mpremote calls
    s = state(port)
    assert s["wdt_resets"] == 0, [c for c in s["calls"] if "boot" in c]
    assert s["maintenance_boots"] == 1 and s["meter_starts"] == 2


def test_a_tool_cut_short_leaves_a_board_that_starts_the_meter_on_the_next_reset(tmp_path, stub_mpremote,
                                                                                 board_build):
    port = make_board(tmp_path, "esp32")
    flash(board_build.out, str(port), log=lambda *a: None)
    from meterveil.tools.device import maintenance_steps, restart_steps, run_step

    for step in maintenance_steps(str(port)):  # a tool enters maintenance, then dies
        run_step(step, str(port))
    assert state(port)["wdt"] is None              # no meter, no watchdog: mpremote calls are safe
    run_step(restart_steps(str(port))[-1], str(port))  # a power cycle or any reset
    assert state(port)["meter_starts"] == 2


def test_flash_dry_run_on_a_stub_board_touches_nothing(tmp_path, stub_mpremote, board_build):
    port = make_board(tmp_path, "esp32")
    flash(board_build.out, str(port), dry_run=True)
    assert state(port)["calls"] == [] and sorted(os.listdir(port / "fs")) == ["config.json"]


def test_calibrate_and_push_on_a_running_board_without_a_watchdog_reset(tmp_path, stub_mpremote, board_build):
    from brokerutil import free_port

    from meterveil.tools.broker_config import generate
    from meterveil.tools.calibrate import calibrate
    from meterveil.tools.provision import MeterSpec, provision_one

    ws = generate(tmp_path / "ws", port=free_port(), hostnames=["localhost"], bind="127.0.0.1").workspace
    provision_one(ws.root, MeterSpec("b1", "F1", wifi_ssid="pilot-net", wifi_password="pw-for-tests"))
    port = make_board(tmp_path, "rp2040")
    flash(board_build.out, str(port), log=lambda *a: None)
    assert state(port)["meter_starts"] == 1
    # the stub CT carries 5 A at 230 V; the board's ADC full scale (3.3 V) is what the config assumes
    res = calibrate(ws.root, "b1", 1150.0, port=str(port), blocks=10)
    assert abs(res.residual_pct) < 2.0, res
    s = state(port)
    assert s["wdt_resets"] == 0, [c for c in s["calls"] if "boot" in c]
    assert s["meter_starts"] == 2                                    # restarted with the new config
    pushed = json.loads((port / "fs" / "config.json").read_text())
    assert pushed["calibration"]["gain"] == res.gain and pushed["meter_id"] == "b1"


def test_flash_then_the_hil_suite_on_a_stub_board_over_tls(tmp_path, stub_mpremote, board_build):
    """The serial HIL suite against a flashed (stub) board: the flashed build, not the source tree;
    Wi-Fi and NTP through the board HAL; TLS with the pilot CA and the meter's own login; no
    watchdog reset anywhere; the meter running again at the end."""
    import subprocess

    from brokerutil import MOSQUITTO, free_port, make_readable_by_broker

    from meterveil.tools.broker_config import generate
    from meterveil.tools.provision import MeterSpec, provision_one, push_to_board

    ws = generate(tmp_path / "ws", port=free_port(), hostnames=["localhost"], bind="127.0.0.1").workspace
    provision_one(ws.root, MeterSpec("hil-b1", "F1", wifi_ssid="pilot-net", wifi_password="pw-for-tests"))
    for dirpath, _d, files in os.walk(ws.broker_dir):
        make_readable_by_broker(Path(dirpath))
        for f in files:
            make_readable_by_broker(Path(dirpath) / f)
    broker = subprocess.Popen([MOSQUITTO, "-c", str(ws.broker_conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        port = make_board(tmp_path, "rp2040")
        flash(board_build.out, str(port), log=lambda *a: None)
        push_to_board(ws.meter_config("hil-b1"), str(port), log=lambda *a: None)
        res = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(REPO / "hil_tests"),
             "--target", f"serial:{port}", "--config", str(ws.meter_config("hil-b1")),
             "--subscriber", f"gateway:{ws.gateway_password}", "--reference-watts", "1150",
             "--tolerance-pct", "2"],
            capture_output=True, text=True, timeout=900, cwd=tmp_path)
        assert res.returncode == 0, res.stdout[-3000:]
        for name in ("test_sealed_frame_published_over_tls_with_the_meters_login", "test_sensing_reads_a_known_load",
                     "test_outbox_survives_a_reset", "test_protocol_vectors_pass_on_target"):
            assert any(ln.startswith("PASSED") and name in ln for ln in res.stdout.splitlines()), name
    finally:
        broker.terminate()
        broker.wait(10)
    s = state(port)
    assert s["wdt_resets"] == 0, [c for c in s["calls"] if "boot" in c]
    assert s["wdt"] is not None                          # the suite ended by restarting the meter
    assert s["meter_starts"] == 3                        # after flash, after the push, after the suite


def test_tools_and_firmware_agree_on_the_maintenance_flag():
    from meterveil.tools.device import MAINTENANCE_FLAG

    src = (REPO / "firmware" / "meter" / "hal_board.py").read_text()
    assert f'MAINTENANCE_FLAG = "{MAINTENANCE_FLAG}"' in src
