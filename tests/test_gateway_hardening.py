"""Attacks from the hardening run against the ingest pipeline: quarantine fill, loose value bounds,
status counters that pin a meter's status. Each test fails on the code before the fix."""

from __future__ import annotations

import math
import os
import struct

import numpy as np
import pytest
from test_gateway_ingest import PUB, T0, Clock, make_registry, reloaded, seal, topic

from meterveil.host.backoffice.dp import share_variance
from meterveil.host.common.noise_bound import SHARE_TAIL, fallback_share_variance, noise_share_bound
from meterveil.host.gateway.encryptor import make_encryptor
from meterveil.host.gateway.ingest import Gateway, IngestConfig, Message
from meterveil.host.store.base import open_store
from meterveil.host.store.quarantine import QuarantinePolicy
from meterveil.protocol import frame

# Small enough to fill in a test; the same rules as the defaults (3,000 / 3,000 / 200,000).
POLICY = QuarantinePolicy(per_meter=20, per_id=50, total=200)


@pytest.fixture
def gw(tmp_path):
    reg = make_registry(tmp_path)
    store = open_store(tmp_path / "gw.db", quarantine=POLICY)
    clock = Clock()
    g = Gateway(store, reg, make_encryptor("djn+packed", PUB, exp_bits=256), IngestConfig(), clock=clock)
    g.clock_ref = clock
    yield g
    store.close()


def junk(meter_id: str, counter: int, start: int, ilen: int = 900) -> bytes:
    """A well-formed reading frame (header passes every structural check) with a random body and tag."""
    head = struct.pack(frame.HEADER_FMT, frame.MAGIC, frame.VERSION, frame.KIND_READING,
                       meter_id.encode().ljust(16, b"\0"), counter, start, ilen, 1000, 1000, 10, 32)
    return head + os.urandom(frame.IV_LEN + 32 + frame.TAG_LEN)


def fill(gw, ids: list[str], per_id: int) -> None:
    start = int(gw.clock()) // 900 * 900 - 900
    for i in range(per_id):
        for mid in ids:
            assert gw.process(Message(topic(mid), junk(mid, i + 1, start - 900 * i))).status == "quarantined"
        gw.commit()


