"""Provisioning an end-to-end meter: the household key goes into the meter's config and onto the
household card, both outside the workspace; the utility keeps only its fingerprint, and the gateway's key
file only the meter's MAC and status keys (the master key stays in the meter's config). One meter or a
batch alike."""

from __future__ import annotations

import io
import json

import pytest
from phe import paillier
from roles import assert_no_value_keys
from test_provision import firmware_check, snapshot, ws  # noqa: F401

from meterveil.host.cli.main import main as cli_main
from meterveil.host.common.pubkey import write_public
from meterveil.host.common.registry import MeterRegistry
from meterveil.host.gateway.meter_keys import KEYS_NAME
from meterveil.host.household.card import read_card
from meterveil.tools.batch import Progress, provision_batch
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
    # the meter has its master key; the gateway only what it derives for MACs and status frames
    master = bytes.fromhex(full["master_key"])
    assert kept["master_key"] == full["master_key"]
    assert_no_value_keys(ws.keys_dir, {"m0001": (master, card.key)})

    # re-keying issues a new card: the utility never had the old household key to carry over
    provision_one(ws.root, MeterSpec("m0001", ""), rotate_key=True, card_dir=cards, meter_out=meter)
    new = read_card(cards / "m0001")
    assert new.key != card.key
    assert MeterRegistry.load(ws.registry).get("m0001").household_fingerprint == new.fingerprint
    for blob in _everything_under(ws.root):
        assert new.key.hex().encode() not in blob
    new_master = bytes.fromhex(json.loads((meter / "config.json").read_text())["master_key"])
    assert new_master != master
    assert_no_value_keys(ws.keys_dir, {"m0001": (new_master, new.key)})
    assert master.hex() not in (ws.keys_dir / KEYS_NAME).read_text()  # the previous key is kept reduced too
    assert master.hex() not in ws.rotation_log.read_text() and new_master.hex() not in ws.rotation_log.read_text()


def test_card_and_meter_config_must_leave_the_workspace(ws, tmp_path):  # noqa: F811
    write_public(ws.keys_dir, PUB)
    with pytest.raises(ToolError, match="inside the utility's workspace"):
        provision_one(ws.root, MeterSpec("m0002", "F1", wifi_ssid="x", mode="e2e"), card_dir=ws.root / "cards",
                      meter_out=tmp_path / "meter")
    with pytest.raises(ToolError, match="--card-dir"):
        provision_one(ws.root, MeterSpec("m0002", "F1", wifi_ssid="x", mode="e2e"))
    assert MeterRegistry.load(ws.registry).get("m0002") is None


def _batch_csv(path, rows):
    path.write_text("\n".join(rows) + "\n")
    return path


def test_batch_provisions_e2e_rows_with_their_cards(ws, tmp_path, capsys):  # noqa: F811
    """A mode column picks each row's mode; --mode is the default for rows that leave it empty."""
    write_public(ws.keys_dir, PUB)
    cards, meters = tmp_path / "cards", tmp_path / "meter-configs"
    csv_path = _batch_csv(tmp_path / "m.csv", ["meter_id,feeder,mode", "p1,F1,proxy", "e1,F1,e2e", "e2,F2,"])
    assert cli_main(["provision", "--batch", str(csv_path), "--workspace", str(ws.root), "--wifi-ssid", "home",
                     "--mode", "e2e", "--card-dir", str(cards), "--meter-out", str(meters)]) == 0
    assert "household card" in capsys.readouterr().out
    reg = MeterRegistry.load(ws.registry)
    assert {m: reg.get(m).mode for m in reg.ids()} == {"p1": "proxy", "e1": "e2e", "e2": "e2e"}
    assert not (cards / "p1").exists() and not (meters / "p1").exists()
    everything = _everything_under(ws.root)
    reduced = {}
    for mid in ("e1", "e2"):
        card = read_card(cards / mid)
        full = json.loads((meters / mid / "config.json").read_text())
        assert full["e2e"]["household_key"] == card.key.hex() and int(full["e2e"]["n"], 16) == PUB.n
        assert firmware_check(meters / mid / "config.json", board=True).returncode == 0
        assert reg.get(mid).household_fingerprint == card.fingerprint
        for blob in everything:  # the workspace never keeps a household key
            assert card.key.hex().encode() not in blob and card.key not in blob
        assert "household_key" not in json.loads(ws.meter_config(mid).read_text())["e2e"]
        reduced[mid] = (bytes.fromhex(full["master_key"]), card.key)
    assert_no_value_keys(ws.keys_dir, reduced)
    proxy = json.loads((ws.keys_dir / KEYS_NAME).read_text())["meters"]["p1"]
    assert proxy["key"] == json.loads(ws.meter_config("p1").read_text())["master_key"]


def test_batch_e2e_rows_are_checked_before_anything_is_written(ws, tmp_path):  # noqa: F811
    csv_path = _batch_csv(tmp_path / "m.csv", ["meter_id,feeder,mode", "p1,F1,proxy", "e1,F1,e2e"])
    before = snapshot(ws)
    quiet = Progress(2, stream=io.StringIO())
    with pytest.raises(ToolError, match="need the utility public key"):  # keys init not run yet
        provision_batch(ws.root, csv_path, MeterSpec("", ""), card_dir=tmp_path / "c", meter_out=tmp_path / "m",
                        progress=quiet)
    assert snapshot(ws) == before
    write_public(ws.keys_dir, PUB)
    before = snapshot(ws)
    with pytest.raises(ToolError, match=r"end-to-end rows \(e1\).*--card-dir"):
        provision_batch(ws.root, csv_path, MeterSpec("", ""), progress=quiet)
    with pytest.raises(ToolError, match="inside the utility's workspace"):
        provision_batch(ws.root, csv_path, MeterSpec("", ""), card_dir=ws.root / "cards",
                        meter_out=tmp_path / "m", progress=quiet)
    bad = _batch_csv(tmp_path / "bad.csv", ["meter_id,feeder,mode", "p1,F1,proxy", "e1,F1,endtoend"])
    with pytest.raises(ToolError, match="line 3: e1: mode must be one of proxy, e2e"):
        provision_batch(ws.root, bad, MeterSpec("", ""), card_dir=tmp_path / "c", meter_out=tmp_path / "m",
                        progress=quiet)
    assert snapshot(ws) == before and not (tmp_path / "c").exists()
