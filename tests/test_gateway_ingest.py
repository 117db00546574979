"""Ingest: every rejection has its reason counted, good frames get through; pipeline and real mosquitto."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import pytest
from brokerutil import wait_until
from phe import paillier

from meterveil.host.cli import main as cli
from meterveil.host.common import packing
from meterveil.host.gateway.encryptor import make_encryptor
from meterveil.host.gateway.ingest import QUARANTINE_REASONS, Gateway, IngestConfig, Message, stats_summary
from meterveil.host.gateway.meter_keys import KeyedRegistry
from meterveil.host.gateway.mqtt import MqttConfig, MqttIngest
from meterveil.host.store.base import open_store
from meterveil.host.store.postgres import is_postgres_url
from meterveil.protocol import frame

PUB, PRIV = paillier.generate_paillier_keypair(n_length=1024)
T0 = 1_763_856_000  # aligned to 900 s


@dataclass
class Clock:
    now: float = T0 + 100 * 900

    def __call__(self) -> float:
        return self.now


def load_registry(root) -> KeyedRegistry:
    """The gateway's view under `root`: keys/meter-keys.json plus registry/meters.json."""
    return KeyedRegistry.load(root / "keys", root / "registry" / "meters.json")


def reloaded(reg: KeyedRegistry) -> KeyedRegistry:
    """The same two files loaded afresh (another process, or a restarted gateway)."""
    return KeyedRegistry.load(reg.keys.path.parent, reg.registry.path)


def make_registry(root, ids=("m0001", "m0002")) -> KeyedRegistry:
    reg = load_registry(root)
    for i, mid in enumerate(ids):
        reg.add(mid, feeder=f"F{i % 2}", epsilon_milli=1000, clamp_wh=1000, m=10, key=bytes([i + 1]) * 32)
    return reg


def seal(reg: KeyedRegistry, mid: str, counter: int, start: int | None = None, *, key: bytes | None = None,
         billing: int = 250, analytics: int = 180, kind: int = frame.KIND_READING, **over) -> bytes:
    rec = reg.get(mid)
    header = {"kind": kind, "meter_id": mid, "counter": counter,
              "interval_start": T0 + counter * 900 if start is None else start, "interval_len": 900,
              "epsilon_milli": rec.epsilon_milli if rec else 1000, "clamp_wh": rec.clamp_wh if rec else 1000,
              "m": rec.m if rec else 10}
    fields = {"billing_wh": billing, "analytics_wh": analytics, "flags": 0, "samples": 900, "clipped": 0,
              "missing_s": 0}
    if kind == frame.KIND_STATUS:
        fields = {"uptime_s": 10, "free_heap": 5000, "outbox_depth": 0, "outbox_overflow": 0, "reconnects": 0,
                  "publish_retries": 0, "dp_spend_milli": 0, "readings_today": 3, "boot_count": 1,
                  "fw_version": (0, 1, 0)}
    for k, v in over.items():
        (header if k in header else fields)[k] = v
    master = key if key is not None else rec.key
    return frame.seal(frame.derive_keys(master), header, fields)


def topic(mid: str, leaf: str = "reading") -> str:
    return frame.topic(mid, leaf)


@pytest.fixture(params=["sqlite", "postgres"])
def gw(tmp_path, request):
    """The pipeline on each store backend: the quarantine and counter semantics must be the same."""
    reg = make_registry(tmp_path)
    store = open_store(tmp_path / "gw.db" if request.param == "sqlite" else request.getfixturevalue("pg_url"))
    clock = Clock()
    g = Gateway(store, reg, make_encryptor("djn+packed", PUB, exp_bits=256),
                IngestConfig(duplicate_window_s=600), clock=clock)
    g.clock_ref = clock
    yield g
    store.close()


def test_good_reading_is_stored_encrypted_and_decrypts(gw):
    reg = gw.registry
    out = gw.process(Message(topic("m0001"), seal(reg, "m0001", 5, billing=321, analytics=-40)))
    assert (out.status, out.counter) == ("accepted", 5)
    gw.commit()
    (row,) = gw.store.readings_for_meter("m0001", 0, 2**32)
    assert (row.feeder, row.interval_start, row.m) == ("F0", T0 + 5 * 900, 10)
    assert packing.unpack_sum(PRIV.raw_decrypt(row.ciphertext), 1) == (321, -40)
    assert gw.store.counters() == {"accepted": 1}


