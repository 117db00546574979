"""Bills from real Paillier ciphertexts in a real SQLite store equal an independent plaintext reference.

The reference below re-derives bands from local time with hand-written rules, sums Wh in a plain
loop and prices with Decimal ROUND_HALF_UP; it shares no code with tariff.py or billing.py.
"""

from __future__ import annotations

import csv
import dataclasses
import random
import subprocess
import sys
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from roles import audit_db, role_dir_for, session

from meterveil.host.audit import signing
from meterveil.host.audit.chain import AuditLog
from meterveil.host.backoffice.aggregate import hom_sum
from meterveil.host.backoffice.billing import (
    BillingError,
    bill_rows,
    compute_bill,
    expected_intervals,
    kwh_str,
    line_amount,
    round_half_up,
)
from meterveil.host.backoffice.tariff import load_tariff, parse_tariff
from meterveil.host.common import packing
from meterveil.host.common.registry import MeterRecord, MeterRegistry
from meterveil.host.decryption.policy import Policy, PolicyError
from meterveil.host.decryption.secret_key import generate_keypair
from meterveil.host.gateway.encryptor import make_encryptor
from meterveil.host.store.base import Batch, StoredReading, open_store

TARIFFS = Path(__file__).resolve().parent.parent / "tariffs"
IV = 900


# -- independent reference ----------------------------------------------------------------------
def ref_band_tou3(local: datetime) -> str:
    h = local.hour
    if h < 6:
        return "offpeak"
    if local.weekday() < 5 and (9 <= h < 12 or 18 <= h < 22):
        return "peak"
    return "shoulder"


REFERENCE = {
    # name: (band rule, {band: price}, fixed, slabs [(size_kwh or None, price)], bands are surcharges)
    "flat": (lambda local: "flat", {"flat": "31.87"}, 1250, None),
    "tou3": (ref_band_tou3, {"peak": "812.5", "shoulder": "650", "offpeak": "487.25"}, 12000, None),
    "slabs": (lambda local: "peak" if 18 <= local.hour < 22 else "normal", {"peak": "75.25", "normal": "0"}, 5000,
              [(100, "350"), (200, "625.5"), (None, "812.5")]),
}


def ref_round(x: Decimal) -> int:
    return int(x.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def reference_bills(readings, tz: str, tariff_name: str, year: int, month: int, meters=()) -> dict[str, dict]:
    rule, prices, fixed, slabs = REFERENCE[tariff_name]
    zone = ZoneInfo(tz)
    per: dict[str, dict[str, int]] = {m: {} for m in meters}
    present: dict[str, set[int]] = {m: set() for m in meters}
    last_end = None
    for meter_id, _feeder, t, billing_wh, _a in readings:
        local = datetime.fromtimestamp(t, zone)
        if (local.year, local.month) != (year, month):
            continue
        band = rule(local)
        per.setdefault(meter_id, {})
        per[meter_id][band] = per[meter_id].get(band, 0) + billing_wh
        present.setdefault(meter_id, set()).add(t)
        last_end = t + IV if last_end is None else max(last_end, t + IV)
    start = int(datetime(year, month, 1, tzinfo=zone).timestamp())
    nxt = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=zone)
    horizon = min(int(nxt.timestamp()), last_end if last_end is not None else start)
    expected = (horizon - start) // IV
    out = {}
    for meter_id, bands in per.items():
        lines = {b: ref_round(Decimal(wh) * Decimal(prices[b]) / 1000) for b, wh in bands.items()}
        total_wh = sum(bands.values())
        if slabs:
            left = Decimal(total_wh) / 1000
            for i, (size, price) in enumerate(slabs):
                take = left if size is None else min(left, Decimal(size))
                lines[f"slab{i}"] = ref_round(take * Decimal(price))
                left -= take
        out[meter_id] = {"band_wh": bands, "total_wh": total_wh, "total": sum(lines.values()) + fixed,
                         "missing": expected - len(present[meter_id]), "lines": lines}
    return out


