"""A stand-in for `mpremote` talking to a stub board (a folder), so `meterveil flash`, `calibrate --port`
and `provision --port` run their real mpremote steps in CI against a board that behaves like the port:

    mpremote_stub.py connect BOARD_DIR [mount DIR] exec CODE | fs cp SRC :DST | soft-reset | reset

BOARD_DIR/fs is the board's filesystem, BOARD_DIR/state.json its profile, virtual clock and
watchdog. Each call costs board time (connect, raw REPL, serial copy) during which the program the
call interrupted feeds nothing: a watchdog armed before expires if the calls outlast its timeout,
and the call then fails the way mpremote does when the board resets under it. `soft-reset` keeps
the watchdog and does not run main.py (the raw REPL's soft reset); `reset` is a hard reset: the
watchdog is cleared, boot.py and main.py run (under tests/mpy/board_run.py) for a short ADC budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

MPY_DIR = Path(__file__).resolve().parents[1] / "mpy"
CONNECT_MS = 1500        # open the port, interrupt the program, enter the raw REPL
COPY_BYTES_PER_S = 20000  # raw-REPL file copy over USB serial
BOOT_MS = 2000
BOARD_SLOWDOWN = 20      # a board runs MicroPython ~20x slower than the unix port on x86
BOOT_ADC_BUDGET = 1200   # 3 blocks of 400 samples: long enough to see the meter start


def new_board(path: Path, profile: str) -> Path:
    (path / "fs").mkdir(parents=True, exist_ok=True)
    state = {"profile": profile, "clock_ms": 0, "wdt": None, "wdt_resets": 0, "hard_resets": 0,
             "meter_starts": 0, "maintenance_boots": 0, "calls": []}
    (path / "state.json").write_text(json.dumps(state))
    return path


def _micropython() -> str:
    cand = Path(sys.executable).with_name("micropython")
    return str(cand) if cand.exists() else "micropython"


class Board:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.state = json.loads((self.path / "state.json").read_text())

    def save(self) -> None:
        (self.path / "state.json").write_text(json.dumps(self.state, indent=1))

    def _wdt_expired(self) -> bool:
        w = self.state["wdt"]
        return w is not None and self.state["clock_ms"] - w["fed"] > w["timeout"]

    def session(self, mode: str, code: str = "", mount: str | None = None) -> tuple[str, dict]:
        spec = {"profile": self.state["profile"], "fs": str(self.path / "fs"), "mode": mode, "code": code,
                "adc_budget": BOOT_ADC_BUDGET if mode == "boot" else 0, "mount": mount}
        w = self.state["wdt"]
        if w is not None:
            spec["wdt_timeout"] = w["timeout"]
            spec["wdt_fed_ago_ms"] = self.state["clock_ms"] - w["fed"]
        sfile = self.path / "session.json"
        sfile.write_text(json.dumps(spec))
        t0 = time.monotonic()
        res = subprocess.run([_micropython(), "-X", "heapsize=192k", str(MPY_DIR / "board_run.py"), str(sfile)],
                             capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, MICROPYPATH=f".frozen:{MPY_DIR}"))
        self.state["clock_ms"] += int((time.monotonic() - t0) * 1000 * BOARD_SLOWDOWN)
        lines = res.stdout.splitlines()
        result = {}
        if lines and lines[-1].startswith("STUBRESULT "):
            result = json.loads(lines.pop()[len("STUBRESULT "):])
        else:
            result["error"] = "stub session crashed: " + (res.stdout + res.stderr)[-800:]
        if result.get("wdt_timeout"):
            self.state["wdt"] = {"timeout": result["wdt_timeout"],
                                 "fed": self.state["clock_ms"] - result["wdt_fed_ago_ms"]}
        else:
            self.state["wdt"] = None
        return "\n".join(lines) + ("\n" if lines else ""), result

    def hard_reset(self, cause: str) -> str:
        self.state["wdt"] = None
        self.state["hard_resets"] += 1
        if cause == "wdt":
            self.state["wdt_resets"] += 1
        self.state["clock_ms"] += BOOT_MS
        maint = (self.path / "fs" / "maintenance").exists()
        out, result = self.session("boot")
        if maint:
            self.state["maintenance_boots"] += 1
        if result.get("halted") and self.state["wdt"] is not None:
            self.state["meter_starts"] += 1
        self.state["calls"].append({"boot": cause, "result": result})
        return out


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] != "connect":
        print("mpremote stub: usage: connect BOARD_DIR CMD ...", file=sys.stderr)
        return 2
    board = Board(Path(argv[1]))
    cmd = argv[2:]
    mount = None
    if cmd[:1] == ["mount"]:  # the host folder appears at /remote, the session's cwd
        mount, cmd = cmd[1], cmd[2:]
    st = board.state
    st["clock_ms"] += CONNECT_MS
    rc, out = 0, ""
    if cmd[0] == "exec":
        out, result = board.session("exec", cmd[1], mount)
        if "error" in result:
            rc = 1
        if "reset" in result:  # machine.reset() from the snippet, or the watchdog
            board.state["wdt"] = None
            out += board.hard_reset("wdt" if "watchdog" in result["reset"] else "snippet")
    elif cmd[:2] == ["fs", "cp"]:
        src, dst = Path(cmd[2]), cmd[3]
        assert dst.startswith(":/"), dst
        dest = board.path / "fs" / dst[2:]
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = src.read_bytes()
        dest.write_bytes(data)
        st["clock_ms"] += len(data) * 1000 // COPY_BYTES_PER_S
        out = f"cp {src} {dst}\n"
    elif cmd == ["soft-reset"]:
        st["clock_ms"] += 500   # raw REPL soft reset: main.py does not run, the watchdog keeps running
    elif cmd == ["reset"]:
        if not board._wdt_expired():
            board.save()
            out = board.hard_reset("mpremote reset")
    else:
        print(f"mpremote stub: unsupported command {cmd}", file=sys.stderr)
        return 2
    st = board.state
    if board._wdt_expired():
        out += board.hard_reset("wdt")
        sys.stdout.write(out)
        print(f"failed to access {argv[1]}: the board reset during the call (watchdog)", file=sys.stderr)
        st["calls"].append({"cmd": cmd[:2], "failed": "wdt"})
        board.save()
        return 1
    st["calls"].append({"cmd": cmd[:2], "clock_ms": st["clock_ms"]})
    board.save()
    sys.stdout.write(out)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