@pytest.mark.parametrize("case,reason", [
    ("oversize", "oversize"), ("truncated", "truncated"), ("bad_topic", "bad_topic"),
    ("forged_mac", "bad_tag"), ("wrong_key", "bad_tag"), ("other_topic", "wrong_meter"),
    ("unknown", "unknown_meter"), ("status_on_reading", "wrong_kind"), ("junk", "bad_magic"),
    ("dp", "dp_mismatch"), ("future", "future"), ("stale", "stale"), ("unaligned", "bad_interval"),
    ("too_much", "out_of_range"), ("noise", "out_of_range"), ("unsynced", "clock_unsynced"),
])
def test_each_bad_frame_is_rejected_with_its_reason(gw, case, reason, tmp_path):
    reg = gw.registry
    good = seal(reg, "m0001", 7)
    forged = bytearray(good)
    forged[-1] ^= 1
    now = gw.clock_ref.now
    msgs = {
        "oversize": Message(topic("m0001"), good + bytes(2000)),
        "truncated": Message(topic("m0001"), good[:50]),
        "bad_topic": Message("meterveil/v1/m0001/other", good),
        "forged_mac": Message(topic("m0001"), bytes(forged)),
        "wrong_key": Message(topic("m0001"), seal(reg, "m0001", 7, key=os.urandom(32))),
        "other_topic": Message(topic("m0002"), good),
        "unknown": Message(topic("ghost"), seal(reg, "ghost", 1, key=os.urandom(32))),
        "status_on_reading": Message(topic("m0001"), seal(reg, "m0001", 8, kind=frame.KIND_STATUS)),
        "junk": Message(topic("m0001"), b"XX" + bytes(100)),
        "dp": Message(topic("m0001"), seal(reg, "m0001", 7, m=3)),
        "future": Message(topic("m0001"), seal(reg, "m0001", 7, start=int(now) + 3600)),
        "stale": Message(topic("m0001"), seal(reg, "m0001", 7, start=int(now) - 90 * 86400)),
        "unaligned": Message(topic("m0001"), seal(reg, "m0001", 7, start=T0 + 7 * 900 + 60)),
        "too_much": Message(topic("m0001"), seal(reg, "m0001", 7, billing=100_000)),
        "noise": Message(topic("m0001"), seal(reg, "m0001", 7, analytics=-(10**6))),
        "unsynced": Message(topic("m0001"), seal(reg, "m0001", 7, flags=frame.FLAG_CLOCK_UNSYNCED)),
    }
    out = gw.process(msgs[case])
    assert (out.status, out.reason) == ("quarantined" if reason in QUARANTINE_REASONS else "rejected", reason)
    assert gw.process(Message(topic("m0001"), good)).status == "accepted"
    gw.commit()
    counters = gw.store.counters()
    assert counters == {reason: 1, "accepted": 1}
    if case not in ("bad_topic", "unknown"):
        assert gw.store.meter_counters()["m0001" if case != "other_topic" else "m0002"][reason] == 1


def test_duplicate_replay_and_counter_reuse(gw):
    reg, clock = gw.registry, gw.clock_ref
    f5 = seal(reg, "m0001", 5)
    assert gw.process(Message(topic("m0001"), f5)).status == "accepted"
    assert gw.process(Message(topic("m0001"), f5)).status == "duplicate"  # same batch
    gw.commit()
    assert gw.process(Message(topic("m0001"), f5)).status == "duplicate"  # stored, within the window
    # a different frame under a stored counter: never accepted
    assert gw.process(Message(topic("m0001"), seal(reg, "m0001", 5, billing=999))).reason == "counter_reuse"
    clock.now += 3600  # past the duplicate window: the same bytes are a replay...
    assert gw.process(Message(topic("m0001"), f5)).reason == "replay"
    # ...unless the broker marks it as its own redelivery
    assert gw.process(Message(topic("m0001"), f5, dup=True)).status == "duplicate"
    # a lower, never-seen counter (late outbox delivery) is accepted: gaps are normal
    assert gw.process(Message(topic("m0001"), seal(reg, "m0001", 9))).status == "accepted"
    assert gw.process(Message(topic("m0001"), seal(reg, "m0001", 2))).status == "accepted"
    gw.commit()
    assert gw.store.counters() == {"accepted": 3, "duplicate": 3, "counter_reuse": 1, "replay": 1}
    assert [r.counter for r in gw.store.readings_for_meter("m0001", 0, 2**32)] == [2, 5, 9]


