"""Feeder sums under policy: >= m contributors, refusals audited, masked slots, differencing, budget."""

from __future__ import annotations

import csv
import math
import sqlite3
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from roles import audit_db, role_dir_for
from roles import role_for as _role_for

from meterveil.host.audit.chain import AuditLog
from meterveil.host.backoffice import dp
from meterveil.host.backoffice.aggregate import (
    AggregateError,
    billing_sums,
    feeder_sums,
    hom_sum,
    iter_billing_sums,
)
from meterveil.host.backoffice.tariff import load_tariff
from meterveil.host.common import packing
from meterveil.host.common.registry import MeterRecord, MeterRegistry
from meterveil.host.decryption.policy import Policy, PolicyError
from meterveil.host.decryption.role import DecryptionRole
from meterveil.host.decryption.secret_key import generate_keypair
from meterveil.host.gateway.encryptor import make_encryptor
from meterveil.host.store.base import Batch, StoredReading, open_store

T0 = 1793471400  # 2026-11-01 00:00 IST, a multiple of 900
IV = 900


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(1024)


class Fleet:
    """A real store filled with real ciphertexts; remembers the plaintexts for the assertions."""

    def __init__(self, db, pub):
        self.db, self.pub = db, pub
        self.enc = make_encryptor("djn+packed", pub)
        self.plain: list[tuple[str, str, int, int, int]] = []
        self.counters: dict[str, int] = {}

    def add(self, meter_id, feeder, t, billing_wh, analytics_wh, eps=1000, clamp=1000, m=5):
        self.counters[meter_id] = self.counters.get(meter_id, 0) + 1
        (c,) = self.enc.encrypt_reading(billing_wh, analytics_wh)
        store = open_store(self.db)
        store.write_batch(Batch(readings=[StoredReading(meter_id, self.counters[meter_id], feeder, t, IV,
                                                        eps, clamp, m, c)]))
        store.close()
        self.plain.append((meter_id, feeder, t, billing_wh, analytics_wh))

    def sums(self, feeder, t):
        rows = [p for p in self.plain if p[1] == feeder and p[2] == t]
        return sum(p[3] for p in rows), sum(p[4] for p in rows)


def role_for(db, priv, **policy):
    """These tests are about thresholds, masking and differencing: no collusion margin unless asked
    (test_dummy_meters_beside_one_household_are_refused covers gamma)."""
    policy.setdefault("gamma", 0.0)
    return _role_for(db, priv, **policy)


def releases(role):
    """(action, decision) of the role's audit entries, membership bookkeeping left out."""
    return [(e.action, e.decision) for e in role.audit.entries() if e.action != "membership"]


def load(db, role, feeder, t_from, t_to):
    store = open_store(db)
    try:
        return role.feeder_load(store, feeder, t_from, t_to, release_s=900)
    finally:
        store.close()


@pytest.fixture
def fleet(tmp_path, keypair):
    f = Fleet(tmp_path / "s.db", keypair[0])
    # interval 0: 6 meters; interval 1: 3 meters; interval 2: 5 meters
    for i, n in enumerate((6, 3, 5)):
        for k in range(n):
            f.add(f"m{k}", "F1", T0 + i * IV, 100 + 10 * k + i, (-1) ** k * (37 * k + i))
    yield f
    f.enc.close()


def test_hom_sum_is_the_plaintext_sum(keypair):
    pub, priv = keypair
    enc = make_encryptor("djn+packed", pub)
    vals = [(5, -3), (0, 0), (4_000_000_000, 2_000_000_000), (1, -2_000_000_000)]
    c = hom_sum((enc.encrypt_reading(b, a)[0] for b, a in vals), pub.nsquare)
    enc.close()
    assert packing.unpack_sum(priv.raw_decrypt(c), len(vals)) == (sum(b for b, _ in vals), sum(a for _, a in vals))
    assert priv.raw_decrypt(hom_sum([], pub.nsquare)) == 0