# -- fixtures: real key, real store ---------------------------------------------------------------
@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(768)  # packing needs n > 2**513; size does not matter here


def synth(tz: str, year: int, month: int, seed: int, until_day: int | None = None):
    """Readings for 4 meters over the month (plus a day either side), with gaps; (meter, feeder, t, b, a)."""
    rng = random.Random(seed)
    zone = ZoneInfo(tz)
    t0 = int((datetime(year, month, 1, tzinfo=zone) - timedelta(days=1)).timestamp())
    end_local = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=zone) + timedelta(days=1)
    if until_day is not None:
        end_local = datetime(year, month, until_day, 13, 15, tzinfo=zone)
    t1 = int(end_local.timestamp())
    profile = {"h1": (0.97, 420), "h2": (0.8, 180), "h3": (0.99, 60), "h4": (0.3, 900)}
    out = []
    for t in range(t0 - t0 % IV, t1, IV):
        for meter, (p, peak) in profile.items():
            if rng.random() < p:
                out.append((meter, "F1", t, rng.randint(0, peak), rng.randint(-300, 300)))
    return out


def pool_encrypt(pub, size: int = 16):
    """Standard Paillier Enc(x) = (1 + x*n) * r^n mod n^2 with r^n drawn from a small pool of real
    obfuscators: valid ciphertexts phe decrypts, one multiplication each (month-long fixtures stay fast)."""
    nsq = pub.nsquare
    pool = [pow(random.randrange(1, pub.n), pub.n, nsq) for _ in range(size)]
    return lambda i, plain: (1 + plain * pub.n) % nsq * pool[i % size] % nsq


def fill_store(db: Path, pub, readings) -> None:
    enc = pool_encrypt(pub)
    counters: dict[str, int] = {}
    batch = Batch()
    for i, (meter_id, feeder, t, b, a) in enumerate(readings):
        counters[meter_id] = counters.get(meter_id, 0) + 1
        c = enc(i, packing.pack(b, a))
        batch.readings.append(StoredReading(meter_id, counters[meter_id], feeder, t, IV, 1000, 1000, 5, c))
    store = open_store(db)
    store.write_batch(batch)
    store.close()


def bills_via_role(db: Path, priv, tariff, period: str, meters=(), as_of=None):
    store = open_store(db)
    with session(db, priv, "test-clerk", Policy()) as role:
        totals = role.household_totals(store, tariff, period, meters, as_of=as_of)
        role.close()
    store.close()
    return {t.meter_id: compute_bill(tariff, t.meter_id, period, t.band_wh, t.readings, t.missing_intervals)
            for t in totals}


@pytest.mark.parametrize("tariff_name,seed", [("flat", 1), ("tou3", 2), ("slabs", 3)])
def test_bills_equal_plaintext_reference(tmp_path, keypair, tariff_name, seed):
    pub, priv = keypair
    tariff = load_tariff(TARIFFS / f"{tariff_name}.toml")
    readings = synth(tariff.timezone, 2026, 11, seed)
    fill_store(tmp_path / "s.db", pub, readings)
    bills = bills_via_role(tmp_path / "s.db", priv, tariff, "2026-11", meters=["h9"])
    ref = reference_bills(readings, tariff.timezone, tariff_name, 2026, 11, meters=["h9"])
    assert set(bills) == set(ref) == {"h1", "h2", "h3", "h4", "h9"}
    for meter_id, r in ref.items():
        bill = bills[meter_id]
        assert bill.total_minor == r["total"], meter_id
        assert bill.total_wh == r["total_wh"]
        assert bill.missing_intervals == r["missing"]
        for line in bill.lines:
            if line.kind in ("energy", "surcharge"):
                assert line.wh == r["band_wh"].get(line.band, 0)
                assert line.amount_minor == r["lines"].get(line.band, 0)
    assert bills["h9"].total_minor == tariff.fixed_charge_minor and bills["h9"].missing_intervals == 30 * 96
    assert bills["h3"].missing_intervals < bills["h4"].missing_intervals
    if tariff_name == "slabs":  # the fixture spans all three slabs and stays within the first
        assert ref["h4"]["total_wh"] > 300_000 and ref["h3"]["total_wh"] < 100_000


