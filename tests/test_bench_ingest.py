"""The ingest benchmark runs and reports every strategy against naive phe (no speed assertion)."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "ingest.py"


def test_ingest_bench_quick_reports_ratios_for_every_strategy():
    res = subprocess.run([sys.executable, str(BENCH), "--quick", "--scale", "0.3", "--rounds", "1"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    strategies = out["strategies"]
    assert strategies["naive"]["ratio_vs_naive"] == 1.0
    for name in ("naive", "packed", "precomputed", "djn", "djn+packed"):
        s = strategies[name]
        assert s["stored"] == s["readings"] > 0, name  # every reading went through to the store
        assert s["ratio_vs_naive"] > 0 and s["readings_per_s"] > 0, name
    assert strategies["djn+packed"]["ciphertexts_per_reading"] == 1
    assert strategies["naive"]["ciphertexts_per_reading"] == 2