def test_feeder_sums_released_and_refused_with_audit(fleet, keypair):
    _, priv = keypair
    role = role_for(fleet.db, priv)
    rows = load(fleet.db, role, "F1", T0, T0 + 3 * IV)
    assert [r.contributors for r in rows] == [6, 3, 5]
    assert [r.status for r in rows] == ["ok", "refused: 3 < m=5", "ok"]
    assert rows[0].analytics_sum_wh == fleet.sums("F1", T0)[1]
    assert rows[2].analytics_sum_wh == fleet.sums("F1", T0 + 2 * IV)[1]
    assert rows[1].analytics_sum_wh is None
    assert (rows[0].epsilon_milli, rows[0].clamp_wh, rows[0].m) == (1000, 1000, 5)
    entries = [e for e in role.audit.entries() if e.action != "membership"]
    assert releases(role) == [("feeder-load", "allow"), ("feeder-load", "refuse"), ("feeder-load", "allow")]
    refusal = entries[1]
    assert refusal.reason == "refused: 3 < m=5" and refusal.result_hash == ""
    assert refusal.query["interval_start"] == T0 + IV and refusal.query["contributors"] == 3
    assert entries[0].result_hash == role.result_hash({"analytics_sum_wh": rows[0].analytics_sum_wh})
    assert role.audit.verify().ok
    role.close()


def test_refused_cell_is_never_decrypted(fleet, keypair, monkeypatch):
    _, priv = keypair
    seen: list[int] = []
    real = priv.raw_decrypt
    monkeypatch.setattr(priv, "raw_decrypt", lambda c: seen.append(c) or real(c))
    role = role_for(fleet.db, priv)
    load(fleet.db, role, "F1", T0 + IV, T0 + 2 * IV)  # only the 3-meter interval
    assert seen == []
    role.close()


def test_m_from_registry_and_k_min_floor(fleet, keypair):
    _, priv = keypair
    role = role_for(fleet.db, priv, feeder_m={"F1": 6})  # provisioned m=6 beats the m=5 in frames
    assert [r.status for r in load(fleet.db, role, "F1", T0, T0 + 3 * IV)] == \
        ["ok", "refused: 3 < m=6", "refused: 5 < m=6"]
    role.close()
    role = role_for(fleet.db, priv, feeder_m={"F1": 2}, k_min=6)  # k_min is a floor under any m
    assert [r.m for r in load(fleet.db, role, "F1", T0, T0 + 3 * IV)] == [6, 6, 6]
    role.close()


def test_policy_from_registry(tmp_path):
    reg = MeterRegistry.load(tmp_path)
    for i, m in enumerate((5, 8, 5)):
        reg.put(MeterRecord(f"a{i}", "FA", 1000, 1000, m))
    reg.put(MeterRecord("b0", "FB", 1000, 1000, 3))
    p = Policy.from_registry(reg)
    assert p.required_m("FA", 5) == 8 and p.required_m("FB", 3) == 5 and p.required_m("FC", 7) == 7
    with pytest.raises(PolicyError):
        Policy(k_min=1)


def test_feeder_result_never_reveals_true_billing_slot(fleet, keypair, monkeypatch):
    """The decryption role masks the billing slot of a feeder sum before decrypting."""
    _, priv = keypair
    seen: list[int] = []
    real = priv.raw_decrypt
    monkeypatch.setattr(priv, "raw_decrypt", lambda c: (lambda p: seen.append(p) or p)(real(c)))
    role = role_for(fleet.db, priv)
    rows = load(fleet.db, role, "F1", T0, T0 + IV)
    assert rows[0].allowed and len(seen) == 1
    true_billing, true_analytics = fleet.sums("F1", T0)
    low = seen[0] & ((1 << packing.SLOT_BITS) - 1)
    assert low != true_billing and low >= 1 << packing.SUM_BITS  # masked: not even in range
    with pytest.raises(packing.PackingError):
        packing.billing_of(seen[0])
    assert packing.analytics_of(seen[0], 6) == true_analytics
    role.close()