def test_interim_bill_covers_whole_days_to_the_cut_date(tmp_path, keypair):
    pub, priv = keypair
    tariff = load_tariff(TARIFFS / "tou3.toml")
    readings = synth(tariff.timezone, 2026, 11, 7, until_day=20)
    fill_store(tmp_path / "s.db", pub, readings)
    t_from, t_to = tariff.period_bounds("2026-11")
    cut = int(datetime(2026, 11, 15, tzinfo=ZoneInfo(tariff.timezone)).timestamp())
    mid_month = t_from + 20 * 86400  # billing on Nov 21: the interim window ends at the cut (Nov 15)
    bills = bills_via_role(tmp_path / "s.db", priv, tariff, "2026-11", as_of=mid_month)
    ref = reference_bills([r for r in readings if r[2] < cut], tariff.timezone, "tou3", 2026, 11)
    present = {m: len({t for mm, _, t, _, _ in readings if mm == m and t_from <= t < cut}) for m in ref}
    for meter_id, r in ref.items():
        assert bills[meter_id].total_minor == r["total"]
        assert bills[meter_id].missing_intervals == 14 * 96 - present[meter_id]
    # once the month is over every slot of it is due: the 10 silent days count as missing
    closed = bills_via_role(tmp_path / "s.db", priv, tariff, "2026-11", as_of=t_to)
    ref_all = reference_bills(readings, tariff.timezone, "tou3", 2026, 11)
    for meter_id in ref_all:
        n = len({t for mm, _, t, _, _ in readings if mm == meter_id and t_from <= t})
        assert closed[meter_id].missing_intervals == 30 * 96 - n
        assert closed[meter_id].total_minor == ref_all[meter_id]["total"]


