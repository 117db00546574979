"""CPython-side helper: run a tests/mpy script on the MicroPython unix port and parse its JSON line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MPY_DIR = REPO / "tests" / "mpy"


def micropython_bin() -> str:
    cand = Path(sys.executable).parent / "micropython"
    return str(cand) if cand.exists() else (shutil.which("micropython") or "micropython")


def mpy_env() -> dict:
    # The firmware path of docs/CONTRACTS.md, plus this folder for the check scripts.
    return dict(os.environ, MICROPYPATH=f".frozen:{REPO / 'firmware'}:{REPO}:{MPY_DIR}")


def run_mpy(script: str, spec: dict, tmp: Path, name: str):
    """Spec goes in a file: the pip-installed unix port aborts on arguments over ~256 bytes."""
    spec_file = tmp / f"{name}.json"
    spec_file.write_text(json.dumps(spec))
    proc = subprocess.run([micropython_bin(), str(MPY_DIR / script), str(spec_file)], env=mpy_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cpython(script: str, tmp: Path, name: str):
    """The same script and spec file on CPython (run_mpy must have written the spec)."""
    proc = subprocess.run([sys.executable, str(MPY_DIR / script), str(tmp / f"{name}.json")],
                          env=dict(os.environ, PYTHONPATH=f"{REPO / 'firmware'}:{MPY_DIR}"),
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])
