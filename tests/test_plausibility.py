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


def test_one_lying_meter_cannot_spend_the_cells_noise_slack(tmp_path, keypair):
    """The feeder bound is the tail of the *sum's* noise, not a per-reading bound added up: a meter
    reporting 4 share tails above its clamp in a 6-reading cell is refused, while the same cell with
    honest values (and the largest honest noise the sum's tail allows) is released."""
    from meterveil.host.common.noise_bound import fallback_share_variance, share_tail_bound

    pub, priv = keypair
    one = share_tail_bound(fallback_share_variance(1000, 1000, 5))  # one share's tail (fill_store's DP)
    whole = share_tail_bound(6 * fallback_share_variance(1000, 1000, 5))  # the sum of six shares
    t0 = _month()
    rows = [(f"m{i}", "F1", t0, 150, 150) for i in range(5)] + [("liar", "F1", t0, 150, 1000 + 4 * one)]
    rows += [(f"m{i}", "F1", t0 + IV, 150, 150) for i in range(5)] + [("liar", "F1", t0 + IV, 150, whole - 750)]
    fill_store(tmp_path / "s.db", pub, rows)
    assert 5 * 150 + 1000 + 4 * one < 6 * (1000 + one)  # inside the old per-reading sum of bounds
    store = open_store(tmp_path / "s.db")
    role = role_for(tmp_path / "s.db", priv)
    try:
        loads = role.feeder_load(store, "F1", t0, t0 + 2 * IV, release_s=IV)
        assert "physically impossible" in loads[0].status and loads[0].analytics_sum_wh is None
        assert loads[1].status == "ok" and loads[1].analytics_sum_wh == whole
    finally:
        role.close()
        store.close()


def test_releases_are_whole_cells_and_a_running_one_waits(tmp_path, keypair):
    """A range that cuts an hour is widened to the whole hour (a partial release would pin a partial
    contributor set and make the honest full hour refused forever); an hour not yet over is refused
    as incomplete, not released with what has arrived so far."""
    import time

    pub, priv = keypair
    t0 = _month() + 2 * IV  # 19:00 UTC: a whole hour
    now_hour = int(time.time()) // 3600 * 3600
    assert t0 % 3600 == 0
    rows = [(f"m{i}", "F1", t0 + s * IV, 100, 100) for i in range(6) for s in range(4)]
    rows += [(f"m{i}", "F1", now_hour, 100, 100) for i in range(6)]
    fill_store(tmp_path / "s.db", pub, rows)
    store = open_store(tmp_path / "s.db")
    role = role_for(tmp_path / "s.db", priv)
    try:
        half, = role.feeder_load(store, "F1", t0, t0 + 2 * IV)  # half an hour asked: the whole hour
        assert half.status == "ok" and half.analytics_sum_wh == 24 * 100 and half.readings == 24
        again, = role.feeder_load(store, "F1", t0, t0 + 4 * IV)
        assert again.allowed and again.analytics_sum_wh == 24 * 100  # the same cell, not a refusal
        running, = role.feeder_load(store, "F1", now_hour, now_hour + IV)
        assert running.status.startswith("refused: incomplete cell") and running.analytics_sum_wh is None
    finally:
        role.close()
        store.close()
