"""Provisioning an end-to-end meter: the household key goes into the meter's config and onto the
household card, both outside the workspace; the utility keeps only its fingerprint."""

from __future__ import annotations

import json

import pytest
from phe import paillier
from test_provision import firmware_check, ws  # noqa: F401

from meterveil.host.cli.main import main as cli_main
from meterveil.host.common.pubkey import write_public
from meterveil.host.common.registry import MeterRegistry
from meterveil.host.household.card import read_card
from meterveil.tools.fileio import ToolError
from meterveil.tools.provision import MeterSpec, provision_one

PUB = paillier.generate_paillier_keypair(n_length=1024)[0]


def _everything_under(root) -> list[bytes]:
    return [p.read_bytes() for p in root.rglob("*") if p.is_file()]


def test_the_workspace_keeps_no_household_key(ws, tmp_path):  # noqa: F811
    write_public(ws.keys_dir, PUB)
    cards, meter = tmp_path / "cards", tmp_path / "meter"
    assert cli_main(["provision", "m0001", "--feeder", "F1", "--workspace", str(ws.root), "--wifi-ssid", "home",
                     "--mode", "e2e", "--card-dir", str(cards), "--meter-out", str(meter)]) == 0
    card = read_card(cards / "m0001")
    assert (cards / "m0001" / "household-card.png").stat().st_mode & 0o077 == 0
    full = json.loads((meter / "config.json").read_text())
    assert full["e2e"]["household_key"] == card.key.hex() and int(full["e2e"]["n"], 16) == PUB.n
    assert firmware_check(meter / "config.json", board=True).returncode == 0  # the meter accepts it
    reg = MeterRegistry.load(ws.registry)
    assert (reg.get("m0001").mode, reg.get("m0001").household_fingerprint) == ("e2e", card.fingerprint)
    for blob in _everything_under(ws.root):
        assert card.key.hex().encode() not in blob and card.key not in blob
    kept = json.loads(ws.meter_config("m0001").read_text())
    assert "household_key" not in kept["e2e"] and card.fingerprint in kept["e2e"]["_household_key"]

    # re-keying issues a new card: the utility never had the old household key to carry over
    provision_one(ws.root, MeterSpec("m0001", ""), rotate_key=True, card_dir=cards, meter_out=meter)
    new = read_card(cards / "m0001")
    assert new.key != card.key
    assert MeterRegistry.load(ws.registry).get("m0001").household_fingerprint == new.fingerprint
    for blob in _everything_under(ws.root):
        assert new.key.hex().encode() not in blob


def test_card_and_meter_config_must_leave_the_workspace(ws, tmp_path):  # noqa: F811
    write_public(ws.keys_dir, PUB)
    with pytest.raises(ToolError, match="inside the utility's workspace"):
        provision_one(ws.root, MeterSpec("m0002", "F1", wifi_ssid="x", mode="e2e"), card_dir=ws.root / "cards",
                      meter_out=tmp_path / "meter")
    with pytest.raises(ToolError, match="--card-dir"):
        provision_one(ws.root, MeterSpec("m0002", "F1", wifi_ssid="x", mode="e2e"))
    assert MeterRegistry.load(ws.registry).get("m0002") is None
