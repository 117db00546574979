"""Where a HIL test runs its MicroPython code: the unix port (default) or a real board over serial.

Every target runs the same snippet, so the assertions are identical; the repo is there as data
(`REPO`: vectors, profiles, tests/mpy scripts), the code under test is a build:
- unix: `micropython -X heapsize=64k SCRIPT` with a `meterveil build --sim` tree's lib/ first on the
  path (the conftest builds one; without a build the source tree, as test_hil_offline's roomy target);
- serial:PORT: `mpremote connect PORT mount REPO exec SNIPPET` on a board flashed with `meterveil
  flash`: the repo appears at /remote as data only, the code is the board's own /lib. The suite runs
  in a maintenance boot (`enter_maintenance`: no meter, no watchdog) and ends with `restart_meter`;
- qemu: the 32-bit MicroPython firmware of `make qemu` (Cortex-M3, 64 KB heap, meter/ and protocol/
  frozen) in qemu-system-arm, driven exactly like a serial board through its UART on a pty. Its
  flash is littlefs on a RAM block device that survives soft resets (ramblock.py in the board dir).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    found = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: run `make test` (it installs the dev dependencies)")
    return found


@dataclass
class Result:
    returncode: int
    output: str

    def lines(self, prefix: str) -> list[str]:
        return [ln[len(prefix):].strip() for ln in self.output.splitlines() if ln.startswith(prefix)]


class Target:
    name = "abstract"
    repo_on_target = ""
    scratch = ""  # a writable folder on the target's filesystem (flash on a board)
    simulated = True  # the CT and ADC are ctsim's (unix, qemu), not a real clamp on a real board
    network = True    # the target can reach a broker (no network stack in the qemu firmware)

    def prelude(self) -> str:
        root = self.repo_on_target
        return (f"import sys\nREPO = {root!r}\nsys.path.insert(0, REPO)\n"
                f"sys.path.insert(0, REPO + '/firmware')\n")

    def run(self, snippet: str, timeout: float = 120) -> Result:
        raise NotImplementedError

    def reset(self) -> None:
        """Reboot the target between two runs (files on its flash survive)."""
        raise NotImplementedError


class UnixTarget(Target):
    name = "unix"

    def __init__(self, heap: str = "64k", build_dir: Path | None = None):
        self.repo_on_target = str(REPO)
        self.heap = heap
        self.build_dir = build_dir
        self.micropython = _tool("micropython")
        self._tmp = tempfile.TemporaryDirectory(prefix="hil-unix-")
        self.scratch = self._tmp.name

    def prelude(self) -> str:
        if self.build_dir is None:
            return super().prelude()
        return (f"import sys\nREPO = {self.repo_on_target!r}\n"
                f"sys.path.insert(0, {str(Path(self.build_dir) / 'lib')!r})\n")

    def run(self, snippet: str, timeout: float = 120) -> Result:
        # A script file, not `-c`: the pip unix port aborts on very long command-line arguments.
        script = Path(self.scratch) / "_hil_snippet.py"
        script.write_text(self.prelude() + snippet)
        res = subprocess.run([self.micropython, "-X", f"heapsize={self.heap}", str(script)],
                             capture_output=True, text=True, timeout=timeout)
        return Result(res.returncode, res.stdout + res.stderr)

    def reset(self) -> None:
        """Every run is a fresh process already: nothing in RAM survives, files do."""


class SerialTarget(Target):
    name = "serial"
    repo_on_target = "/remote"
    scratch = "/hil"
    simulated = False

    def __init__(self, port: str):
        self.port = port
        self.mpremote = os.environ.get("MPREMOTE") or _tool("mpremote")

    def prelude(self) -> str:
        # The mounted repo is data: neither it nor the cwd (/remote after the mount) may shadow the
        # flashed /lib on the import path.
        return (f"import sys\nREPO = {self.repo_on_target!r}\n"
                "sys.path[:] = [p for p in sys.path if p not in ('', '.', REPO)]\n")

    def _steps(self, steps) -> None:
        from meterveil.tools.device import run_step
        for step in steps:
            run_step(step, self.port)

    def enter_maintenance(self) -> None:
        """One boot without the meter and its watchdog (it would reset the board between runs)."""
        from meterveil.tools.device import maintenance_steps
        self._steps(maintenance_steps(self.port))

    def restart_meter(self) -> None:
        """Clear the flag and hard-reset: the meter starts again."""
        from meterveil.tools.device import restart_steps
        self._steps(restart_steps(self.port))

    def run(self, snippet: str, timeout: float = 300) -> Result:
        # exec prints the board's output; an uncaught exception makes mpremote exit non-zero.
        # sys.exit(n) on the board ends the snippet; we print an exit marker to carry the code.
        wrapped = (self.prelude() + "try:\n" + "".join("    " + ln + "\n" for ln in snippet.splitlines())
                   + "except SystemExit as e:\n    print('HIL-EXIT', e.args[0] if e.args else 0)\n")
        res = subprocess.run([self.mpremote, "connect", self.port, "mount", str(REPO), "exec", wrapped],
                             capture_output=True, text=True, timeout=timeout)
        out = res.stdout + res.stderr
        rc = res.returncode
        for ln in out.splitlines():
            if ln.startswith("HIL-EXIT"):
                rc = int(ln.split()[1] or 0)
        return Result(rc, out)

    def reset(self) -> None:
        subprocess.run([self.mpremote, "connect", self.port, "soft-reset"], capture_output=True,
                       text=True, timeout=60, check=True)


QEMU_FIRMWARE = REPO / "build" / "qemu" / "fw" / "firmware.elf"


class QemuTarget(SerialTarget):
    """The `make qemu` firmware in qemu-system-arm (MPS2-AN385), its UART on a pty.

    icount=True runs QEMU with `-icount shift=0`: virtual time advances 1 ns per guest instruction,
    so time.ticks_us() deltas times 1000 count Cortex-M3 instructions (the bench uses this).
    """

    name = "qemu"
    scratch = "/flash/hil"
    simulated = True
    network = False

    def __init__(self, firmware: Path = QEMU_FIRMWARE, icount: bool = False):
        if not Path(firmware).exists():
            raise RuntimeError(f"{firmware} not found: build it with `make qemu` (needs the MicroPython source)")
        qemu = shutil.which("qemu-system-arm")
        if not qemu:
            raise RuntimeError("qemu-system-arm not found: `make qemu` installs it (apt-get as root)")
        cmd = [qemu, "-machine", "mps2-an385", "-nographic", "-monitor", "null", "-semihosting",
               "-serial", "pty", "-kernel", str(firmware)]
        if icount:
            cmd[1:1] = ["-icount", "shift=0"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        atexit.register(self.close)
        port = None
        for line in self.proc.stdout:  # "char device redirected to /dev/pts/N (label serial0)"
            m = re.search(r"(/dev/pts/\d+)", line)
            if m:
                port = m.group(1)
                break
        if port is None:
            self.close()
            raise RuntimeError(f"qemu-system-arm did not open a pty (exit {self.proc.poll()})")
        super().__init__(port)

    def prelude(self) -> str:
        # Code comes from the frozen modules only ('.frozen'); the mounted repo is data (vectors,
        # profiles) plus tests/mpy's check scripts. The RAM flash is mounted at /flash as the cwd.
        return ("import sys\nREPO = '/remote'\nimport ramblock\nramblock.mount('/flash')\n"
                "sys.path[:] = ['.frozen', REPO + '/tests/mpy']\n")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def make_target(spec: str, build_dir: Path | None = None) -> Target:
    if spec == "unix":
        return UnixTarget(build_dir=build_dir)
    if spec == "qemu":
        return QemuTarget()
    if spec.startswith("serial:"):
        port = spec.split(":", 1)[1]
        if not port:
            raise ValueError("--target serial: needs a port, e.g. serial:/dev/ttyUSB0")
        return SerialTarget(port)
    raise ValueError(f"unknown --target {spec!r}: use 'unix', 'qemu' or 'serial:/dev/ttyUSB0'")
