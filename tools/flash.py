"""`meterveil flash`: copy a build to a MicroPython board with mpremote, verify it there, soft-reset.

Why verify on the device: a serial copy can be cut by a brown-out or a loose cable and still look
finished; hashing each file on the board against the build manifest is the only proof the board
runs what was built. Steps (each one mpremote call, printed verbatim by --dry-run):
probe (MicroPython? which .mpy arch?) -> prepare dirs and drop stale files in /lib/meter and
/lib/protocol (a stale foo.py would shadow foo.mpy) -> copy -> hash on device -> soft-reset.
config.json and the outbox are never touched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .build import load_manifest
from .device import INSTALL_HINT, Step, check_port, mpremote, run_step
from .fileio import ToolError
from .mpy import DeviceMpy, arch_compatible

# Device-side snippets use double quotes only, so --dry-run prints them cleanly single-quoted.
PROBE = 'import sys; print("MVPROBE", getattr(sys.implementation, "_mpy", -1), sys.platform)'

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


def plan(build_dir: Path, port: str, manifest: dict[str, Any] | None = None) -> list[Step]:
    """Every mpremote call of a flash, in order."""
    m = manifest if manifest is not None else load_manifest(build_dir)
    files = sorted(m["files"])
    steps = [Step("probe: is it MicroPython, which .mpy version/arch", mpremote(port, "exec", PROBE), probe=True),
             Step("prepare: create /lib dirs, remove stale files there",
                  mpremote(port, "exec", PREPARE.format(keep=json.dumps(files), dirs=json.dumps(m["dirs"]))))]
    for dev in files:
        steps.append(Step(f"copy {dev}", mpremote(port, "fs", "cp", str(Path(build_dir) / dev.lstrip("/")), ":" + dev)))
    steps.append(Step("verify: sha256 of every file on the device", mpremote(port, "exec", HASH.format(paths=json.dumps(files)))))
    steps.append(Step("soft-reset: start the new firmware", mpremote(port, "soft-reset")))
    return steps


def format_plan(steps: list[Step]) -> str:
    out = []
    for s in steps:
        out.append(f"# {s.what}")
        out.append(s.shell())
    return "\n".join(out)


def check_device(manifest: dict[str, Any], probe_out: str) -> DeviceMpy:
    """Parse the probe output; refuse a board whose .mpy version or arch does not fit the build."""
    line = next((ln for ln in probe_out.splitlines() if ln.startswith("MVPROBE")), None)
    if line is None:
        raise ToolError(f"the board did not run the probe (output: {probe_out.strip()[-200:]!r}): {INSTALL_HINT}")
    value = int(line.split()[1])
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


def verify_hashes(manifest: dict[str, Any], hash_out: str) -> None:
    got = {}
    for ln in hash_out.splitlines():
        parts = ln.split()
        if len(parts) == 3 and parts[0] == "MVHASH":
            got[parts[1]] = parts[2]
    bad = [f"{p} ({'missing' if got.get(p) == 'missing' else 'sha256 differs'})"
           for p, meta in manifest["files"].items() if got.get(p) != meta["sha256"]]
    if bad:
        raise ToolError("verification failed, the board does not hold the build: " + ", ".join(bad) +
                        "; re-run flash (check the cable and free flash space with `mpremote df`)")


def flash(build_dir: Path, port: str | None, *, dry_run: bool = False, log=print) -> list[Step]:
    manifest = load_manifest(build_dir)
    if dry_run:
        steps = plan(build_dir, port or "PORT", manifest)
        return steps
    port = check_port(port)
    steps = plan(build_dir, port, manifest)
    for step in steps:
        log(f"- {step.what}")
        out = run_step(step, port)
        if step.probe:
            dev = check_device(manifest, out)
            log(f"  board: .mpy v{dev.version}.{dev.sub_version}, arch {dev.arch}")
        elif step.what.startswith("prepare"):
            for ln in out.splitlines():
                if ln.startswith("MVSTALE"):
                    log(f"  removed stale {ln.split()[1]}")
        elif step.what.startswith("verify"):
            verify_hashes(manifest, out)
            log(f"  {len(manifest['files'])} files verified")
    return steps


def register(sub) -> None:
    p = sub.add_parser("flash", help="copy a build to a board with mpremote and verify it",
                       description=__doc__.splitlines()[0])
    p.add_argument("--port", default=None, help="serial port of the board, e.g. /dev/ttyUSB0, /dev/ttyACM0, COM3")
    p.add_argument("--build", type=Path, default=Path("build"), help="build directory (default build/)")
    p.add_argument("--dry-run", action="store_true", help="print the mpremote commands, touch nothing")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    steps = flash(args.build, args.port, dry_run=args.dry_run)
    if args.dry_run:
        print(format_plan(steps))
    else:
        print(f"flashed {args.build} to {args.port}; the board soft-reset into the new firmware")
    return 0