def test_a_second_reading_for_a_covered_interval_is_rejected(gw, tmp_path):
    """A cloned or faulty meter: another counter for an interval already stored (or pending in the
    batch), or a longer interval over it, would be billed twice."""
    reg = gw.registry
    start = T0 + 10 * 900
    assert gw.process(Message(topic("m0001"), seal(reg, "m0001", 10, start))).status == "accepted"
    assert gw.process(Message(topic("m0001"), seal(reg, "m0001", 11, start))).reason == "interval_overlap"  # pending
    gw.commit()
    assert gw.process(Message(topic("m0001"), seal(reg, "m0001", 12, start))).reason == "interval_overlap"  # stored
    hour = T0 + 8 * 900  # [T0+8*900, T0+12*900) covers the stored interval
    assert gw.process(Message(topic("m0001"), seal(reg, "m0001", 13, hour, interval_len=3600))).reason == \
        "interval_overlap"
    # the neighbouring intervals, and the same interval on another meter, are fine
    assert gw.process(Message(topic("m0001"), seal(reg, "m0001", 14, start + 900))).status == "accepted"
    assert gw.process(Message(topic("m0001"), seal(reg, "m0001", 15, start - 900))).status == "accepted"
    assert gw.process(Message(topic("m0002"), seal(reg, "m0002", 10, start))).status == "accepted"
    gw.commit()
    assert gw.store.counters()["interval_overlap"] == 3
    assert [r.counter for r in gw.store.readings_for_meter("m0001", 0, 2**32)] == [15, 10, 14]
    if not is_postgres_url(getattr(gw.store, "url", None)):
        assert os.stat(tmp_path / "gw.db").st_mode & 0o777 == 0o600


def test_frames_that_may_pass_later_are_quarantined_then_released(gw):
    """Unknown meter (registered later), gateway clock behind, DP parameters being re-provisioned:
    counted as rejections when they arrive, kept sealed, stored once they pass, never lost."""
    reg, clock = gw.registry, gw.clock_ref
    newcomer = seal(reg, "m0001", 1, key=bytes([9]) * 32, meter_id="m0009")  # not registered yet
    ahead = seal(reg, "m0001", 2, start=int(clock.now) + 3600)                # gateway clock behind
    for f, t in ((newcomer, topic("m0009")), (ahead, topic("m0001"))):
        assert gw.process(Message(t, f)).status == "quarantined"
    gw.commit()
    assert gw.store.quarantine_counts() == {"future": 1, "unknown_meter": 1}
    assert gw.release_quarantine() == {}  # neither can pass yet (unregistered, interval to come): not even tried
    assert gw.store.counters() == {"future": 1, "unknown_meter": 1}
    reg.add("m0009", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10, key=bytes([9]) * 32)
    gw.registry = reloaded(reg)
    clock.now += 2 * 3600
    assert gw.release_quarantine() == {"accepted": 2}
    assert gw.store.quarantine_counts() == {}
    assert {(r.meter_id, r.counter) for r in gw.store.iter_readings()} == {("m0009", 1), ("m0001", 2)}
    assert gw.release_quarantine() == {}
    summary = stats_summary(gw.store)
    assert summary["accepted"] == 2 and summary["quarantined"] == {}
    assert gw.store.counters()["quarantine_released"] == 2
    # a frame that never passes ends as stale after max_age_s and leaves the quarantine
    lost = seal(reg, "m0001", 3, key=bytes([8]) * 32, meter_id="m0008")
    assert gw.process(Message(topic("m0008"), lost)).status == "quarantined"
    gw.commit()
    reg.add("m0008", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10, key=bytes([8]) * 32)
    gw.registry = reloaded(reg)
    clock.now += gw.config.max_age_s + 86400
    assert gw.release_quarantine() == {"stale": 1} and gw.store.quarantine_counts() == {}