def test_bill_audited_and_cli_matches(tmp_path, keypair):
    pub, priv = keypair
    reg = MeterRegistry.load(tmp_path / "registry" / "meters.json")
    for m in ("h1", "h2", "h3", "h4", "h9"):
        reg.put(MeterRecord(m, "F1", 1000, 1000, 5), save=False)
    reg.save()
    tariff = load_tariff(TARIFFS / "slabs.toml")
    readings = synth(tariff.timezone, 2026, 11, 11)
    db = tmp_path / "s.db"
    fill_store(db, pub, readings)
    out = tmp_path / "bills.csv"
    cmd = [sys.executable, "-m", "meterveil.host.cli", "bill", "--db", str(db), "--role-dir",
           str(role_dir_for(db, priv)), "--registry", str(reg.path), "--tariff", str(TARIFFS / "slabs.toml"), "--period", "2026-11",
           "--out", str(out), "--actor", "alice"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "5 bills for 2026-11" in res.stdout and "total kWh" in res.stdout
    ref = reference_bills(readings, tariff.timezone, "slabs", 2026, 11, meters=["h9"])
    rows = list(csv.DictReader(out.open()))
    totals = {r["meter_id"]: r for r in rows if r["band"] == "TOTAL"}
    assert {m: int(r["amount_minor"]) for m, r in totals.items()} == {m: r["total"] for m, r in ref.items()}
    assert {m: int(r["missing_intervals"]) for m, r in totals.items()} == {m: r["missing"] for m, r in ref.items()}
    for m, r in totals.items():
        assert Decimal(r["kwh"]) * 1000 == ref[m]["total_wh"] and len(r["kwh"].split(".")[1]) == 3
        lines = [x for x in rows if x["meter_id"] == m and x["band"] != "TOTAL"]
        assert sum(int(x["amount_minor"]) for x in lines) == int(r["amount_minor"])
    assert out.stat().st_mode & 0o777 == 0o600
    with AuditLog(audit_db(db)) as audit:
        everything = list(audit.entries())
        assert audit.verify(signing.load_verify(role_dir_for(db, priv))).ok
    # one "partition" entry for the tariff's band layout (the ledger can be rebuilt from it), then bills
    assert [e.action for e in everything].count("partition") == 1
    entries = [e for e in everything if e.action == "bill"]
    assert len(entries) == 5 and {e.actor for e in everything} == {"alice"}
    assert {e.query["meter_id"] for e in entries} == set(ref) and all(e.decision == "allow" for e in entries)
    assert all(len(e.result_hash) == 64 for e in entries)
    bad = subprocess.run(cmd[:-4] + ["--period", "2026-13", "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "YYYY-MM" in bad.stderr


def test_policy_refuses_too_many_bands(tmp_path, keypair):
    pub, priv = keypair
    hours = [f"{h:02d}-{h + 1:02d}" for h in range(24)]
    doc = {"name": "spy", "currency": "EUR", "minor_unit": "cent",
           "bands": [{"name": f"h{i}", "price_minor_per_kwh": "1",
                      "windows": [{"days": "all", "hours": hours[3 * i:3 * i + 3]}]} for i in range(8)]}
    tariff = parse_tariff(doc)
    fill_store(tmp_path / "s.db", pub, synth("UTC", 2026, 11, 5, until_day=2))
    with pytest.raises(PolicyError, match="at most 6"):
        bills_via_role(tmp_path / "s.db", priv, tariff, "2026-11")
    with AuditLog(audit_db(tmp_path / "s.db")) as audit:
        (entry,) = list(audit.entries())
    assert entry.decision == "refuse" and "max_bands=6" in entry.reason


# -- tariff maths: exact, property-based ----------------------------------------------------------
SHIPPED = {n: load_tariff(TARIFFS / f"{n}.toml") for n in ("flat", "tou3", "slabs")}


@given(st.integers(-10**9, 10**9), st.sampled_from([1, 2, 3, 7, 8, 1000, 2000, 999]))
def test_round_half_up_matches_decimal(n, d):
    assert round_half_up(Fraction(n, d)) == ref_round(Decimal(n) / Decimal(d))


@given(st.integers(-10**12, 10**12))
def test_kwh_str_exact(wh):
    s = kwh_str(wh)
    assert Decimal(s) * 1000 == wh and len(s.split(".")[1]) == 3


@given(st.sampled_from(sorted(SHIPPED)), st.lists(st.integers(0, 2_000_000), min_size=3, max_size=3),
       st.integers(0, 2), st.integers(1, 500_000))
def test_bill_lines_exact_and_monotone(name, whs, bump_band, bump):
    tariff = SHIPPED[name]
    band_wh = dict(zip(tariff.band_names, whs, strict=False))
    bill = compute_bill(tariff, "m", "2026-11", band_wh)
    lines = bill.lines[:-1]
    assert bill.total_minor == sum(x.amount_minor for x in lines)
    assert bill.total_wh == sum(band_wh.values())
    for x in lines:
        if x.rate is not None:
            assert abs(Fraction(x.amount_minor) - Fraction(x.wh) * Fraction(x.rate) / 1000) <= Fraction(1, 2)
    if tariff.slabs:
        assert sum(x.wh for x in lines if x.kind == "slab") == bill.total_wh
    more = dict(band_wh)
    b = tariff.band_names[bump_band % len(tariff.band_names)]
    more[b] = more.get(b, 0) + bump
    assert compute_bill(tariff, "m", "2026-11", more).total_minor >= bill.total_minor  # prices >= 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_splitting_readings_never_changes_the_bill(keypair, data):
    """Any partition of a period's readings into chunks, summed homomorphically per chunk and then
    combined, decrypts to the same band totals and so the same bill as one sum over all readings."""
    pub, priv = keypair
    tariff = SHIPPED[data.draw(st.sampled_from(sorted(SHIPPED)))]
    readings = data.draw(st.lists(st.tuples(st.integers(0, len(tariff.bands) - 1), st.integers(0, 5000),
                                            st.integers(-3000, 3000)), min_size=1, max_size=40))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(readings) - 1)), max_size=6)))
    enc = make_encryptor("djn+packed", pub)
    cts = [(band, enc.encrypt_reading(b, a)[0]) for band, b, a in readings]
    enc.close()
    chunks = [cts[i:j] for i, j in zip([0, *cuts], [*cuts, len(cts)], strict=True)]

    def totals(chunk_list) -> dict[str, int]:
        out = {}
        for bi, name in enumerate(tariff.band_names):
            partial = [hom_sum((c for band, c in ch if band == bi), pub.nsquare) for ch in chunk_list]
            out[name] = packing.billing_of(priv.raw_decrypt(hom_sum(partial, pub.nsquare)))
        return out

    whole, split = totals([cts]), totals(chunks)
    plain = {name: sum(b for band, b, _ in readings if band == bi) for bi, name in enumerate(tariff.band_names)}
    assert whole == split == plain
    assert compute_bill(tariff, "m", "p", whole) == compute_bill(tariff, "m", "p", split)