def test_bill_result_never_reveals_true_analytics_slot(fleet, keypair, monkeypatch):
    _, priv = keypair
    seen: list[int] = []
    real = priv.raw_decrypt
    monkeypatch.setattr(priv, "raw_decrypt", lambda c: (lambda p: seen.append(p) or p)(real(c)))
    tariff = load_tariff(Path(__file__).resolve().parent.parent / "tariffs" / "tou3.toml")
    role = role_for(fleet.db, priv, min_band_readings=1)  # about masking: three readings are enough here
    store = open_store(fleet.db)
    totals = {t.meter_id: t for t in role.household_totals(store, tariff, "2026-11")}
    store.close()
    assert sum(totals["m0"].band_wh.values()) == sum(p[3] for p in fleet.plain if p[0] == "m0")
    assert seen
    for p in seen:
        with pytest.raises(packing.PackingError):
            packing.analytics_of(p, 3)
    role.close()


def test_mixed_params_and_double_readings_refused(tmp_path, keypair):
    pub, priv = keypair
    f = Fleet(tmp_path / "s.db", pub)
    for k in range(6):
        f.add(f"m{k}", "F2", T0, 10, 1, eps=1000 if k else 500)
    for k in range(5):
        f.add(f"m{k}", "F2", T0 + IV, 10, 1)
    # a second reading of m0 for the same interval: the store refuses it since it enforces one reading
    # per interval, so this stands for a store written before that (its rows are kept as they were);
    # the role must still refuse the sum
    c = sqlite3.connect(f.db)
    c.execute("DROP TRIGGER readings_no_overlap")
    c.close()
    f.add("m0", "F2", T0 + IV, 10, 1)
    role = role_for(f.db, priv)
    rows = load(f.db, role, "F2", T0, T0 + 2 * IV)
    assert rows[0].status.startswith("refused: mixed DP parameters")
    assert rows[1].status == "refused: a meter contributed 2 readings to one interval"
    assert [d for _, d in releases(role)] == ["refuse", "refuse"]
    role.close()
    f.enc.close()


def test_differencing_refused_and_rerelease_free(fleet, keypair):
    _, priv = keypair
    role = role_for(fleet.db, priv, daily_budget_milli=10_000)
    first = load(fleet.db, role, "F1", T0, T0 + IV)[0]
    spent = role.spent_milli("F1", "2026-10-31")
    assert first.allowed and 0 < spent < 1000  # one interval of 96 costs a fraction of the day
    again = load(fleet.db, role, "F1", T0, T0 + IV)[0]
    assert again.allowed and again.analytics_sum_wh == first.analytics_sum_wh
    assert role.spent_milli("F1", "2026-10-31") == spent  # same contributor set: no new spend
    t2 = T0 + 2 * IV  # 5 of the 6 members reported; m5's reading arrives late
    assert load(fleet.db, role, "F1", t2, t2 + IV)[0].allowed
    fleet.add("m5", "F1", t2, 999, 555)  # a late reading changes the set by one meter
    diff = load(fleet.db, role, "F1", t2, t2 + IV)[0]
    assert not diff.allowed and "different contributor set" in diff.status
    assert list(role.audit.entries())[-1].decision == "refuse"
    role.close()


def test_daily_budget_refuses_and_audits(tmp_path, keypair):
    pub, priv = keypair
    f = Fleet(tmp_path / "s.db", pub)
    for i in range(4):
        for k in range(5):
            f.add(f"m{k}", "F3", T0 + 86400 + i * IV, 10, 1, eps=1000)
    # independent of the role: 5 households, none assumed colluding here -> 5 honest shares per interval
    v = dp.share_variance(1.0, 1000, 5)
    eps = [dp.household_day_epsilon(1000, [(1, 5 * v)] * k) for k in (1, 2, 3)]
    budget = int(500 * (eps[1] + eps[2]))  # between two and three intervals
    role = role_for(f.db, priv, daily_budget_milli=budget)
    rows = load(f.db, role, "F3", T0 + 86400, T0 + 86400 + 4 * IV)
    assert [r.allowed for r in rows] == [True, True, False, False]
    assert rows[2].status.startswith(f"refused: household-day epsilon would reach {eps[2]:.3f} > budget")
    assert role.spent_milli("F3", "2026-11-01") == math.ceil(eps[1] * 1000 - 1e-9)
    entries = [e for e in role.audit.entries() if e.action != "membership"]
    assert (entries[0].action, entries[0].query["daily_budget_milli"]) == ("policy", budget)
    assert [e.decision for e in entries[1:]] == ["allow", "allow", "refuse", "refuse"]
    role.close()
    # a later session without --daily-budget keeps the stored budget (no unlimited back door)
    later = role_for(f.db, priv)
    assert later.daily_budget_milli == budget
    assert not any(r.allowed for r in load(f.db, later, "F3", T0 + 86400 + 2 * IV, T0 + 86400 + 4 * IV))
    later.close()
    f.enc.close()


