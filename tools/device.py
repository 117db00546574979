"""Talking to a MicroPython board through mpremote: port checks, one call per step, clear errors.

Why one place: flash, provision --port and calibrate --port hit the same failure modes (wrong port,
no permission, board without MicroPython, a program like Thonny holding the port) and the user
should get the same precise advice from each.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .fileio import ToolError

MPREMOTE_TIMEOUT_S = 120
# mpremote waits forever for the raw REPL prompt while a non-MicroPython board keeps printing (its
# own timeout only runs during silence), so the first call to a board gets a short limit.
PROBE_TIMEOUT_S = 20
INSTALL_HINT = ("install MicroPython on the board first (docs/TOOLS.md: esptool for ESP32, "
                "UF2 drag-and-drop for Pico)")


@dataclass(frozen=True)
class Step:
    """One mpremote invocation; `probe` marks the first contact with a board (short timeout),
    `after_reset` a call that may find the port still re-enumerating (retried)."""

    what: str
    argv: list[str]
    probe: bool = False
    after_reset: bool = False

    def shell(self) -> str:
        argv = ["mpremote", *self.argv[1:]] if self.argv[0].endswith("mpremote") else self.argv
        return shlex.join(argv)


# The board-side flag asking for one boot without the meter and its watchdog (firmware/main.py,
# meter/hal_board.MAINTENANCE_FLAG): mpremote calls soft-reset into the raw REPL, which does not
# stop a running watchdog, so the tools hard-reset into maintenance first and out of it at the end.
MAINTENANCE_FLAG = "/maintenance"
ENTER_MAINTENANCE = f"open({MAINTENANCE_FLAG!r}, 'w').close()\n"
LEAVE_MAINTENANCE = f"import os\ntry:\n    os.remove({MAINTENANCE_FLAG!r})\nexcept OSError:\n    pass\n"
RECONNECT_TRIES = 10  # a board re-enumerates on USB after a hard reset (~1-3 s)


def mpremote_exe() -> str:
    """$MPREMOTE if set (another mpremote build), else the one next to this Python (venv) or on PATH."""
    if os.environ.get("MPREMOTE"):
        return os.environ["MPREMOTE"]
    here = Path(sys.executable).with_name("mpremote")
    if here.exists():
        return str(here)
    found = shutil.which("mpremote")
    if not found:
        raise ToolError("mpremote not found: pip install mpremote")
    return found


def mpremote(port: str, *args: str) -> list[str]:
    return [mpremote_exe(), "connect", port, *args]


def list_ports() -> list[str]:
    try:
        from serial.tools import list_ports as lp
    except ImportError:
        return []
    return sorted(p.device for p in lp.comports())


def check_port(port: str | None) -> str:
    """Clear errors for a missing, absent or inaccessible serial port."""
    ports = list_ports()
    seen = ", ".join(ports) if ports else "none (check the USB cable carries data and the driver, e.g. CP210x/CH340)"
    if not port:
        raise ToolError(f"no --port given; serial ports seen now: {seen}")
    if port.startswith("/dev/") or os.sep in port:
        if not os.path.exists(port):
            raise ToolError(f"port {port} does not exist (board unplugged?); serial ports seen now: {seen}")
        if not os.access(port, os.R_OK | os.W_OK):
            raise ToolError(f"no permission to open {port}: add yourself to its group (Linux: "
                            f"sudo usermod -aG dialout $USER, then log in again)")
    elif port.upper().startswith("COM") and ports and port.upper() not in (p.upper() for p in ports):
        raise ToolError(f"port {port} not found; serial ports seen now: {seen}")
    return port


def not_micropython(port: str) -> ToolError:
    return ToolError(f"the board on {port} does not answer like MicroPython (no raw REPL): {INSTALL_HINT}; "
                     f"if it does run MicroPython, close other programs using the port (Thonny, screen, "
                     f"another mpremote) and retry")


def maintenance_steps(port: str) -> list[Step]:
    """Hard-reset the board into one boot without the meter or its watchdog."""
    return [Step("maintenance: ask for one boot without the meter and its watchdog",
                 mpremote(port, "exec", ENTER_MAINTENANCE)),
            Step("maintenance: hard reset into it", mpremote(port, "reset"))]


def restart_steps(port: str) -> list[Step]:
    """The last steps of every tool: clear the flag (firmware older than the flag, or a board that
    had none, never consumed it), then a hard reset, which (unlike a soft reset) runs main.py."""
    return [Step("maintenance: clear the flag", mpremote(port, "exec", LEAVE_MAINTENANCE)),
            Step("reset: hard reset, the meter starts", mpremote(port, "reset"))]


def run_step(step: Step, port: str) -> str:
    """Run one mpremote call (retrying while a reset board comes back); return its stdout."""
    if not step.after_reset:
        return _run_step(step, port)
    import time
    for i in range(RECONNECT_TRIES):
        try:
            return _run_step(step, port)
        except ToolError:
            if i == RECONNECT_TRIES - 1:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def _run_step(step: Step, port: str) -> str:
    """Run one mpremote call; return its stdout or raise ToolError with advice."""
    timeout = PROBE_TIMEOUT_S if step.probe else MPREMOTE_TIMEOUT_S
    try:
        res = subprocess.run(step.argv, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        if step.probe:
            raise not_micropython(port) from None
        raise ToolError(f"{step.what}: mpremote did not finish in {timeout:.0f} s on {port}; "
                        f"unplug and replug the board, then retry") from None
    out = res.stdout + res.stderr
    if res.returncode != 0 or "Traceback (most recent call last)" in res.stdout:
        low = out.lower()
        if "raw repl" in low:
            raise not_micropython(port)
        if "failed to access" in low or "no device found" in low or "could not open port" in low:
            raise ToolError(f"mpremote cannot open {port} (in use by another program?): {out.strip()[-300:]}")
        raise ToolError(f"{step.what} failed on {port}:\n{out.strip()[-1500:]}")
    return res.stdout
