"""`meterveil demo --mode e2e`: meters encrypt, the gateway stores what it cannot open, bills still match
truth.csv, and each household reads its own intervals with its card (and only with its card)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_demo import _recent_weekday, _truth

from meterveil.host.common.registry import MeterRegistry
from meterveil.host.demo.run import run_demo
from meterveil.host.demo.setup import DemoConfig
from meterveil.host.household.card import read_card
from meterveil.host.store.base import SCHEME_PACKED_E2E_V1, open_store

METERS, FEEDERS, HOURS = 4, 2, 4


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-e2e")
    cfg = DemoConfig(meters=METERS, feeders=FEEDERS, days=HOURS / 24, start=_recent_weekday(), start_hour=6,
                     out=out, progress=False, timeout_s=900, mode="e2e", k_min=2,
                     min_band_readings=1)  # a 4-hour run; the per-band floor is tested in test_billing
    return cfg, run_demo(cfg), out


def test_bills_match_and_every_reading_came_encrypted_from_its_meter(demo):
    cfg, result, out = demo
    assert result.mode == "e2e" and json.loads((out / "run.json").read_text())["mode"] == "e2e"
    assert result.readings == result.expected == METERS * cfg.intervals
    store = open_store(result.workspace / "store.sqlite", create=False)
    try:
        rows = list(store.iter_readings())
    finally:
        store.close()
    assert {r.scheme for r in rows} == {SCHEME_PACKED_E2E_V1}
    assert all(len(r.household) == 48 for r in rows)
    assert result.household_checked == len(rows)


def test_household_show_prints_exactly_its_truth(demo):
    _cfg, result, out = demo
    truth = _truth(out)
    card = result.workspace / "households" / "m0002" / "household-card.txt"
    res = subprocess.run([sys.executable, "-m", "meterveil.host.cli", "household", "show", "--card", str(card),
                          "--db", str(result.workspace / "store.sqlite")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()[1:]
    got = {int(__import__("datetime").datetime.fromisoformat(ln.split(",")[0]).timestamp()): int(ln.split(",")[2])
           for ln in lines}
    assert got == {t: wh for (m, t), wh in truth.items() if m == "m0002"}
    assert (result.workspace / "households" / "m0002" / "household-card.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_card_opens_only_its_own_meter(demo, tmp_path):
    _cfg, result, _out = demo
    other = read_card(result.workspace / "households" / "m0001")
    forged = tmp_path / "card.txt"
    forged.write_text(f"meterveil-household:v1:m0002:{other.key.hex()}\n")
    res = subprocess.run([sys.executable, "-m", "meterveil.host.cli", "household", "show", "--card", str(forged),
                          "--db", str(result.workspace / "store.sqlite")], capture_output=True, text=True)
    assert res.returncode == 1 and res.stdout.strip().count("\n") == 0  # header only: nothing opened
    assert "rows this card does not open" in res.stderr


def test_the_utility_keeps_fingerprints_never_household_keys(demo):
    _cfg, result, _out = demo
    ws = result.workspace
    reg = MeterRegistry.load(ws / "registry")
    utility = [p for d in ("keys", "registry", "decryption") for p in (ws / d).rglob("*") if p.is_file()]
    utility += [p for p in ws.glob("store.sqlite*")]
    blobs = [p.read_bytes() for p in utility]
    for mid in reg.ids():
        card = read_card(ws / "households" / mid)
        assert reg.get(mid).mode == "e2e" and reg.get(mid).household_fingerprint == card.fingerprint
        for blob in blobs:
            assert card.key.hex().encode() not in blob and card.key not in blob