def test_two_sessions_cannot_both_release_different_sets(fleet, keypair, monkeypatch):
    """Check, decryption and audit entry are one decision under the role's lock: while session A is
    between its check and its entry, session B's decision waits; afterwards B sees A's release."""
    _, priv = keypair
    t2 = T0 + 2 * IV
    a = role_for(fleet.db, priv)
    order: list[str] = []

    def session_b():
        b = role_for(fleet.db, priv)
        order.append("B " + load(fleet.db, b, "F1", t2, t2 + IV)[0].status)
        b.close()

    original = DecryptionRole._check_feeder
    b_thread: list[threading.Thread] = []

    def check_then_race(self, cell, m, *rest):
        if self is a and not b_thread:
            fleet.add("m5", "F1", t2, 999, 555)  # B will see one more contributor than A
            t = threading.Thread(target=session_b)
            b_thread.append(t)
            t.start()
            time.sleep(0.5)  # B is blocked on the lock meanwhile
            order.append("A checked")
        return original(self, cell, m, *rest)

    monkeypatch.setattr(DecryptionRole, "_check_feeder", check_then_race)
    store = open_store(fleet.db)
    cells = feeder_sums((r for r in store.iter_readings(t_from=t2, t_to=t2 + IV) if r.meter_id != "m5"),
                        a.public_key.nsquare)
    store.close()
    assert a._feeder_cell(cells[0], 6).allowed
    b_thread[0].join(30)
    assert order[0] == "A checked" and "different contributor set" in order[1]
    a.close()


def test_aggregate_input_checks(keypair):
    pub, _ = keypair
    ok = StoredReading("m1", 1, "F", T0, IV, 1000, 1000, 5, 12345)
    with pytest.raises(AggregateError, match="unsupported scheme"):
        feeder_sums([StoredReading("m1", 1, "F", T0, IV, 1000, 1000, 5, 3, scheme="rot13")], pub.nsquare)
    with pytest.raises(AggregateError, match="wrong key"):
        feeder_sums([StoredReading("m1", 1, "F", T0, IV, 1000, 1000, 5, pub.nsquare + 1)], pub.nsquare)
    with pytest.raises(AggregateError, match="outside the period"):
        billing_sums([ok], pub.nsquare, lambda t: "b", T0 + IV, T0 + 2 * IV)
    hs = billing_sums([ok], pub.nsquare, lambda t: "b", T0, T0 + IV, meter_ids=["m2"])
    assert hs["m1"].readings == 1 and hs["m2"].readings == 0 and hs["m2"].bands == {}


def _by_meter(meters: int, per_meter: int, seen: list[str] | None = None):
    """Readings ordered by meter as the store streams them for billing; records what was read."""
    for k in range(meters):
        for i in range(per_meter):
            if seen is not None:
                seen.append(f"m{k:04d}")
            yield StoredReading(f"m{k:04d}", i + 1, "F", T0 + i * IV, IV, 1000, 1000, 5, 1 + (k << 600) + i)