def test_quarantine_retries_what_can_pass_keeps_on_faults_and_expires(gw, monkeypatch):
    """Frames of a meter that is never registered are never retried, so they cannot starve the others;
    they expire after max_age_s, counted; an internal fault during a retry keeps the frame."""
    reg, clock = gw.registry, gw.clock_ref
    for c in range(1, 6):  # an unregistered meter, first in line
        gw.process(Message(topic("m0006"), seal(reg, "m0001", c, key=bytes([6]) * 32, meter_id="m0006")))
    late = seal(reg, "m0001", 1, key=bytes([5]) * 32, meter_id="m0005")
    gw.process(Message(topic("m0005"), late))
    gw.commit()
    reg.add("m0005", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10, key=bytes([5]) * 32)
    gw.registry = reloaded(reg)
    real = gw.encryptor.encrypt_reading
    calls = []

    def flaky(b, a):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("transient")
        return real(b, a)

    monkeypatch.setattr(gw.encryptor, "encrypt_reading", flaky)
    passes = [gw.release_quarantine(limit=3) for _ in range(3)]
    # m0005 only (m0006 is never tried): a fault keeps it, the next round stores it
    assert passes == [{"kept": 1}, {"accepted": 1}, {}], passes
    assert [r.meter_id for r in gw.store.iter_readings()] == ["m0005"]
    clock.now += gw.config.max_age_s + 1
    assert gw.release_quarantine(limit=10) == {"quarantine_expired": 5}
    assert gw.store.quarantine_counts() == {} and gw.store.counters()["quarantine_expired"] == 5
    assert gw.store.meter_counters()["m0006"]["quarantine_expired"] == 5


def test_quarantine_is_bounded_per_meter(gw, monkeypatch):
    from meterveil.host.store.quarantine import QuarantinePolicy

    monkeypatch.setattr(gw.store, "quarantine_policy", QuarantinePolicy(per_id=2))
    for c in range(1, 4):
        gw.process(Message(topic("m0007"), seal(gw.registry, "m0001", c, key=bytes([7]) * 32, meter_id="m0007")))
    gw.commit()
    assert gw.store.quarantine_counts() == {"unknown_meter": 2}
    assert gw.store.counters()["quarantine_full"] == 1


def test_status_frames_keep_latest_and_refuse_older(gw):
    reg = gw.registry
    assert gw.process(Message(topic("m0002", "status"), seal(reg, "m0002", 20, kind=frame.KIND_STATUS))).status == "status"
    gw.commit()
    older = gw.process(Message(topic("m0002", "status"), seal(reg, "m0002", 19, kind=frame.KIND_STATUS)))
    assert (older.status, older.reason) == ("status", "status_superseded")
    again = gw.process(Message(topic("m0002", "status"), seal(reg, "m0002", 20, kind=frame.KIND_STATUS)))
    assert (again.status, again.reason) == ("duplicate", "duplicate")
    assert gw.process(Message(topic("m0002"), seal(reg, "m0002", 18, kind=frame.KIND_STATUS))).reason == "wrong_kind"
    gw.commit()
    st = gw.store.latest_status("m0002")
    assert st.counter == 20 and st.status["readings_today"] == 3


def test_rotated_key_still_opens_old_frames_and_new_meters_are_picked_up(gw, tmp_path):
    reg = gw.registry
    old_frame = seal(reg, "m0001", 3)
    writer = load_registry(tmp_path)  # provisioning, another process
    writer.rotate("m0001")
    writer.add("m0003", feeder="F9", epsilon_milli=1000, clamp_wh=1000, m=10)
    time.sleep(0.01)
    gw._registry_checked = 0.0
    assert gw.process(Message(topic("m0003"), seal(writer, "m0003", 1))).status == "accepted"
    assert gw.process(Message(topic("m0001"), old_frame)).status == "accepted"
    assert gw.process(Message(topic("m0001"), seal(writer, "m0001", 4))).status == "accepted"


def test_key_rotated_on_disk_is_picked_up_on_bad_tag(gw, tmp_path):
    writer = load_registry(tmp_path)
    writer.rotate("m0002")
    gw._registry_checked = 0.0
    assert gw.process(Message(topic("m0002"), seal(writer, "m0002", 1))).status == "accepted"
    # a forged frame still fails after the reload (and the reload is rate-limited)
    assert gw.process(Message(topic("m0002"), seal(writer, "m0002", 2, key=os.urandom(32)))).reason == "bad_tag"


