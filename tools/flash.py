"""`meterveil flash`: copy a build to a MicroPython board with mpremote, verify it there, soft-reset.

Why verify on the device: a serial copy can be cut by a brown-out or a loose cable and still look
finished; hashing each file on the board against the build manifest is the only proof the board
runs what was built. Steps (each one mpremote call, printed verbatim by --dry-run):
probe (MicroPython? which .mpy arch? ROMFS?) -> maintenance (flag file + hard reset: one boot without
the meter, so its watchdog, which survives the raw REPL's soft resets, cannot reset the board in the
middle of the copy) -> prepare dirs and drop stale files in /lib/meter and /lib/protocol (a stale
foo.py would shadow foo.mpy) -> copy -> hash on device -> hard reset (main.py runs: the new firmware
starts; a soft reset into the raw REPL would not run it). config.json and the outbox are never touched.

--romfs (boards whose MicroPython has a ROMFS partition, 1.25+ built with MICROPY_VFS_ROM): the
meter and protocol packages go into the partition as one image (`mpremote romfs deploy`) and run in
place from flash, ~22 KB less heap than .mpy files loaded from the filesystem; their /lib copies are
removed, only main.py and boot.py are copied, and the partition is verified by its sha256.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .build import load_manifest
from .device import INSTALL_HINT, Step, check_port, maintenance_steps, mpremote, restart_steps, run_step
from .fileio import ToolError
from .mpy import DeviceMpy, arch_compatible

# Device-side snippets use double quotes only, so --dry-run prints them cleanly single-quoted.
PROBE = """import sys, os
try:
    import vfs
    rom = int(hasattr(vfs, "rom_ioctl"))
except ImportError:
    rom = 0
try:
    os.stat("/rom/meter")
    rom_meter = 1
except OSError:
    rom_meter = 0
print("MVPROBE", getattr(sys.implementation, "_mpy", -1), sys.platform, rom, rom_meter)
"""

PREPARE = """import os
keep = {keep}
for d in {dirs}:
    p = ""
    for part in d.strip("/").split("/"):
        p += "/" + part
        try:
            os.mkdir(p)
        except OSError:
            pass
    for name in os.listdir(d):
        full = d + "/" + name
        if full not in keep:
            try:
                os.remove(full)
                print("MVSTALE", full)
            except OSError:
                pass
"""

HASH = """import hashlib, binascii
for p in {paths}:
    try:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while True:
                b = f.read(512)
                if not b:
                    break
                h.update(b)
        print("MVHASH", p, binascii.hexlify(h.digest()).decode())
    except OSError:
        print("MVHASH", p, "missing")
"""


# The ROMFS partition as mapped into memory (ESP32, RP2: a memoryview), hashed over the image length.
ROM_SEGMENT = """import vfs
seg = vfs.rom_ioctl(2, 0)
"""
ROM_HASH = """import hashlib, binascii
n = {size}
if isinstance(seg, memoryview) and len(seg) >= n:
    h = hashlib.sha256()
    for o in range(0, n, 512):
        h.update(seg[o:min(o + 512, n)])
    print("MVROMHASH", binascii.hexlify(h.digest()).decode())
else:
    print("MVROMHASH unverifiable")