def test_billing_errors_and_rows():
    with pytest.raises(BillingError, match="not in tariff"):
        compute_bill(SHIPPED["flat"], "m", "p", {"peak": 1})
    with pytest.raises(BillingError, match="negative period total"):
        compute_bill(SHIPPED["slabs"], "m", "p", {"peak": -5})
    assert line_amount(1, Decimal("500")) == 1 and line_amount(1, Decimal("499.99")) == 0  # 0.5 rounds up
    assert line_amount(-1, Decimal("500")) == -1  # ties away from zero
    rows = bill_rows([compute_bill(SHIPPED["tou3"], "m1", "2026-11", {"peak": 1500, "offpeak": 250}, 7, 3)])
    assert [r["band"] for r in rows] == ["peak", "shoulder", "offpeak", "FIXED", "TOTAL"]
    assert rows[0]["kwh"] == "1.500" and rows[0]["amount_minor"] == 1219  # 1.5 * 812.5 = 1218.75
    assert rows[2]["amount_minor"] == 122  # 0.25 * 487.25 = 121.8125
    assert rows[-1]["amount_minor"] == 1219 + 0 + 122 + 12000 and rows[-1]["missing_intervals"] == 3


def test_expected_intervals_counts_aligned_slots():
    assert expected_intervals(0, 3600, 900) == 4
    assert expected_intervals(100, 3600, 900) == 3  # slot at 0 starts before the period
    assert expected_intervals(0, 3601, 900) == 5  # a slot starting at 3600 is expected once it began
    assert expected_intervals(1800, 1800, 900) == 0 and expected_intervals(1800, 0, 900) == 0
    assert expected_intervals(0, 86400, 1800) == 48
    with pytest.raises(BillingError):
        expected_intervals(0, 10, 0)


def _two_band(split_hour: int):
    return parse_tariff({"name": f"split{split_hour}", "currency": "INR", "minor_unit": "paise",
                         "timezone": "Asia/Kolkata", "bands": [
                             {"name": "a", "price_minor_per_kwh": "1", "windows": [{"days": "all", "hours": f"00-{split_hour:02d}"}]},
                             {"name": "b", "price_minor_per_kwh": "1", "windows": [{"days": "all", "hours": f"{split_hour:02d}-24"}]}]})