def test_rejections_are_logged_once_per_meter_and_reason(gw, caplog):
    caplog.set_level(logging.WARNING, logger="meterveil.gateway")
    for _ in range(20):
        gw.process(Message(topic("m0001"), b"\x00" * 10))
    lines = [r for r in caplog.records if "reason=truncated" in r.getMessage()]
    assert len(lines) == 1 and "meter=m0001" in lines[0].getMessage()
    gw.commit()
    assert gw.store.counters()["truncated"] == 20


def test_logs_carry_no_reading_values(gw, caplog):
    caplog.set_level(logging.DEBUG)
    assert gw.process(Message(topic("m0001"), seal(gw.registry, "m0001", 1, billing=98765))).reason == "out_of_range"
    assert gw.process(Message(topic("m0001"), seal(gw.registry, "m0001", 2, analytics=-876543))).reason == "out_of_range"
    assert gw.process(Message(topic("m0001"), seal(gw.registry, "m0001", 3, billing=4321))).status == "accepted"
    assert "meter=m0001" in caplog.text
    assert not any(v in caplog.text for v in ("98765", "876543", "4321"))


def test_internal_errors_are_counted_not_raised(gw, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(gw.encryptor, "encrypt_reading", boom)
    out = gw.process(Message(topic("m0001"), seal(gw.registry, "m0001", 1)))
    assert out.reason == "internal_error"


def test_gateway_refuses_an_unpacked_strategy(tmp_path):
    with pytest.raises(ValueError):
        Gateway(open_store(tmp_path / "x.db"), make_registry(tmp_path), make_encryptor("naive", PUB))


# --- against a real mosquitto ---------------------------------------------------------------------

def _publish(url_port: int, items: list[tuple[str, bytes]]) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-pub", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", url_port)
    c.loop_start()
    try:
        infos = [c.publish(t, p, qos=1) for t, p in items]
        for i in infos:
            i.wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def test_mosquitto_bad_frames_rejected_and_gateway_keeps_accepting(tmp_path, mosquitto, capsys):
    reg = make_registry(tmp_path)
    store = open_store(tmp_path / "gw.db")
    clock = Clock(now=time.time())
    g = Gateway(store, reg, make_encryptor("djn+packed", PUB, exp_bits=256), clock=clock)
    ingest = MqttIngest(g, MqttConfig(port=mosquitto.port, client_id="gw-test", batch_ms=20)).start()
    try:
        assert ingest.wait_subscribed()
        start = int(time.time()) // 900 * 900 - 900
        ok1 = seal(reg, "m0001", 1, start=start)
        forged = bytearray(ok1)
        forged[45] ^= 0x40
        bad = [
            (topic("m0001"), bytes(forged)),                                        # bad_tag (forged MAC)
            (topic("m0001"), seal(reg, "m0001", 2, start=start, key=os.urandom(32))),  # bad_tag (wrong key)
            (topic("m0001"), ok1),                                                   # accepted
            (topic("m0001"), ok1),                                                   # duplicate
            (topic("m0002"), ok1),                                                   # wrong_meter
            (topic("m0001"), ok1[:60]),                                              # truncated
            (topic("m0001"), ok1 + bytes(5000)),                                     # oversize
            (topic("ghost"), seal(reg, "m0001", 3, start=start, meter_id="ghost")),  # unknown_meter
        ]
        _publish(mosquitto.port, bad)
        assert wait_until(lambda: sum(store.counters().values()) >= len(bad))
        clock.now += 7 * 3600  # replay of the stored frame long after the duplicate window
        _publish(mosquitto.port, [(topic("m0001"), ok1)])
        assert wait_until(lambda: store.counters().get("replay") == 1)
        # still alive: a good frame afterwards is stored
        _publish(mosquitto.port, [(topic("m0002"), seal(reg, "m0002", 1, start=start))])
        assert wait_until(lambda: store.count_readings() == 2)
        assert ingest.error is None
    finally:
        ingest.stop()
    counters = store.counters()
    assert counters == {"accepted": 2, "duplicate": 1, "bad_tag": 2, "wrong_meter": 1, "truncated": 1,
                        "oversize": 1, "unknown_meter": 1, "replay": 1}
    assert ingest.acked == len(bad) + 2
    store.close()
    assert cli.main(["stats", "--db", str(tmp_path / "gw.db")]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["accepted"] == 2 and stats["duplicate"] == 1 and stats["rejected"]["bad_tag"] == 2
    assert stats["rejected_total"] == 7 and stats["readings"] == 2


def test_mosquitto_frame_from_a_meter_registered_later_is_not_lost(tmp_path, mosquitto):
    """The broker forgets a message once acked: a genuine frame that arrives before its meter is in
    the registry is kept in quarantine and stored by the running gateway once the meter is added."""
    reg = make_registry(tmp_path)
    store = open_store(tmp_path / "gw.db")
    g = Gateway(store, load_registry(tmp_path), make_encryptor("djn+packed", PUB, exp_bits=256))
    ingest = MqttIngest(g, MqttConfig(port=mosquitto.port, client_id="gw-q", batch_ms=20,
                                      quarantine_retry_s=0.3)).start()
    try:
        assert ingest.wait_subscribed()
        start = int(time.time()) // 900 * 900 - 900
        key = os.urandom(32)
        early = seal(reg, "m0001", 1, start=start, key=key, meter_id="m0042")
        _publish(mosquitto.port, [(topic("m0042"), early)])
        assert wait_until(lambda: store.quarantine_counts() == {"unknown_meter": 1})
        reg.add("m0042", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10, key=key)  # saved to disk
        assert wait_until(lambda: store.count_readings() == 1)
        assert store.quarantine_counts() == {} and ingest.acked == 1
        assert [r.counter for r in store.readings_for_meter("m0042", 0, 2**32)] == [1]
    finally:
        ingest.stop()
        store.close()


def test_mosquitto_shared_subscription_splits_load_and_stores_once(tmp_path, mosquitto):
    reg = make_registry(tmp_path)
    workers = []
    try:
        for i in range(2):
            store = open_store(tmp_path / "shared.db")
            g = Gateway(store, reg, make_encryptor("djn+packed", PUB, exp_bits=256))
            ing = MqttIngest(g, MqttConfig(port=mosquitto.port, client_id=f"gw-share-{i}", share_group="meterveil",
                                           batch_ms=20)).start()
            assert ing.wait_subscribed()
            workers.append((ing, store))
        start = int(time.time()) // 900 * 900 - 60 * 900
        items = [(topic(mid), seal(reg, mid, c, start=start + c * 900)) for c in range(1, 41) for mid in ("m0001", "m0002")]
        _publish(mosquitto.port, items)
        assert wait_until(lambda: workers[0][1].count_readings() == 80)
    finally:
        for ing, _ in workers:
            ing.stop()
    assert all(ing.acked > 0 for ing, _ in workers)  # both workers took a share
    assert sum(ing.acked for ing, _ in workers) == 80
    store = workers[0][1]
    assert store.counters() == {"accepted": 80}
    for _, s in workers:
        s.close()


def test_failed_commit_acks_nothing_and_the_broker_redelivers(tmp_path, mosquitto):
    reg = make_registry(tmp_path)
    store = open_store(tmp_path / "gw.db")
    real_write = store.write_batch
    calls = {"n": 0}

    def failing_write(batch):
        calls["n"] += 1
        raise OSError("disk full")

    store.write_batch = failing_write
    cfg = MqttConfig(port=mosquitto.port, client_id="gw-commitfail", batch_ms=20)
    ing = MqttIngest(Gateway(store, reg, make_encryptor("djn+packed", PUB, exp_bits=256)), cfg).start()
    start = int(time.time()) // 900 * 900 - 900
    try:
        assert ing.wait_subscribed()
        _publish(mosquitto.port, [(topic("m0001"), seal(reg, "m0001", 1, start=start))])
        assert wait_until(lambda: ing.error is not None)
        assert ing.acked == 0 and store.count_readings() == 0
    finally:
        ing.stop()
    store.write_batch = real_write
    ing2 = MqttIngest(Gateway(store, reg, make_encryptor("djn+packed", PUB, exp_bits=256)), cfg).start()
    try:
        assert wait_until(lambda: store.count_readings() == 1)
    finally:
        ing2.stop()
    assert calls["n"] >= 1 and store.counters() == {"accepted": 1}
    store.close()


def test_mosquitto_with_passwords_and_acl(tmp_path, mosquitto_factory):
    acl = "user gateway\ntopic read meterveil/v1/#\n\npattern write meterveil/v1/%u/#\n"
    broker = mosquitto_factory(passwords={"gateway": "gw-secret", "m0001": "pw1", "m0002": "pw2"}, acl=acl).start()
    reg = make_registry(tmp_path)
    store = open_store(tmp_path / "gw.db")
    cfg = MqttConfig.from_url(broker.url, username="gateway", password="gw-secret", client_id="gw-acl", batch_ms=20)
    ing = MqttIngest(Gateway(store, reg, make_encryptor("djn+packed", PUB, exp_bits=256)), cfg).start()
    start = int(time.time()) // 900 * 900 - 900
    try:
        assert ing.wait_subscribed()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="m0001", protocol=mqtt.MQTTv5)
        c.username_pw_set("m0001", "pw1")
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        # m0001 tries to write m0002's topic: the broker drops it (ACL), the gateway never sees it
        c.publish(topic("m0002"), seal(reg, "m0002", 1, start=start), qos=1).wait_for_publish(10)
        c.publish(topic("m0001"), seal(reg, "m0001", 1, start=start), qos=1).wait_for_publish(10)
        c.disconnect()
        c.loop_stop()
        assert wait_until(lambda: store.count_readings() == 1)
        time.sleep(0.3)
    finally:
        ing.stop()
    assert [m.meter_id for m in store.meters()] == ["m0001"] and store.counters() == {"accepted": 1}
    store.close()


