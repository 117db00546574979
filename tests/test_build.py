"""`meterveil build`: the .mpy tree runs on the unix port (protocol vectors, one meter interval)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meterveil.host.cli.main import main as cli_main
from meterveil.protocol import frame
from meterveil.tools.build import REPO_ROOT, SIM_ONLY, build, load_manifest
from meterveil.tools.fileio import ToolError
from meterveil.tools.mpy import read_header

MICROPYTHON = str(Path(sys.executable).with_name("micropython"))


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    """With the simulator: these tests run the build on the unix port."""
    return build(tmp_path_factory.mktemp("b") / "build", sim=True)


def test_board_build_leaves_the_simulator_out(tmp_path):
    files = set(build(tmp_path / "board").manifest["files"])
    sim = {f"/lib/meter/{Path(p).stem}.mpy" for p in SIM_ONLY}
    assert sim and not sim & files
    assert {"/lib/meter/hal_board.mpy", "/lib/meter/app.mpy", "/main.py"} <= files


def run_mpy(build_dir: Path, args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    # cwd is a scratch dir: the unix port puts '' (cwd) on sys.path, which must not be the repo.
    env = dict(os.environ, MICROPYPATH=f".frozen:{build_dir / 'lib'}")
    return subprocess.run([MICROPYTHON, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


def test_tree_layout_and_manifest(portable):
    m = portable.manifest
    files = set(m["files"])
    meter_src = {p.stem for p in (REPO_ROOT / "firmware" / "meter").glob("*.py")}
    proto_src = {p.stem for p in (REPO_ROOT / "protocol").glob("*.py")} - {"gen_vectors"}
    assert {f"/lib/meter/{s}.mpy" for s in meter_src} <= files
    assert {f"/lib/protocol/{s}.mpy" for s in proto_src} <= files
    assert "/lib/protocol/gen_vectors.mpy" not in files
    assert "/main.py" in files and "/boot.py" in files
    assert not any("config" in f and f.endswith(".json") for f in files)
    assert (portable.out / "main.py").read_bytes() == (REPO_ROOT / "firmware" / "main.py").read_bytes()
    for dev, meta in m["files"].items():
        local = portable.out / dev.lstrip("/")
        assert hashlib.sha256(local.read_bytes()).hexdigest() == meta["sha256"], dev
        if dev.endswith(".mpy"):
            assert read_header(local.read_bytes()).version == m["mpy_version"] == 6
    assert m["arch"] is None
    on_disk = {"/" + p.relative_to(portable.out).as_posix() for p in portable.out.rglob("*") if p.is_file()}
    assert on_disk - {"/manifest.json", "/romfs.img"} == files
    rom = m["romfs"]
    assert set(rom["files"]) == {"/rom" + f[len("/lib"):] for f in files if f.startswith("/lib/")}
    for dev, meta in rom["files"].items():  # the image holds byte-identical .mpy files
        assert meta["sha256"] == m["files"]["/lib" + dev[len("/rom"):]]["sha256"], dev


def test_built_protocol_passes_the_shared_vectors_on_the_unix_port(portable, tmp_path):
    code = ("import json, protocol.frame\n"
            "assert protocol.frame.__file__.endswith('.mpy'), protocol.frame.__file__\n"
            "from protocol import selftest\n"
            f"print('FAILS', selftest.run(json.load(open({str(REPO_ROOT / 'protocol' / 'vectors.json')!r}))))\n")
    script = tmp_path / "smoke.py"
    script.write_text(code)
    res = run_mpy(portable.out, [str(script)], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("FAILS"))
    assert line.endswith(", 0)"), res.stdout


def test_built_meter_runs_one_interval_against_mosquitto(portable, tmp_path, mosquitto):
    sys.path.insert(0, str(Path(__file__).parent))
    from fwutil import MASTER_KEY, Subscriber, meter_config

    sub = Subscriber(mosquitto.port)
    cfg = meter_config(tmp_path, mosquitto.url)
    res = run_mpy(portable.out, [str(portable.out / "main.py"), str(cfg), "--intervals", "1",
                                 "--drain-timeout", "30", "--storage", str(tmp_path / "state")], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sub.wait_count(lambda m: any(t.endswith("/reading") for t, _ in m), 10)
    keys = frame.derive_keys(MASTER_KEY)
    readings = [frame.open_frame(keys, p, topic_meter="m0001") for t, p in sub.msgs if t.endswith("/reading")]
    truth = json.loads(next(ln for ln in res.stdout.splitlines() if ln.startswith("TRUTH "))[6:])
    assert readings[0]["fields"]["billing_wh"] == truth["energy_wh"] > 0


def test_arch_builds_and_errors(tmp_path, capsys):
    arm = build(tmp_path / "arm", arch="armv6m")
    assert arm.manifest["arch"] == "armv6m"
    assert all((arm.out / d.lstrip("/")).is_file() for d in arm.files)
    esp = build(tmp_path / "esp", arch="esp32")  # board name accepted for its arch
    assert esp.manifest["arch"] == "xtensawin"
    assert cli_main(["build", "--arch", "pdp11", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "unknown --arch 'pdp11'" in err and "xtensawin" in err and "armv6m" in err
    assert not (tmp_path / "x").exists()


def test_native_code_needs_an_arch(tmp_path):
    src = tmp_path / "src"
    (src / "firmware" / "meter").mkdir(parents=True)
    (src / "protocol").mkdir()
    (src / "firmware" / "main.py").write_text("print('hi')\n")
    (src / "protocol" / "__init__.py").write_text("")
    (src / "firmware" / "meter" / "fast.py").write_text("@micropython.native\ndef f():\n    return 1\n")
    with pytest.raises(ToolError, match="fast.py uses @micropython.native"):
        build(tmp_path / "out", source=src)
    res = build(tmp_path / "out", source=src, arch="host")
    assert res.manifest["native_files"] == ["/lib/meter/fast.mpy"]
    assert res.manifest["arch"] == read_header((res.out / "lib/meter/fast.mpy").read_bytes()).arch


def test_refuses_foreign_out_dir_and_detects_tampering(tmp_path, portable):
    foreign = tmp_path / "docs"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ToolError, match="not a meterveil build"):
        build(foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
    again = build(tmp_path / "b")
    (again.out / "main.py").write_text("print('tampered')\n")
    with pytest.raises(ToolError, match="sha256 mismatch"):
        load_manifest(again.out)


def test_built_romfs_image_runs_the_meter_in_a_64k_heap_budget(portable, tmp_path, mosquitto):
    """The image `flash --romfs` deploys, mounted the way a board mounts its ROMFS partition: the
    meter imports its code from /rom (bytecode in place) and runs in a 64 KB heap budget."""
    sys.path.insert(0, str(Path(__file__).parent))
    from fwutil import meter_config

    from meterveil.host.demo import firmware_runner as fr

    image = portable.out / "romfs.img"
    cfg = meter_config(tmp_path, mosquitto.url)
    heap = fr.romfs_heapsize("64k", image.stat().st_size)
    # main.py from the build; no /lib on the path: every module must come from the image
    env = dict(os.environ, MICROPYPATH=".frozen")
    res = subprocess.run([MICROPYTHON, "-X", f"heapsize={heap}", str(portable.out / "main.py"), str(cfg),
                          "--intervals", "2", "--drain-timeout", "30", "--storage", str(tmp_path / "state"),
                          "--romfs", str(image)], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(next(ln for ln in res.stdout.splitlines() if ln.startswith("HEAP "))[5:])
    assert report["code_from"] == "/rom", report
    assert report["min_free_after_gc"] >= 6 * 1024, report
    assert sum(ln.startswith("TRUTH ") for ln in res.stdout.splitlines()) == 2
