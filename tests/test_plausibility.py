"""Range checks the gateway cannot do in end-to-end mode happen in the decryption role.

An E2E meter's value reaches nobody before decryption, so a compromised or broken meter could inflate a
bill or a feeder sum. The role refuses (and audits) a decrypted sum its readings could not physically
hold; honest households are billed as before.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from roles import role_for, session
from test_billing import IV, TARIFFS, fill_store

from meterveil.host.backoffice.tariff import load_tariff
from meterveil.host.common import packing
from meterveil.host.decryption.policy import Policy
from meterveil.host.decryption.secret_key import generate_keypair
from meterveil.host.store.base import Batch, StoredReading, open_store


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(768)  # packing needs n > 2**513; size does not matter here


def _month(tz: str = "Asia/Kolkata") -> int:
    return int(datetime(2026, 11, 1, tzinfo=ZoneInfo(tz)).timestamp())


def _audit_refusals(role) -> list[str]:
    return [e.reason for e in role.audit.entries_after(0) if e.decision == "refuse"]


def test_an_impossible_bill_is_refused_and_audited_the_honest_one_billed(tmp_path, keypair):
    pub, priv = keypair
    db = tmp_path / "s.db"
    t0 = _month()
    n = 30 * 96
    readings = [("honest", "F1", t0 + i * IV, 200, 0) for i in range(n)]
    # 10 kWh every 15 minutes is 40 kW for a month, above 250 V x 100 A x 1.25 (the default rating)
    # over the whole period.
    # (One inflated interval inside a plausible total is not visible in a sum: docs/PRIVACY.md.)
    readings += [("liar", "F1", t0 + i * IV, 10_000, 0) for i in range(n)]
    fill_store(db, pub, readings)
    store = open_store(db)
    with session(db, priv, "clerk", Policy()) as role:
        totals = role.household_totals(store, load_tariff(TARIFFS / "tou3.toml"), "2026-11")
        assert [t.meter_id for t in totals] == ["honest"]
        assert sum(totals[0].band_wh.values()) == 200 * n
        (who, reason), = role.refusals
        assert who == "liar" and "physically impossible" in reason
        assert any("physically impossible" in r for r in _audit_refusals(role))
    store.close()


def test_a_sum_that_does_not_fit_its_slot_is_refused_not_a_crash(tmp_path, keypair):
    pub, priv = keypair
    db = tmp_path / "s.db"
    t0 = _month()
    fill_store(db, pub, [("honest", "F1", t0 + i * IV, 100, 0) for i in range(30 * 96)])
    store = open_store(db)
    # a compromised E2E meter may encrypt any plaintext below n, e.g. 2^70 in the billing slot
    forged = (1 + (1 << 70) * pub.n) % pub.nsquare
    batch = Batch()
    for i in range(30 * 96):
        batch.readings.append(StoredReading("forger", i + 1, "F1", t0 + i * IV, IV, 1000, 1000, 5,
                                            forged if i == 3 else (1 + 100 * pub.n) % pub.nsquare))
    store.write_batch(batch)
    with session(db, priv, "clerk", Policy()) as role:
        totals = role.household_totals(store, load_tariff(TARIFFS / "tou3.toml"), "2026-11")
        assert [t.meter_id for t in totals] == ["honest"]
        assert [m for m, _ in role.refusals] == ["forger"]
    store.close()


def test_an_impossible_feeder_sum_is_refused_and_audited(tmp_path, keypair):
    pub, priv = keypair
    db = tmp_path / "s.db"
    t0 = _month()
    rows = []
    for k in range(2):
        for i in range(6):
            analytics = packing.ANALYTICS_OFFSET - 1 if (k == 1 and i == 0) else 150
            rows.append((f"m{i}", "F1", t0 + k * IV, 150, analytics))
    fill_store(db, pub, rows)
    store = open_store(db)
    role = role_for(db, priv)
    try:
        loads = role.feeder_load(store, "F1", t0, t0 + 2 * IV, release_s=IV)  # one cell per interval
        assert [x.status for x in loads][0] == "ok" and loads[0].analytics_sum_wh == 6 * 150
        assert "physically impossible" in loads[1].status and loads[1].analytics_sum_wh is None
        assert any("physically impossible" in r for r in _audit_refusals(role))
    finally:
        role.close()
        store.close()