def test_mosquitto_over_tls_with_ca_check(tmp_path, mosquitto_factory):
    from meterveil.tools.pki import create_pki

    paths = create_pki(tmp_path / "pki")
    other = create_pki(tmp_path / "other")
    broker = mosquitto_factory(tls=paths.tls()).start()
    assert broker.url.startswith("mqtts://")
    reg = make_registry(tmp_path)
    store = open_store(tmp_path / "gw.db")
    # a gateway trusting another CA never subscribes
    wrong = MqttIngest(Gateway(store, reg, make_encryptor("djn+packed", PUB, exp_bits=256)),
                       MqttConfig.from_url(broker.url, tls_ca=str(other.ca_cert), client_id="gw-wrong"))
    wrong.start()
    try:
        assert not wrong.wait_subscribed(1.5)
    finally:
        wrong.stop()
    cfg = MqttConfig.from_url(broker.url, tls_ca=str(paths.ca_cert), client_id="gw-tls", batch_ms=20)
    ing = MqttIngest(Gateway(store, reg, make_encryptor("djn+packed", PUB, exp_bits=256)), cfg).start()
    start = int(time.time()) // 900 * 900 - 900
    try:
        assert ing.wait_subscribed()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub-tls", protocol=mqtt.MQTTv5)
        c.tls_set(ca_certs=str(paths.ca_cert))
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        c.publish(topic("m0001"), seal(reg, "m0001", 1, start=start), qos=1).wait_for_publish(10)
        c.disconnect()
        c.loop_stop()
        assert wait_until(lambda: store.count_readings() == 1)
    finally:
        ing.stop()
    store.close()