# -- quarantine -----------------------------------------------------------------------------------
def test_filled_quarantine_still_keeps_a_late_registered_and_a_fast_clock_meter(gw):
    """Attack run: junk for unknown ids filled all slots; then a genuine frame of a meter registered
    late and one from a meter whose clock ran 10 minutes ahead were counted quarantine_full, acked and
    lost, and a frame quarantined before the fill waited 34.5 minutes behind the junk."""
    reg, clock = gw.registry, gw.clock_ref
    start = int(clock.now) // 900 * 900 - 900
    late_key = bytes([42]) * 32
    early = seal(reg, "m0001", 1, start=start - 900, key=late_key, meter_id="m0042")  # before the fill
    assert gw.process(Message(topic("m0042"), early)).status == "quarantined"
    gw.commit()
    attackers = [f"x{i:03d}" for i in range(12)]
    fill(gw, attackers, 60)  # 720 junk frames for a pool of 200 and 50 per id
    held = gw.store.quarantine_counts()
    assert held == {"unknown_meter": POLICY.total}
    late = seal(reg, "m0001", 2, start=start, key=late_key, meter_id="m0042")
    ahead = seal(reg, "m0001", 7, start=int(clock.now) // 900 * 900 + 900)  # clock 10+ minutes ahead
    assert gw.process(Message(topic("m0042"), late)).status == "quarantined"
    assert gw.process(Message(topic("m0001"), ahead)).reason == "future"
    gw.commit()
    per_meter = gw.store.meter_counters()
    for mid in ("m0042", "m0001"):  # nothing of theirs was refused or evicted
        assert not {"quarantine_full", "quarantine_evicted"} & set(per_meter.get(mid, {})), per_meter[mid]
    # the junk paid: every frame that did not stay is counted against an attacker id
    lost = sum(per_meter[a].get("quarantine_full", 0) + per_meter[a].get("quarantine_evicted", 0) for a in attackers)
    kept = sum(gw.store.quarantine_counts().values())
    assert lost + kept == 12 * 60 + 3 and kept <= POLICY.total + 1
    assert gw.store.counters()["quarantine_full"] + gw.store.counters().get("quarantine_evicted", 0) == lost

    assert gw.release_quarantine() == {}  # m0042 unregistered, m0001's interval still to come: nothing tried
    reg.add("m0042", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10, key=late_key)
    gw.registry = reloaded(reg)
    clock.now += 1800
    # one retry round with a small limit settles both: the junk is never retried, so it delays nothing
    assert gw.release_quarantine(limit=5) == {"accepted": 3}
    got = {(r.meter_id, r.counter) for r in gw.store.iter_readings()}
    assert got == {("m0042", 1), ("m0042", 2), ("m0001", 7)}


def test_fair_share_per_sender_and_reserved_room_per_registered_meter(gw):
    reg, clock = gw.registry, gw.clock_ref
    fill(gw, ["x001", "x002", "x003", "x004"], 50)  # 4 x 50 = the whole pool
    counts = {m: c.get("quarantine_full", 0) for m, c in gw.store.meter_counters().items()}
    assert sum(gw.store.quarantine_counts().values()) == 200 and counts == {m: 0 for m in counts}
    fill(gw, ["x005"], 60)  # a fifth sender takes its fair share (200 / 5) from the largest holders
    held = _held_by_id(gw)
    assert held["x005"] == 40 and all(held[m] == 40 for m in ("x001", "x002", "x003", "x004")), held
    mc = gw.store.meter_counters()
    assert mc["x005"]["quarantine_full"] == 20  # over its share: refused, counted against itself
    assert sum(mc[m].get("quarantine_evicted", 0) for m in ("x001", "x002", "x003", "x004")) == 40
    # a compromised registered meter (valid MACs, clock far ahead) fills only its own reserved room
    base = int(clock.now) // 900 * 900 + 86400
    for c in range(1, 31):
        assert gw.process(Message(topic("m0002"), seal(reg, "m0002", c, start=base + c * 900))).reason == "future"
    gw.commit()
    assert gw.store.meter_counters()["m0002"]["quarantine_full"] == 10
    assert _held_by_id(gw)["m0002"] == POLICY.per_meter and sum(gw.store.quarantine_counts().values()) == 220
    ahead = seal(reg, "m0001", 5, start=int(clock.now) // 900 * 900 + 900)
    assert gw.process(Message(topic("m0001"), ahead)).status == "quarantined"
    gw.commit()
    assert "quarantine_full" not in gw.store.meter_counters().get("m0001", {})


def _held_by_id(gw) -> dict[str, int]:
    out: dict[str, int] = {}
    for q in gw.store.quarantined(100_000):
        out[q.meter_id] = out.get(q.meter_id, 0) + 1
    return out


def test_an_unknown_id_keeps_only_frames_that_could_be_genuine(gw):
    clock = gw.clock_ref
    now = int(clock.now) // 900 * 900
    cases = [(junk("x100", 1, now - 900, ilen=901), "bad_interval"),        # no such interval length
             (junk("x100", 2, now - 450), "bad_interval"),                     # misaligned
             (junk("x100", 3, now - gw.config.max_age_s - 900), "stale")]
    for payload, reason in cases:
        assert gw.process(Message(topic("x100"), payload)).reason == reason
    assert gw.process(Message(topic("x100"), junk("x100", 4, now - 900))).status == "quarantined"
    gw.commit()
    assert gw.store.quarantine_counts() == {"unknown_meter": 1}


# -- value bounds ------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps,clamp,m", [(1000, 1000, 10), (1000, 1000, 1), (500, 50, 5), (1000, 20, 100)])
def test_noise_share_bound_covers_the_1e12_quantile_of_the_share_distribution(eps, clamp, m):
    """From the exact pmf of the meter's share N_Z(0, v) (v the fallback variance, never below the
    provisioned one): an honest share exceeds B with probability <= 1e-12, and B is within 15% of
    the exact 1e-12 quantile."""
    b = noise_share_bound(eps, clamp, m)
    v = fallback_share_variance(eps, clamp, m)
    assert v >= share_variance(eps / 1000, clamp, m)
    sd = math.sqrt(v)
    ks = np.arange(0, int(b + 4 * sd))
    logw = -(ks.astype(float) ** 2) / (2 * v)
    norm = 2 * np.exp(logw).sum() - 1  # pmf normaliser over all integers (tails beyond are < 1e-30)
    tail = 2 * np.cumsum(np.exp(logw)[::-1])[::-1] / norm  # tail[k] = P(|S| >= k)
    exact = int(np.argmax(tail <= SHARE_TAIL)) - 1  # smallest B with P(|S| > B) <= 1e-12
    assert tail[b + 1] <= SHARE_TAIL
    assert exact <= b <= 1.15 * exact


def test_analytics_beyond_clamp_plus_the_largest_honest_share_is_rejected(gw):
    """Attack run: a compromised meter's analytics 65001 (clamp 1000, epsilon 1) was accepted, moving a
    feeder sum by ~64 kWh per interval."""
    reg = gw.registry
    b = noise_share_bound(1000, 1000, 10)
    cases = [(2 * (1000 + b), "out_of_range"), (1000 + b + 1, "out_of_range"), (-b - 1, "out_of_range"),
             (1000 + b, "accepted"), (-b, "accepted")]
    for c, (value, reason) in enumerate(cases, 1):
        assert gw.process(Message(topic("m0001"), seal(reg, "m0001", c, analytics=value))).reason == reason, value


def test_dp_mismatch_is_decided_before_the_bound_that_depends_on_it(gw):
    """A frame sealed under parameters being re-provisioned waits in quarantine; it is not rejected for
    good by a bound computed from the other parameters."""
    out = gw.process(Message(topic("m0001"), seal(gw.registry, "m0001", 1, clamp_wh=50_000, analytics=45_000)))
    assert (out.status, out.reason) == ("quarantined", "dp_mismatch")


# -- status ----------------------------------------------------------------------------------------
def status(gw, counter: int, sealed: int, mid: str = "m0002"):
    f = seal(gw.registry, mid, counter, start=sealed, interval_len=0, kind=frame.KIND_STATUS)
    return gw.process(Message(topic(mid, "status"), f))


def test_a_status_with_the_highest_counter_does_not_pin_the_meter_status(gw):
    """Attack run: a status frame with counter 2^32-1 made all later status frames status_superseded."""
    now = int(gw.clock())
    assert status(gw, 2**32 - 1, now - 60).reason == "status"
    gw.commit()
    gw.clock_ref.now += 900
    assert status(gw, 500, now + 840).reason == "status"  # sealed later: the meter's newest report
    gw.commit()
    assert gw.store.latest_status("m0002").counter == 500
    # the usual late arrival (the last will, sealed at connect) is still superseded
    assert status(gw, 499, now + 10).reason == "status_superseded"
    assert status(gw, 500, now + 840).reason == "duplicate"


def test_a_status_sealed_beyond_the_clock_skew_waits_and_cannot_pin_either(gw):
    now = int(gw.clock())
    out = status(gw, 2**32 - 1, now + 7 * 86400)
    assert (out.status, out.reason) == ("quarantined", "future")
    assert status(gw, 10, now).reason == "status"
    gw.commit()
    assert gw.store.latest_status("m0002").counter == 10
    assert gw.release_quarantine() == {}  # not due for a week: not even tried


def test_statuses_of_a_meter_whose_clock_is_not_set_order_by_counter(gw):
    now = int(gw.clock())
    unset = 946_684_800 + 120  # an RTC counting from 2000-01-01
    assert status(gw, 3, unset).reason == "status"
    assert status(gw, 4, unset - 100).reason == "status"  # rebooted: counter up, clock restarted
    assert status(gw, 2, unset + 50).reason == "status_superseded"
    assert status(gw, 5, now).reason == "status"  # clock set: newer than anything unset
    assert status(gw, 6, unset + 200).reason == "status_superseded"
    gw.commit()
    assert gw.store.latest_status("m0002").counter == 5
    assert T0 < now


def test_a_version_2_store_migrates_its_quarantine_into_the_pools(tmp_path):
    import sqlite3

    from meterveil.host.store import sqlite as store_sqlite

    db = tmp_path / "old.db"
    c = sqlite3.connect(db, isolation_level=None)
    for i, m in enumerate(store_sqlite.MIGRATIONS[:2]):
        m(c)
        c.execute(f"PRAGMA user_version={i + 1}")
    rows = [(bytes([i]), "x001" if i < 3 else "m0001", "t", b"p", "unknown_meter" if i < 3 else "future", 1)
            for i in range(5)]
    c.executemany("INSERT INTO quarantine(digest, meter_id, topic, payload, reason, received_at) VALUES (?,?,?,?,?,?)",
                  rows)
    c.execute("INSERT INTO meter_status VALUES ('m0001', 9, 1, '{}')")
    c.close()
    s = open_store(db, quarantine=QuarantinePolicy(per_id=3))
    assert s.schema_version() == store_sqlite.SCHEMA_VERSION and s.quarantine_meter_ids() == ["m0001", "x001"]
    held = dict(((m, p), n) for m, p, n in s.conn.execute("SELECT meter_id, pool, n FROM quarantine_held"))
    assert held == {("x001", "unverified"): 3, ("m0001", "verified"): 2}
    assert s.latest_status("m0001").sealed_at == 0
    s.close()
