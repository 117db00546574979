import json
import subprocess
import sys
from pathlib import Path

VEC = json.loads((Path(__file__).resolve().parents[1] / "protocol" / "vectors.json").read_text())


def run(*args):
    return subprocess.run([sys.executable, "-m", "meterveil.host.cli", "frame", "open", *args],
                          capture_output=True, text=True)


def test_frame_open_prints_decoded_json():
    v = VEC["frames"][0]
    res = run("--master-key", v["master_key"], v["frame"])
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["header"]["kind"] == "reading"
    assert out["fields"] == v["fields"]


def test_frame_open_prints_typed_error_and_fails():
    v = next(b for b in VEC["bad_frames"] if b["name"] == "wrong key")
    res = run("--master-key", v["master_key"], v["frame"])
    assert res.returncode == 1
    assert json.loads(res.stdout)["error"] == v["error"] == "bad_tag"


def test_frame_open_rejects_short_key():
    res = run("--master-key", "abcd", "00")
    assert res.returncode == 2
    assert "32 bytes" in res.stderr