def test_rebilling_with_other_bands_is_limited_by_the_common_refinement(tmp_path, keypair):
    """Each tariff alone has <= 6 bands, but differences between re-bills would expose finer hours."""
    pub, priv = keypair
    db = tmp_path / "s.db"
    fill_store(db, pub, synth("Asia/Kolkata", 2026, 11, 9, until_day=5))
    store = open_store(db)
    with session(db, priv, "clerk", Policy()) as role:
        audit = role.audit

        def run(tariff):
            return {t.meter_id: t for t in role.household_totals(store, tariff, "2026-11")}

        tou = run(load_tariff(TARIFFS / "tou3.toml"))
        berlin_flat = load_tariff(TARIFFS / "flat.toml")
        assert run(berlin_flat) == {}  # same month in another zone: a shifted window, refused
        assert role.refusals and all("shifted window" in r for _, r in role.refusals)
        flat = run(dataclasses.replace(berlin_flat, timezone="Asia/Kolkata"))
        assert set(flat) == set(tou) and role.refusals == []  # coarser: the total adds nothing
        assert sum(flat["h1"].band_wh.values()) == sum(tou["h1"].band_wh.values())
        assert set(run(_two_band(12))) == set(tou)  # tou3 x split at noon: 5 cells <= 6
        assert run(_two_band(12)) and role.refusals == []  # same partition again: nothing new
        assert run(_two_band(20)) == {}  # one more split: 7 cells > 6
        assert {m for m, _ in role.refusals} == set(tou)
        assert all("7 cells > max_bands=6" in r for _, r in role.refusals)
        refusals = [e for e in audit.entries() if e.decision == "refuse"]
        assert {e.query["meter_id"] for e in refusals} == set(tou) and audit.verify().ok
        assert set(run(load_tariff(TARIFFS / "tou3.toml"))) == set(tou)  # the original bill still reruns
        role.close()
    store.close()


