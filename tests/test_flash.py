"""`meterveil flash`: the dry-run plan, port errors, a non-MicroPython board, and the device snippets
(run on the unix port, the only MicroPython we have without a board)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from meterveil.host.cli.main import main as cli_main
from meterveil.tools import device
from meterveil.tools.build import build
from meterveil.tools.fileio import ToolError
from meterveil.tools.flash import (
    HASH,
    PREPARE,
    PROBE,
    ROM_HASH,
    check_device,
    flash,
    verify_hashes,
    verify_rom,
)

MICROPYTHON = str(Path(sys.executable).with_name("micropython"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build(tmp_path_factory.mktemp("f") / "build")


def upy(code: str, cwd: Path) -> str:
    res = subprocess.run([MICROPYTHON, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_dry_run_names_every_file_in_order(built, capsys):
    assert cli_main(["flash", "--port", "/dev/ttyUSB0", "--build", str(built.out), "--dry-run"]) == 0
    out = capsys.readouterr().out
    blocks, cur = [], []
    for ln in out.splitlines():
        if ln.startswith("# "):
            if cur:
                blocks.append("\n".join(cur))
            cur = []
        else:
            cur.append(ln)
    blocks.append("\n".join(cur))
    cmds = [shlex.split(b) for b in blocks]
    assert all(c[:3] == ["mpremote", "connect", "/dev/ttyUSB0"] for c in cmds)
    copies = {c[-1][1:]: c[-2] for c in cmds if c[3:5] == ["fs", "cp"]}
    assert set(copies) == set(built.files)
    for dev, local in copies.items():
        assert Path(local) == built.out / dev.lstrip("/")
    kinds = [c[3] for c in cmds]
    assert kinds[0] == "exec" and "MVPROBE" in cmds[0][4]
    assert kinds[1:3] == ["exec", "reset"] and "/maintenance" in cmds[1][4]  # one boot without the watchdog
    assert kinds[-2:] == ["exec", "reset"] and "MVHASH" in cmds[-3][4]  # a hard reset: main.py runs
    for dev in built.files:  # the on-device verification covers every file too
        assert dev in cmds[-3][4]


def test_port_errors(built, capsys):
    assert cli_main(["flash", "--port", "/dev/ttyUSB97", "--build", str(built.out)]) == 1
    err = capsys.readouterr().err
    assert "port /dev/ttyUSB97 does not exist" in err and "serial ports seen now" in err
    assert cli_main(["flash", "--build", str(built.out)]) == 1
    assert "no --port given" in capsys.readouterr().err
    assert cli_main(["flash", "--port", "/dev/ttyUSB0", "--build", str(built.out / "nope")]) == 1
    assert "meterveil build" in capsys.readouterr().err


def test_board_without_micropython_is_named(built, monkeypatch):
    """A pty that chatters like an Arduino sketch: mpremote never gets a raw REPL prompt."""
    master, slave = os.openpty()
    stop = threading.Event()

    def chatter():
        while not stop.is_set():
            try:
                os.write(master, b"temp=21.5 humidity=40\r\n")
            except OSError:
                return
            time.sleep(0.05)

    def drain():
        while not stop.is_set():
            try:
                os.read(master, 1024)
            except OSError:
                return

    threads = [threading.Thread(target=f, daemon=True) for f in (chatter, drain)]
    for t in threads:
        t.start()
    monkeypatch.setattr(device, "PROBE_TIMEOUT_S", 4)
    try:
        with pytest.raises(ToolError, match="does not answer like MicroPython") as e:
            flash(built.out, os.ttyname(slave), log=lambda *a: None)
        assert "esptool" in str(e.value)
    finally:
        stop.set()
        os.close(master)
        os.close(slave)


def test_probe_snippet_and_arch_check_on_the_unix_port(built, tmp_path):
    out = upy(PROBE, tmp_path)
    dev = check_device(built.manifest, out)  # portable bytecode fits any v6 board
    assert dev.version == 6 and dev.arch == "x64"
    esp = dict(built.manifest, arch="xtensawin")
    with pytest.raises(ToolError, match="arch mismatch: the build is for xtensawin, the board is x64") as e:
        check_device(esp, out)
    assert "--arch x64" in str(e.value)
    assert check_device(dict(built.manifest, arch="x64"), out).arch == "x64"
    with pytest.raises(ToolError, match="v5"):
        check_device(dict(built.manifest, mpy_version=5), out)
    with pytest.raises(ToolError, match="install MicroPython"):
        check_device(built.manifest, "MPY: soft reboot\r\n")
    arm = dict(built.manifest, arch="armv6m")
    rp2350 = f"MVPROBE {6 | 3 << 8 | 7 << 10} rp2\n"  # armv7emsp runs armv6m code
    assert check_device(arm, rp2350).arch == "armv7emsp"
    with pytest.raises(ToolError, match="arch mismatch"):
        check_device(dict(built.manifest, arch="armv7emsp"), f"MVPROBE {6 | 3 << 8 | 4 << 10} rp2\n")


def test_prepare_and_hash_snippets_on_the_unix_port(built, tmp_path):
    root = tmp_path / "dev"
    stale = root / "lib" / "meter" / "app.py"  # a source leftover would shadow app.mpy
    stale.parent.mkdir(parents=True)
    stale.write_text("print('old')\n")
    keep = [str(root) + d for d in built.files]
    dirs = [str(root) + d for d in built.manifest["dirs"]]
    out = upy(PREPARE.format(keep=json.dumps(keep), dirs=json.dumps(dirs)), tmp_path)
    assert f"MVSTALE {stale}" in out and not stale.exists()
    assert all(Path(d).is_dir() for d in dirs)
    for d in built.files:  # what `fs cp` would do
        (root / d.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / d.lstrip("/")).write_bytes((built.out / d.lstrip("/")).read_bytes())
    out = upy(HASH.format(paths=json.dumps(keep)), tmp_path)
    as_device = out.replace(str(root), "")
    verify_hashes(built.manifest, as_device)
    (root / "main.py").write_text("corrupted")
    bad = upy(HASH.format(paths=json.dumps(keep)), tmp_path).replace(str(root), "")
    with pytest.raises(ToolError, match=r"/main.py \(sha256 differs\)"):
        verify_hashes(built.manifest, bad)
    (root / "main.py").unlink()
    gone = upy(HASH.format(paths=json.dumps(keep)), tmp_path).replace(str(root), "")
    with pytest.raises(ToolError, match=r"/main.py \(missing\)"):
        verify_hashes(built.manifest, gone)


def test_romfs_dry_run_deploys_the_image_and_copies_only_main_and_boot(built, capsys):
    assert cli_main(["flash", "--port", "/dev/ttyACM0", "--build", str(built.out), "--dry-run", "--romfs"]) == 0
    cmds = [shlex.split(ln) for ln in capsys.readouterr().out.split("\n# ")]
    cmds = [c[c.index("mpremote"):] for c in cmds]
    kinds = [c[3] for c in cmds]
    assert kinds == ["exec", "exec", "reset", "romfs", "exec", "fs", "fs", "exec", "exec", "exec", "reset"], kinds
    assert cmds[3][3:] == ["romfs", "deploy", str(built.out / "romfs.img")]
    assert "os.remove" in cmds[4][4]  # /lib copies go only after the image is in place
    assert {c[-1] for c in cmds if c[3] == "fs"} == {":/main.py", ":/boot.py"}
    assert "rom_ioctl(2, 0)" in cmds[8][4] and str(built.manifest["romfs"]["size"]) in cmds[8][4]


def test_romfs_probe_refuses_a_board_without_a_romfs_partition(built, tmp_path):
    out = upy(PROBE, tmp_path)  # the unix port has VfsRom but no ROM partition (no rom_ioctl)
    assert out.split()[3] == "0"
    check_device(built.manifest, out)  # fine for a filesystem flash
    with pytest.raises(ToolError, match="no ROMFS partition"):
        check_device(built.manifest, out, romfs=True)
    assert out.split()[4] == "0"  # no /rom/meter on the unix port
    assert check_device(built.manifest, out.replace(" 0 0\n", " 1 0\n"), romfs=True).version == 6
    # a board already running the meter from ROMFS: a plain flash to /lib would never be imported
    with pytest.raises(ToolError, match="runs the meter from its ROMFS partition"):
        check_device(built.manifest, out.replace(" 0 0\n", " 1 1\n"))
    assert check_device(built.manifest, out.replace(" 0 0\n", " 1 1\n"), romfs=True).version == 6


def test_rom_hash_snippet_on_the_unix_port(built, tmp_path):
    """The partition check, with the image as the memory-mapped segment a board would return."""
    image = built.out / "romfs.img"
    seg = f"seg = memoryview(open({str(image)!r}, 'rb').read() + bytes(4096))\n"  # partition > image
    out = upy(seg + ROM_HASH.format(size=built.manifest["romfs"]["size"]), tmp_path)
    verify_rom(built.manifest, out)
    bad = bytearray(image.read_bytes())
    bad[100] ^= 1
    (tmp_path / "bad.img").write_bytes(bytes(bad))
    seg_bad = f"seg = memoryview(open({str(tmp_path / 'bad.img')!r}, 'rb').read())\n"
    out = upy(seg_bad + ROM_HASH.format(size=built.manifest["romfs"]["size"]), tmp_path)
    with pytest.raises(ToolError, match="does not hold the build's image"):
        verify_rom(built.manifest, out)
    logs = []
    verify_rom(built.manifest, upy("seg = None\n" + ROM_HASH.format(size=10), tmp_path), logs.append)
    assert "not verified" in logs[0]
