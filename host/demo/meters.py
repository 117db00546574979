"""The demo's meter fleet: one MicroPython unix-port process per meter, each in its own process group.

Why own process groups: a Ctrl-C in the terminal then reaches only the demo, which stops the meters
in order (SIGTERM to each group, SIGKILL after a grace period) and shuts down gateway and broker;
nothing is left running and no meter dies half-way through a line the demo is parsing.

Why one reader thread for all meters (selectors) instead of MeterProcess's thread per meter: with
200 meters, 200 Python threads fighting for the GIL starved the in-process gateway and broker.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
import time
from pathlib import Path

from meterveil.host.common.files import open_private_append
from meterveil.host.demo.firmware_runner import METER_UMASK, MeterProcess, build_firmware
from meterveil.host.demo.setup import MeterPlan


class GroupedMeterProcess(MeterProcess):
    """MeterProcess started with start_new_session=True (its own process group)."""

    def start(self) -> GroupedMeterProcess:
        """Spawn only; the Fleet's reader thread collects the output (see feed())."""
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True, umask=METER_UMASK)
        os.set_blocking(self.proc.stdout.fileno(), False)  # type: ignore[union-attr]
        self._partial = b""
        # the meter prints its readings: its log is as private as the readings
        self._logf = open_private_append(self.log_path, binary=True) if self.log_path else None
        return self

    def feed(self, data: bytes) -> None:
        """Append complete lines of output (b"" = end of output)."""
        if self._logf:
            self._logf.write(data)
            if not data:
                self._logf.close()
                self._logf = None
        buf = self._partial + data
        if not data and buf:
            buf += b"\n"  # the last line had no newline
        parts = buf.split(b"\n")
        self._partial = parts.pop()  # an incomplete line (b"" after a newline)
        if parts:
            with self._cond:
                self.lines.extend(p.decode(errors="replace") for p in parts)
                self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> int:
        if self.proc is None:
            raise RuntimeError("meter not started")
        return self.proc.wait(timeout)

    def signal_group(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def sealed(self) -> int:
        """TRUTH lines so far (cheap: no JSON parsing)."""
        with self._cond:
            return sum(1 for line in self.lines if line.startswith("TRUTH "))

    def tail(self, n: int = 8) -> str:
        with self._cond:
            return "\n".join(self.lines[-n:])


class Fleet:
    """Start, watch and stop all meters of a demo run."""

    def __init__(self, plans: list[MeterPlan], *, heapsize: str, log_dir: Path):
        build_firmware()  # once, before N processes would race to compile
        log_dir.mkdir(parents=True, exist_ok=True)
        self.procs = {p.meter_id: GroupedMeterProcess(p.config, p.dir / "state", heapsize=heapsize,
                                                      log_path=log_dir / f"{p.meter_id}.log")
                      for p in plans}

        self._sel = selectors.DefaultSelector()
        self._reader: threading.Thread | None = None
        self._open = 0

    def start(self) -> None:
        for proc in self.procs.values():
            proc.start()
            self._sel.register(proc.proc.stdout, selectors.EVENT_READ, proc)  # type: ignore[union-attr]
            self._open += 1
        self._reader = threading.Thread(target=self._pump, name="meter-output", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        while self._open:
            for key, _ in self._sel.select(timeout=0.5):
                proc: GroupedMeterProcess = key.data
                try:
                    data = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                proc.feed(data)
                if not data:
                    self._sel.unregister(key.fileobj)
                    key.fileobj.close()  # type: ignore[union-attr]
                    self._open -= 1

    def sealed(self) -> int:
        return sum(p.sealed() for p in self.procs.values())

    def running(self) -> list[str]:
        return [m for m, p in self.procs.items() if p.running]

    def failed(self) -> dict[str, int]:
        """Meters that exited non-zero (crash 1, bad config 2, not drained 3)."""
        return {m: p.returncode for m, p in self.procs.items()
                if p.returncode is not None and p.returncode != 0}

    def truth(self) -> dict[tuple[str, int], dict]:
        out: dict[tuple[str, int], dict] = {}
        for mid, p in self.procs.items():
            for t in p.truth():
                out[(mid, int(t["interval_start"]))] = t
        return out

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM every meter's group, then SIGKILL whatever is left after the grace period."""
        alive = [p for p in self.procs.values() if p.running]
        for p in alive:
            p.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in alive:
            try:
                p.proc.wait(max(0.0, deadline - time.monotonic()))  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                p.signal_group(signal.SIGKILL)
        for p in alive:
            if p.proc is not None:
                p.proc.wait()
        if self._reader is not None:
            self._reader.join(5)
