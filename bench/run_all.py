"""Run every benchmark and collect their JSON in bench/out/ (what `make bench` does).

Benchmarks are not tests: they print numbers and ratios against a baseline measured in the same
run (naive phe for ingest, an EmonLib-style float loop for the firmware, central DP for privacy).

    .venv/bin/python bench/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


def run(name: str, args: list[str]) -> dict:
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, str(HERE / name), *args], capture_output=True, text=True)
    took = round(time.monotonic() - t0, 1)
    if res.returncode != 0:
        print(f"{name}: FAILED ({res.returncode})\n{res.stderr[-2000:]}", file=sys.stderr)
        return {"error": res.returncode, "wall_s": took}
    print(f"{name}: ok in {took} s", file=sys.stderr)
    try:
        return {"result": json.loads(res.stdout), "wall_s": took}
    except json.JSONDecodeError:
        return {"stdout": res.stdout[-4000:], "wall_s": took}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI-sized versions")
    quick = ap.parse_args().quick
    OUT.mkdir(exist_ok=True)
    results = {
        "ingest": run("ingest.py", ["--quick"] if quick else []),
        "firmware_callgrind": run("firmware_callgrind.py", []),
        "sensing_accuracy": run("sensing_accuracy.py", ["--hours", "0.25"] if quick else []),
        "privacy_utility": run("privacy_utility.py", ["--small"] if quick else []),
        "attacks": run("attacks.py", ["--small"] if quick else []),
        "qemu32": (run("qemu32.py", []) if (HERE.parent / "build/qemu/fw/firmware.elf").exists()
                   else {"skipped": "no QEMU firmware: `make qemu` needs the MicroPython source"}),
        "web": run("web.py", ["--quick"] if quick else []),
    }
    (OUT / "all.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