@pytest.mark.parametrize("version", [5, 311])
def test_persistent_session_keeps_frames_published_while_gateway_is_down(tmp_path, mosquitto, version):
    reg = make_registry(tmp_path)
    store = open_store(tmp_path / "gw.db")
    cfg = MqttConfig(port=mosquitto.port, client_id=f"gw-persist-{version}", batch_ms=20, mqtt_version=version)

    def run() -> MqttIngest:
        return MqttIngest(Gateway(store, reg, make_encryptor("djn+packed", PUB, exp_bits=256)), cfg).start()

    ing = run()
    assert ing.wait_subscribed()
    ing.stop()
    start = int(time.time()) // 900 * 900 - 20 * 900
    _publish(mosquitto.port, [(topic("m0001"), seal(reg, "m0001", c, start=start + c * 900)) for c in range(1, 11)])
    mosquitto.restart()  # and the broker restarts meanwhile (persistence on)
    ing = run()
    try:
        assert wait_until(lambda: store.count_readings() == 10)
    finally:
        ing.stop()
    assert store.counters() == {"accepted": 10}
    assert "Error" not in mosquitto.log.read_text()
    store.close()


def _rotate_with_short_grace(gw, tmp_path, grace_s):
    """Rotate m0001 (at the gateway's clock) on a gateway whose registry keeps a previous key for
    `grace_s`; the old key. Time then moves only with gw.clock_ref."""
    reg = KeyedRegistry.load(tmp_path / "keys", tmp_path / "registry" / "meters.json", grace_s=grace_s)
    old_key = reg.get("m0001").key
    reg.rotate("m0001", now=gw.clock_ref())
    gw.registry = reg
    return reg, old_key


