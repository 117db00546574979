import subprocess
import sys

EXPECTED = ["demo", "keys", "provision", "broker-config", "build", "flash", "calibrate", "gateway",
            "stats", "bill", "feeder-load", "audit", "privacy-report", "export", "frame"]


def test_help_lists_every_subcommand():
    res = subprocess.run([sys.executable, "-m", "meterveil.host.cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    listed = {line.split()[0] for line in res.stdout.splitlines() if line.startswith("    ") and line.split()}
    assert set(EXPECTED) <= listed


def test_no_subcommand_prints_help_and_fails():
    res = subprocess.run([sys.executable, "-m", "meterveil.host.cli"], capture_output=True, text=True)
    assert res.returncode == 2
    assert "demo" in res.stdout
