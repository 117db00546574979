"""`meterveil export households` against bills: months are billing periods in the bills' time zone,
refusals of the decryption role are reported (never silently dropped), paths and keys are checked
before anything is decrypted, and `privacy-report --json` checks its output path.

The store holds real Paillier ciphertexts (pool obfuscators from test_billing) for 12 households
over 2026-11-01..02 in Asia/Kolkata, which starts at 2026-10-31 18:30 UTC: UTC months would split
it into a 5.5-hour "October" and a "November" that is not the billed window.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from roles import audit_db, role_dir_for, session
from test_billing import IV, TARIFFS, fill_store, pool_encrypt

from meterveil.host.audit import signing
from meterveil.host.audit.chain import AuditLog
from meterveil.host.backoffice.anonymize import HIERARCHIES, KWH
from meterveil.host.backoffice.dp_synth import kwh_domain
from meterveil.host.backoffice.tariff import load_tariff
from meterveil.host.cli.main import main
from meterveil.host.common import packing
from meterveil.host.common.registry import MeterRecord, MeterRegistry
from meterveil.host.decryption.role import Policy
from meterveil.host.decryption.secret_key import generate_keypair, load_private
from meterveil.host.demo import profiles
from meterveil.host.store.base import Batch, StoredReading, open_store

ZONE = ZoneInfo("Asia/Kolkata")
T0 = int(datetime(2026, 11, 1, tzinfo=ZONE).timestamp())  # 2026-10-31 18:30 UTC
DAYS = 2
METERS = [f"m{i:04d}" for i in range(1, 13)]


def wh(i: int, slot: int) -> int:
    return 40 + (37 * i + 11 * slot) % 260


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("export-base")
    pub, priv = generate_keypair(768)  # packing needs n > 2**513
    role_dir_for(d / "s.db", priv)
    reg = MeterRegistry.load(d / "registry" / "meters.json")
    for i, mid in enumerate(METERS):
        reg.put(MeterRecord(mid, "F1", 1000, 1000, 5, profiles.make_household(i, base_seed=3).attributes()),
                save=False)
    reg.save()
    readings = [(mid, "F1", T0 + s * IV, wh(i, s), 0) for s in range(DAYS * 96) for i, mid in enumerate(METERS)]
    fill_store(d / "s.db", pub, readings)
    return d, pub


@pytest.fixture
def ws(base, tmp_path):
    """A fresh copy of the store + keys per test (bills and exports write the ledger and audit log)."""
    d, pub = base
    shutil.copytree(d, tmp_path / "w")
    return tmp_path / "w", pub


def bill(d: Path, period: str = "2026-11", tariff: str = "tou3.toml") -> dict[str, int]:
    """Bill a period through the decryption role like `meterveil bills`; total Wh per meter."""
    store = open_store(d / "s.db")
    with session(d / "s.db", load_private(d / "decryption"), "billing-clerk", Policy()) as role:
        totals = role.household_totals(store, load_tariff(TARIFFS / tariff), period)
        assert not role.refusals
    store.close()
    return {t.meter_id: sum(t.band_wh.values()) for t in totals}


def late_readings(d: Path, pub, meters: list[str], count: int = 10) -> None:
    """`count` more readings for `meters` on day 3, still in November (a re-bill would expose them)."""
    enc = pool_encrypt(pub)
    batch = Batch(readings=[StoredReading(mid, 1000 + s, "F1", T0 + (DAYS * 96 + s) * IV, IV, 1000, 1000, 5,
                                          enc(s, packing.pack(100, 0)))
                            for mid in meters for s in range(count)])
    store = open_store(d / "s.db")
    store.write_batch(batch)
    store.close()


def export(d: Path, out: Path, *extra: str) -> int:
    reg = [] if "--registry" in extra else ["--registry", str(d / "registry" / "meters.json")]
    return main(["export", "households", "--db", str(d / "s.db"), "--role-dir", str(d / "decryption"), "--k", "2",
                 "--seed", "5", "--out", str(out), *reg, *extra])


def audit_entries(d: Path) -> list:
    with AuditLog(audit_db(d / "s.db")) as log:
        assert log.verify(signing.load_verify(d / "decryption")).ok
        return list(log.entries())


def kwh_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("kwh_")]


def test_export_months_are_the_billed_periods_and_equal_the_bills(ws, capsys):
    d, _ = ws
    totals = bill(d)
    assert export(d, d / "h.csv") == 0
    out, err = capsys.readouterr()
    table = pd.read_csv(d / "h.csv", dtype=str)
    assert kwh_columns(table) == ["kwh_2026-11"]  # not a 5.5-hour UTC October
    levels = json.loads((d / "h.csv.report.json").read_text())["levels"]
    binned = HIERARCHIES[KWH][levels[KWH]]  # kWh is a quasi-identifier: released as the bill's bin
    got, billed = Counter(table["kwh_2026-11"]), Counter(binned(round(v / 1000)) for v in totals.values())
    assert all(got[b] <= billed[b] for b in got) and sum(got.values()) == len(table) > 0
    rep = json.loads((d / "h.csv.report.json").read_text())
    assert rep["timezone"] == "Asia/Kolkata" and "earlier bills" in rep["timezone_source"]
    assert rep["months"] == ["2026-11"] and rep["refused_by_decryption_role"] == {}
    assert rep["households_in"] == 12 and rep["rows"] + rep["suppressed"] == 12
    assert not [e for e in audit_entries(d) if e.decision == "refuse"]
    assert "warning" not in err and "Asia/Kolkata" in out


def test_export_zone_without_bills_and_with_tariff_option(ws, capsys):
    d, _ = ws
    # no bills yet: the default tariff (tariffs/tou3.toml, what the demo bills with)
    assert export(d, d / "a.csv") == 0
    rep = json.loads((d / "a.csv.report.json").read_text())
    assert rep["timezone"] == "Asia/Kolkata" and rep["months"] == ["2026-11"]
    # and a later bill of that month (same window, same readings) is allowed
    assert len(bill(d)) == 12
    # --tariff picks the zone explicitly: Europe/Berlin starts 2026-10-31 19:30 local. Its "October"
    # is 4.5 hours of readings (exact per household: refused) and its November is not the billed one
    assert export(d, d / "b.csv", "--tariff", str(TARIFFS / "flat.toml")) == 2
    err = capsys.readouterr().err
    assert "shifted window" in err and "2026-10: 12 household(s)" in err and "holds 18 readings (< 24)" in err


def test_export_in_another_zone_reports_every_refusal(ws, tmp_path, capsys):
    d, _ = ws
    bill(d)
    utc = tmp_path / "utc.toml"
    utc.write_text((TARIFFS / "tou3.toml").read_text().replace('"Asia/Kolkata"', '"UTC"'))
    assert export(d, d / "h.csv", "--tariff", str(utc)) == 2  # UTC "October" is 5.5 hours: refused too
    err = capsys.readouterr().err
    assert "refused the monthly totals of every household" in err
    assert "2026-11: 12 household(s) [m0001, m0002," in err and "shifted window" in err
    assert "2026-10: 12 household(s)" in err and "holds 22 readings (< 24)" in err
    assert not (d / "h.csv").exists()
    last = audit_entries(d)[-1]
    assert (last.action, last.decision) == ("export-households", "refuse")


def test_export_surfaces_rebill_refusals(ws, capsys):
    d, pub = ws
    bill(d)
    late_readings(d, pub, ["m0003", "m0007"])  # 10 new readings each: a re-decryption would expose them
    assert export(d, d / "h.csv") == 0
    err = capsys.readouterr().err
    assert "2026-11: 2 household(s) [m0003, m0007]" in err and "billed over other readings" in err
    rep = json.loads((d / "h.csv.report.json").read_text())
    assert rep["households_in"] == 10 and rep["households_left_out_refused"] == 2
    assert rep["refused_by_decryption_role"]["2026-11"]["households"] == 2
    assert rep["months"] == ["2026-11"]


def test_export_fails_when_every_household_is_refused(ws, capsys):
    d, pub = ws
    bill(d)
    late_readings(d, pub, METERS)
    assert export(d, d / "h.csv") == 2
    err = capsys.readouterr().err
    assert "refused the monthly totals of every household" in err
    assert "2026-11: 12 household(s) [m0001" in err and "billed over other readings" in err
    assert not (d / "h.csv").exists() and not (d / "h.csv.report.json").exists()
    last = audit_entries(d)[-1]
    assert (last.action, last.decision) == ("export-households", "refuse")


def _bill_entries(d: Path) -> int:
    return sum(e.action == "bill" for e in audit_entries(d))


def test_output_paths_checked_before_decrypting(ws, capsys):
    d, _ = ws
    (d / "plain").write_text("a file, not a folder")
    for bad, why in ((d, "is a directory"), (d / "plain" / "h.csv", "cannot create folder")):
        before = _bill_entries(d)
        assert export(d, bad) == 2
        err = capsys.readouterr().err
        assert why in err and len(err.strip().splitlines()) == 1
        assert _bill_entries(d) == before  # nothing was decrypted
    assert export(d, d / "new" / "deeper" / "h.csv") == 0
    assert (d / "new" / "deeper" / "h.csv").is_file() and (d / "new" / "deeper" / "h.csv.report.json").is_file()


def test_privacy_report_json_path(ws, capsys):
    d, _ = ws
    assert main(["privacy-report", "--db", str(d / "s.db"), "--json", str(d)]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and len(err.strip().splitlines()) == 1
    target = d / "no" / "such" / "dir" / "x.json"
    assert main(["privacy-report", "--db", str(d / "s.db"), "--json", str(target)]) == 0
    assert json.loads(target.read_text())


def test_keys_errors_are_precise(ws, capsys):
    d, _ = ws
    assert export(d, d / "h.csv", "--registry", str(d / "nokeys")) == 2
    err = capsys.readouterr().err
    assert "no meter registry" in err and "quasi-identifier" not in err
    bare = MeterRegistry.load(d / "bare")
    for mid in METERS:
        bare.put(MeterRecord(mid, "F1", 1000, 1000, 5, {"volts": 230.0}), save=False)
    bare.save()
    assert export(d, d / "h.csv", "--registry", str(d / "bare")) == 2
    err = capsys.readouterr().err
    assert "none of the 12 meters" in err and "--attr home_type=" in err
    (d / "empty").mkdir()
    assert export(d, d / "h.csv", "--registry", str(d / "empty")) == 2
    assert "no meter registry" in capsys.readouterr().err
    assert _bill_entries(d) == 0


def test_synthetic_export_of_identical_households_is_dp_and_audited(tmp_path, base, capsys):
    """Every household alike: a synthetic row can only equal a real one, which is no leak under DP
    (the old copy check refused it); the export states its epsilon in the report and the audit log."""
    _, pub = base
    d = tmp_path
    priv = load_private(base[0] / "decryption")
    role_dir_for(d / "s.db", priv)
    reg = MeterRegistry.load(d / "registry" / "meters.json")
    same = {"home_type": "flat", "occupants": 2, "tariff_type": "flat", "region": "north"}
    for mid in METERS:
        reg.put(MeterRecord(mid, "F1", 1000, 1000, 5, same), save=False)
    reg.save()
    fill_store(d / "s.db", pub, [(mid, "F1", T0 + s * IV, 250 if s < 4 else 0, 0) for mid in METERS for s in range(96)])
    assert export(d, d / "syn.csv", "--synthetic", "50", "--epsilon", "0.5") == 0
    assert "epsilon 0.5 (delta 0)" in capsys.readouterr().out
    rows = pd.read_csv(d / "syn.csv", dtype=str)
    assert len(rows) == 50 and set(rows["kwh_2026-11"]) <= set(kwh_domain())
    last = audit_entries(d)[-1]
    assert (last.action, last.decision, last.query["epsilon"]) == ("export-households", "allow", 0.5)