def _spy_tariff(hours: str, days: str = "tue") -> dict:
    """A two-band tariff whose 'spy' band is `hours` on `days` only (any tariff the utility writes)."""
    rest = [d for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun") if d not in days.split(",")]
    h0, h1 = (int(x) for x in hours.split("-"))
    windows = [{"days": rest, "hours": "00-24"}]
    windows += [{"days": days.split(","), "hours": h} for h in (f"00-{h0:02d}", f"{h1:02d}-24") if h[:2] != h[3:]]
    return {"name": "spy", "currency": "INR", "minor_unit": "paise", "timezone": "Asia/Kolkata",
            "bands": [{"name": "spy", "price_minor_per_kwh": "1", "windows": [{"days": days.split(","), "hours": hours}]},
                      {"name": "rest", "price_minor_per_kwh": "1", "windows": windows}]}


def test_single_reading_attack_with_a_one_hour_band_is_refused(tmp_path, keypair):
    """Finding (issue 13): a 1-hour band on one weekday, bill the month, ingest one more day, bill
    again: the band's difference was every household's exact reading for that hour. Now a band that
    falls on fewer than 7 local days of a bill window (or of a difference) is refused outright."""
    pub, priv = keypair
    db = tmp_path / "s.db"
    tariff = parse_tariff(_spy_tariff("19-20", "tue"))
    t_from, t_to = tariff.period_bounds("2026-11")
    days = 20
    fill_store(db, pub, [(f"h{k}", "F1", t_from + i * IV, 100 + k + i % 7, 0) for k in range(3) for i in range(days * 96)])
    store = open_store(db)
    decrypted = []
    with session(db, priv, "clerk", Policy()) as role:
        for as_of in (t_from + days * 86400, t_from + (days + 1) * 86400, t_to):
            decrypted += role.household_totals(store, tariff, "2026-11", as_of=as_of)
            assert all("falls on" in r for _, r in role.refusals), role.refusals
        assert decrypted == []
    store.close()


def test_nightly_interim_bills_with_a_six_band_tariff_cannot_difference_days(tmp_path, keypair):
    """Finding (issue 13): nightly interim bills of a legal 6-band tariff (4-hour blocks), differenced,
    gave one household's exact energy per band per day. Now interim bills end at fixed cut dates: a
    month of nightly requests decrypts at most one interim window and the closing one, and their
    difference covers more than a week."""
    pub, priv = keypair
    db = tmp_path / "s.db"
    six = {"name": "six", "currency": "INR", "minor_unit": "paise", "timezone": "Asia/Kolkata",
           "bands": [{"name": f"b{h}", "price_minor_per_kwh": "1", "windows": [{"days": "all", "hours": f"{h:02d}-{h + 4:02d}"}]}
                     for h in range(0, 24, 4)]}
    tariff = parse_tariff(six)
    t_from, t_to = tariff.period_bounds("2026-11")
    fill_store(db, pub, [("h1", "F1", t_from + i * IV, 50 + (i * 37) % 400, 0) for i in range(30 * 96)])
    store = open_store(db)
    windows = {}
    with session(db, priv, "clerk", Policy()) as role:
        for night in range(1, 31):
            for t in role.household_totals(store, tariff, "2026-11", as_of=t_from + night * 86400 + 3600):
                windows[t.expected_intervals] = t.band_wh
        for t in role.household_totals(store, tariff, "2026-11", as_of=t_to):
            windows[t.expected_intervals] = t.band_wh
    store.close()
    ends = sorted(windows)
    assert ends == [14 * 96, 30 * 96]  # the cut on the 15th and the closing bill, nothing nightly
    assert all(b - a >= 7 * 96 for a, b in zip([0, *ends], ends, strict=False))


def test_closing_bill_a_few_readings_after_an_interim_bill_is_refused(tmp_path, keypair):
    """Finding (issue 13): the closing bill was allowed after any number of new readings (5 in the
    project's own test), exposing those readings exactly. Now every band of the difference must hold
    none or at least min_band_readings readings."""
    pub, priv = keypair
    db = tmp_path / "s.db"
    tariff = load_tariff(TARIFFS / "tou3.toml")
    t_from, t_to = tariff.period_bounds("2026-11")
    fill_store(db, pub, [("h1", "F1", t_from + i * IV, 10, 0) for i in range(14 * 96)])  # days 1-14
    store = open_store(db)
    with session(db, priv, "clerk", Policy()) as role:
        assert role.household_totals(store, tariff, "2026-11", as_of=t_from + 10 * 86400) == []
        assert "no interim bill before the first cut date" in role.refusals[0][1]
        (interim,) = role.household_totals(store, tariff, "2026-11", as_of=t_from + 16 * 86400)
        assert interim.readings == 14 * 96
        enc = pool_encrypt(pub)
        store.write_batch(Batch(readings=[StoredReading("h1", 14 * 96 + 1 + i, "F1", t_from + (14 * 96 + i) * IV,
                                                        IV, 1000, 1000, 5, enc(i, packing.pack(10, 0)))
                                          for i in range(5)]))  # only 5 more readings before the end
        assert role.household_totals(store, tariff, "2026-11", as_of=t_to) == []
        assert "differs from the bill to 2026-11-14 by 5 readings" in role.refusals[0][1]
        # the same interim window again, over the same readings, is the same value: allowed
        assert role.household_totals(store, tariff, "2026-11", as_of=t_from + 16 * 86400) == [interim]
    store.close()


def test_a_household_with_a_handful_of_readings_is_not_billed_exactly(tmp_path, keypair):
    pub, priv = keypair
    db = tmp_path / "s.db"
    tariff = load_tariff(TARIFFS / "flat.toml")
    t_from, t_to = tariff.period_bounds("2026-11")
    fill_store(db, pub, [("h1", "F1", t_from + 86400, 1234, 0)])
    store = open_store(db)
    with session(db, priv, "clerk", Policy()) as role:
        assert role.household_totals(store, tariff, "2026-11", as_of=t_to) == []
        assert "holds 1 readings" in role.refusals[0][1]
    store.close()


def test_hourly_readings_that_straddle_a_band_are_refused_not_misbilled(tmp_path, keypair):
    """UTC-aligned hours under an IST (UTC+5:30) tariff cross local band hours: never billed in one band."""
    pub, priv = keypair
    db = tmp_path / "s.db"
    t0 = 1793471400 + 1800  # 2026-11-01 00:30 IST = 19:00 UTC: aligned to 3600 s
    enc = pool_encrypt(pub)
    store = open_store(db)
    store.write_batch(Batch(readings=[StoredReading("h9", i + 1, "F1", t0 + i * 3600, 3600, 1000, 1000, 5,
                                                    enc(i, packing.pack(50, 0))) for i in range(48)]))
    with session(db, priv, "clerk", Policy()) as role:
        assert role.household_totals(store, load_tariff(TARIFFS / "tou3.toml"), "2026-11") == []
        assert "8 readings straddle a tariff band" in role.refusals[0][1]  # the hours over a band change
        # a flat tariff has no bands to cross; only the last reading of the month would cross the period
        (flat,) = role.household_totals(store, parse_tariff({
            "name": "flat-ist", "currency": "INR", "minor_unit": "paise", "timezone": "Asia/Kolkata",
            "bands": [{"name": "flat", "price_minor_per_kwh": "1", "windows": [{"days": "all", "hours": "00-24"}]}]}),
            "2026-11")
        assert flat.band_wh == {"flat": 48 * 50}
        role.close()
    store.close()


def test_bill_ledger_is_the_signed_audit_log(tmp_path, keypair):
    """The ledger is folded from the signed audit log: a later session still refuses a re-bill over a
    few new readings, and deleting the bill's entry (someone with write access to the role's database)
    makes the role refuse to decrypt anything instead of forgetting the bill."""
    import sqlite3

    pub, priv = keypair
    db = tmp_path / "s.db"
    tariff = load_tariff(TARIFFS / "tou3.toml")
    t_from, t_to = tariff.period_bounds("2026-11")
    fill_store(db, pub, [("h1", "F1", t_from + i * IV, 10, 0) for i in range(200)])
    store = open_store(db)
    with session(db, priv, "clerk", Policy()) as role:
        assert len(role.household_totals(store, tariff, "2026-11", as_of=t_to)) == 1
    store.write_batch(Batch(readings=[StoredReading("h1", 999, "F1", t_to - IV, IV, 1000, 1000, 5,
                                                    pool_encrypt(pub)(0, packing.pack(7, 0)))]))
    with session(db, priv, "clerk", Policy()) as role:
        assert role.household_totals(store, tariff, "2026-11", as_of=t_to + 60) == []
        assert "this window was billed over other readings" in role.refusals[0][1]
    con = sqlite3.connect(audit_db(db))
    con.executescript("DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE action = 'bill' "
                      "AND decision = 'allow'; UPDATE audit_head SET seq = (SELECT MAX(seq) FROM audit_log);")
    con.close()
    with pytest.raises(PolicyError, match="refusing to decrypt"):
        with session(db, priv, "clerk", Policy()) as role:
            role.household_totals(store, tariff, "2026-11", as_of=t_to + 60)
    store.close()


def test_changing_the_cut_days_cannot_make_two_windows_a_few_days_apart(tmp_path, keypair):
    """Review finding: the week rule followed the current cut days only. Billed to the 15th under one
    policy, then with cut days (10, 20) the next interim window would end on the 20th: the difference
    would be 5 days of exact energy. Refused; the closing bill (15 days later) is still allowed."""
    pub, priv = keypair
    db = tmp_path / "s.db"
    tariff = load_tariff(TARIFFS / "flat.toml")
    t_from, t_to = tariff.period_bounds("2026-11")
    fill_store(db, pub, [("h1", "F1", t_from + i * IV, 10, 0) for i in range(30 * 96)])
    store = open_store(db)
    with session(db, priv, "clerk", Policy(cut_days=(15,))) as role:
        (first,) = role.household_totals(store, tariff, "2026-11", as_of=t_from + 16 * 86400)
        assert first.readings == 14 * 96
    with session(db, priv, "clerk", Policy(cut_days=(10, 20))) as role:
        assert role.household_totals(store, tariff, "2026-11", as_of=t_from + 21 * 86400) == []
        assert "5 days from an earlier bill window" in role.refusals[0][1]
        (closing,) = role.household_totals(store, tariff, "2026-11", as_of=t_to)
        assert closing.readings == 30 * 96
    store.close()