def test_previous_key_is_refused_once_its_grace_has_passed(gw, tmp_path):
    reg, old_key = _rotate_with_short_grace(gw, tmp_path, 3600)
    gw.clock_ref.now += 3601
    # a frame under the rotated-out key, first seen after the grace: not opened
    assert gw.process(Message(topic("m0001"), seal(reg, "m0001", 3, key=old_key))).reason == "bad_tag"
    assert gw.process(Message(topic("m0001"), seal(reg, "m0001", 4))).status == "accepted"


def test_previous_key_used_within_grace_is_refused_after_it(gw, tmp_path):
    reg, old_key = _rotate_with_short_grace(gw, tmp_path, 3600)
    assert gw.process(Message(topic("m0001"), seal(reg, "m0001", 3, key=old_key))).status == "accepted"
    gw.clock_ref.now += 3601
    assert gw.process(Message(topic("m0001"), seal(reg, "m0001", 5, key=old_key))).reason == "bad_tag"


def test_a_batch_costs_two_store_queries_not_two_per_reading(gw, monkeypatch):
    """Several workers share a networked database: the duplicate, replay and overlap checks of a batch
    of messages are answered by one lookup_many and one overlapping_many, with the same verdicts as
    the per-reading queries (a SQLite store's one writer needs neither: it keeps high-water marks)."""
    reg, clock = gw.registry, gw.clock_ref
    sent = {c: seal(reg, "m0001", c) for c in (1, 2, 3)}
    for f in sent.values():
        assert gw.process(Message(topic("m0001"), f)).status == "accepted"
    gw.commit()
    clock.now += 300  # inside the duplicate window
    other = seal(reg, "m0002", 1)
    msgs = [Message(topic("m0001"), sent[1]),                                     # resent: duplicate
            Message(topic("m0001"), seal(reg, "m0001", 2, billing=999)),          # other content: reuse
            Message(topic("m0001"), seal(reg, "m0001", 9, T0 + 3 * 900)),         # interval of counter 3
            Message(topic("m0002"), other),                                       # new
            Message(topic("m0001"), seal(reg, "m0001", 4)),                       # new
            Message(topic("m0002"), other),                                       # pending in this batch
            Message(topic("m0001"), b"junk")]
    asked = []
    for name in ("lookup", "overlapping", "lookup_many", "overlapping_many"):
        real = getattr(gw.store, name)
        monkeypatch.setattr(gw.store, name, lambda *a, _n=name, _r=real: (asked.append(_n), _r(*a))[1])
    gw.prefetch(msgs)
    got = [(o.status, o.reason) for o in map(gw.process, msgs)]
    assert got == [("duplicate", "duplicate"), ("rejected", "counter_reuse"), ("rejected", "interval_overlap"),
                   ("accepted", "accepted"), ("accepted", "accepted"), ("duplicate", "duplicate"),
                   ("rejected", "truncated")], got
    if getattr(gw.store, "single_writer", False):
        assert "lookup_many" not in asked
    else:
        assert sorted(asked) == ["lookup_many", "overlapping_many"], asked
    gw.commit()
    clock.now += 3600  # past the window: a resend is now a replay, whether prefetched or not
    replay = Message(topic("m0001"), sent[1])
    gw.prefetch([replay])
    assert (gw.process(replay).reason, gw.process(replay).reason) == ("replay", "replay")
    assert [r.counter for r in gw.store.readings_for_meter("m0001", 0, 2**32)] == [1, 2, 3, 4]