"""


def _root_files(m: dict[str, Any]) -> list[str]:
    return sorted(d for d in m["files"] if not d.startswith("/lib/"))


def plan(build_dir: Path, port: str, manifest: dict[str, Any] | None = None, *,
         romfs: bool = False) -> list[Step]:
    """Every mpremote call of a flash, in order."""
    m = manifest if manifest is not None else load_manifest(build_dir)
    if romfs and "romfs" not in m:
        raise ToolError(f"{build_dir} has no ROMFS image: rebuild with this version (`meterveil build`)")
    files = _root_files(m) if romfs else sorted(m["files"])
    steps = [Step("probe: is it MicroPython, which .mpy version/arch", mpremote(port, "exec", PROBE), probe=True)]
    steps += maintenance_steps(port)
    prepare = PREPARE.format(keep=json.dumps(files), dirs=json.dumps(m["dirs"]))
    if romfs:
        # deploy first: if it fails, the /lib copies still boot the previous firmware
        image = Path(build_dir) / m["romfs"]["image"]
        steps.append(Step(f"romfs deploy {image.name} ({m['romfs']['size']} B) to partition 0",
                          mpremote(port, "romfs", "deploy", str(image)), after_reset=True))
        steps.append(Step("prepare: remove the /lib copies of the firmware (it runs from /rom)",
                          mpremote(port, "exec", prepare)))
    else:
        steps.append(Step("prepare: create /lib dirs, remove stale files there", mpremote(port, "exec", prepare),
                          after_reset=True))
    for dev in files:
        steps.append(Step(f"copy {dev}", mpremote(port, "fs", "cp", str(Path(build_dir) / dev.lstrip("/")), ":" + dev)))
    steps.append(Step("verify: sha256 of every file on the device", mpremote(port, "exec", HASH.format(paths=json.dumps(files)))))
    if romfs:
        steps.append(Step("verify: sha256 of the ROMFS partition",
                          mpremote(port, "exec", ROM_SEGMENT + ROM_HASH.format(size=m["romfs"]["size"]))))
    steps += restart_steps(port)
    return steps


def format_plan(steps: list[Step]) -> str:
    out = []
    for s in steps:
        out.append(f"# {s.what}")
        out.append(s.shell())
    return "\n".join(out)


def check_device(manifest: dict[str, Any], probe_out: str, *, romfs: bool = False) -> DeviceMpy:
    """Parse the probe output; refuse a board whose .mpy version or arch does not fit the build,
    or (romfs) whose MicroPython has no ROMFS partition."""
    line = next((ln for ln in probe_out.splitlines() if ln.startswith("MVPROBE")), None)
    if line is None:
        raise ToolError(f"the board did not run the probe (output: {probe_out.strip()[-200:]!r}): {INSTALL_HINT}")
    fields = line.split()
    value = int(fields[1])
    if not romfs and fields[4:5] == ["1"]:
        raise ToolError("the board runs the meter from its ROMFS partition (/rom/meter comes before /lib on "
                        "sys.path): a filesystem flash would not take effect; flash with --romfs, or deploy "
                        "an image without meter/ to the partition first")
    if romfs and fields[3:4] != ["1"]:
        raise ToolError("this board's MicroPython has no ROMFS partition (vfs.rom_ioctl missing; stock ESP32 "
                        "and Pico builds do not enable it): flash without --romfs (the .mpy files then load "
                        "into the heap), or use a MicroPython build with MICROPY_VFS_ROM and a romfs partition")
    if value < 0:
        raise ToolError("the board's MicroPython is too old to report its .mpy format: "
                        "install MicroPython 1.22 or newer")
    dev = DeviceMpy.decode(value)
    if dev.version != manifest["mpy_version"]:
        raise ToolError(f"the board loads .mpy v{dev.version}, the build is v{manifest['mpy_version']}: "
                        f"update MicroPython on the board (docs/TOOLS.md) or use a matching mpy-cross")
    arch = manifest.get("arch")
    if arch and not arch_compatible(arch, dev.arch):
        raise ToolError(f"arch mismatch: the build is for {arch}, the board is {dev.arch or 'bytecode-only'}; "
                        f"rebuild with `meterveil build --arch {dev.arch}` (or without --arch for portable "
                        f"bytecode)")
    return dev


def verify_rom(manifest: dict[str, Any], out: str, log=print) -> None:
    """The ROMFS partition must start with the build's image, byte for byte."""
    line = next((ln for ln in out.splitlines() if ln.startswith("MVROMHASH")), "MVROMHASH none")
    got = line.split()[1]
    if got == "unverifiable":
        log("  ROMFS partition is not memory-mapped on this board: image not verified")
        return
    if got != manifest["romfs"]["sha256"]:
        raise ToolError("verification failed: the ROMFS partition does not hold the build's image "
                        f"(sha256 {got}); re-run flash --romfs")


def verify_hashes(manifest: dict[str, Any], hash_out: str, paths: list[str] | None = None) -> None:
    got = {}
    for ln in hash_out.splitlines():
        parts = ln.split()
        if len(parts) == 3 and parts[0] == "MVHASH":
            got[parts[1]] = parts[2]
    want = {p: manifest["files"][p] for p in paths} if paths is not None else manifest["files"]
    bad = [f"{p} ({'missing' if got.get(p) == 'missing' else 'sha256 differs'})"
           for p, meta in want.items() if got.get(p) != meta["sha256"]]
    if bad:
        raise ToolError("verification failed, the board does not hold the build: " + ", ".join(bad) +
                        "; re-run flash (check the cable and free flash space with `mpremote df`)")


def flash(build_dir: Path, port: str | None, *, dry_run: bool = False, romfs: bool = False,
          log=print) -> list[Step]:
    manifest = load_manifest(build_dir)
    if dry_run:
        return plan(build_dir, port or "PORT", manifest, romfs=romfs)
    port = check_port(port)
    steps = plan(build_dir, port, manifest, romfs=romfs)
    files = _root_files(manifest) if romfs else sorted(manifest["files"])
    for step in steps:
        log(f"- {step.what}")
        out = run_step(step, port)
        if step.probe:
            dev = check_device(manifest, out, romfs=romfs)
            log(f"  board: .mpy v{dev.version}.{dev.sub_version}, arch {dev.arch}")
        elif step.what.startswith("prepare"):
            for ln in out.splitlines():
                if ln.startswith("MVSTALE"):
                    log(f"  removed stale {ln.split()[1]}")
        elif step.what.startswith("verify: sha256 of the ROMFS"):
            verify_rom(manifest, out, log)
        elif step.what.startswith("verify"):
            verify_hashes(manifest, out, files)
            log(f"  {len(files)} files verified")
    return steps


def register(sub) -> None:
    p = sub.add_parser("flash", help="copy a build to a board with mpremote and verify it",
                       description=__doc__.splitlines()[0])
    p.add_argument("--port", default=None, help="serial port of the board, e.g. /dev/ttyUSB0, /dev/ttyACM0, COM3")
    p.add_argument("--build", type=Path, default=Path("build"), help="build directory (default build/)")
    p.add_argument("--dry-run", action="store_true", help="print the mpremote commands, touch nothing")
    p.add_argument("--romfs", action="store_true",
                   help="deploy the firmware as a ROMFS image (bytecode runs from flash; needs MicroPython "
                        "with a ROMFS partition)")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    steps = flash(args.build, args.port, dry_run=args.dry_run, romfs=args.romfs)
    if args.dry_run:
        print(format_plan(steps))
    else:
        print(f"flashed {args.build} to {args.port}; the board hard-reset into the new firmware")
    return 0