def test_billing_sums_yield_each_household_before_reading_the_next(keypair):
    """Billing a month of 100,000 meters streams 288 M readings: a household's sums must be handed on
    as soon as its readings have gone by, not after the whole stream (which held them all)."""
    pub, _ = keypair
    seen: list[str] = []
    out = iter_billing_sums(_by_meter(3, 4, seen), pub.nsquare, lambda t: "b", T0, T0 + 4 * IV, ["m0001", "a", "z"])
    assert next(out).meter_id == "a" and seen == ["m0000"]  # a household without readings sorts first
    first = next(out)
    assert first.meter_id == "m0000" and first.readings == 4
    assert seen == ["m0000"] * 4 + ["m0001"]  # read one reading past the household, no further
    assert [h.meter_id for h in out] == ["m0001", "m0002", "z"]
    with pytest.raises(AggregateError, match="not ordered by meter"):
        list(iter_billing_sums(reversed(list(_by_meter(2, 1))), pub.nsquare, lambda t: "b", T0, T0 + IV))


def test_billing_sums_memory_does_not_grow_with_the_readings(keypair):
    """Peak memory while summing 400 households is that of summing 20: only the current household's
    running sums are held (consumed one at a time, as the decryption role does)."""
    pub, _ = keypair

    def peak(meters: int) -> int:
        tracemalloc.start()
        try:
            n = sum(h.readings for h in iter_billing_sums(_by_meter(meters, 96), pub.nsquare, lambda t: "b",
                                                           T0, T0 + 96 * IV))
            assert n == meters * 96
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(20), peak(400)
    assert large < small * 1.5, f"peak {large} bytes for 400 households vs {small} for 20"


def test_empty_range_is_a_policy_error(fleet, keypair):
    _, priv = keypair
    role = role_for(fleet.db, priv)
    with pytest.raises(PolicyError, match="empty time range"):
        load(fleet.db, role, "F1", T0, T0)
    role.close()


def test_cli_feeder_load(fleet, keypair, tmp_path):
    pub, priv = keypair
    role_dir = role_dir_for(fleet.db, priv)
    from roles import registry_from_store
    reg = registry_from_store(fleet.db)
    out = tmp_path / "f.csv"
    cmd = [sys.executable, "-m", "meterveil.host.cli", "feeder-load", "--db", str(fleet.db),
           "--role-dir", str(role_dir), "--registry", str(reg.path), "--feeder", "F1", "--from", "2026-10-31T18:30:00Z",
           "--to", "2026-10-31T19:15:00+00:00", "--out", str(out), "--actor", "grid-ops",
           "--release", "quarter", "--gamma", "0"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 3, res.stderr  # an interval was refused (exit 3, as for bill)
    assert "2 intervals released, 1 refused" in res.stdout
    rows = list(csv.DictReader(out.open()))
    assert [r["status"] for r in rows] == ["ok", "refused: 3 < m=5", "ok"]
    assert int(rows[0]["analytics_sum_wh"]) == fleet.sums("F1", T0)[1] and rows[1]["analytics_sum_wh"] == ""
    assert rows[0]["epsilon"] == "1" and rows[0]["clamp_wh"] == "1000" and rows[0]["contributors"] == "6"
    assert out.stat().st_mode & 0o777 == 0o600  # released results are for whoever asked
    verify = subprocess.run([sys.executable, "-m", "meterveil.host.cli", "audit", "verify", "--db",
                             str(audit_db(fleet.db))], capture_output=True, text=True)
    assert verify.returncode == 0 and "4 entries" in verify.stdout, verify.stdout + verify.stderr
    with AuditLog(audit_db(fleet.db)) as audit:
        assert {e.actor for e in audit.entries()} == {"grid-ops"}


def test_dummy_meters_beside_one_household_are_refused(tmp_path, keypair):
    """Finding (issue 13): four dummy meters registered beside one real household passed k_min = 5
    and left its value with effective epsilon 6.5. With gamma = 0.2 of a feeder assumed colluding
    (dummies included), a cell needs k_min households beyond the assumed colluders."""
    pub, priv = keypair
    f = Fleet(tmp_path / "s.db", pub)
    for k in range(5):  # m0 is the real household, m1..m4 dummies the attacker controls
        f.add(f"m{k}", "F9", T0, 10, 1)
    role = _role_for(f.db, priv)  # default policy: gamma 0.2
    (cell,) = load(f.db, role, "F9", T0, T0 + IV)
    assert not cell.allowed and "fewer than k_min=5 honest" in cell.status
    role.close()
    f.enc.close()
