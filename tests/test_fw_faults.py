"""The real firmware on the unix port against a real mosquitto: SIGKILL and broker outages."""

from __future__ import annotations

import random

import pytest
from fwutil import Subscriber, meter_config

from meterveil.host.demo import firmware_runner as fr
from meterveil.protocol import frame


def _readings(sub: Subscriber) -> list[dict]:
    return sub.decoded(frame.KIND_READING)


def test_sigkill_meter_then_restart_delivers_every_reading_once(tmp_path, mosquitto):
    """Kill the meter (SIGKILL) at random points of its seal/append/publish loop, restart it."""
    sub = Subscriber(mosquitto.port)
    cfg = meter_config(tmp_path, mosquitto.url, sim={"speed": 36000})
    meter = fr.MeterProcess(cfg, tmp_path / "state", log_path=tmp_path / "meter.log")
    rng = random.Random(7)
    kills = 6
    for _ in range(kills):
        before = len(meter.truth())
        meter.start()
        # Kill after a random number of new readings (progress, not wall time).
        k = rng.randint(1, 4)
        assert meter.wait_for(lambda lines, b=before, k=k: sum(x.startswith("TRUTH ") for x in lines) >= b + k, 60), meter.output[-2000:]
        meter.kill()
    # Last run: a few more readings, then exit cleanly once the outbox is drained.
    final = fr.MeterProcess(cfg, tmp_path / "state", intervals=3, drain_timeout=60,
                            log_path=tmp_path / "meter.log")
    final.start()
    assert final.wait(120) == fr.EXIT_OK, final.output[-2000:]
    truth = meter.truth() + final.truth()
    counters = [t["counter"] for t in truth]
    assert counters == sorted(set(counters)), "counters repeat or go back across kills"
    want = set(counters)
    assert sub.wait_count(lambda msgs: want <= {m[1][20:24] and int.from_bytes(m[1][20:24], "big") for m in msgs}, 30)
    got = _readings(sub)
    by_counter: dict[int, list[bytes]] = {}
    for m in got:
        by_counter.setdefault(m["header"]["counter"], []).append(m["raw"])
    # Every sealed reading arrived; duplicates are byte-identical retransmissions (the gateway
    # stores (meter, counter) once); PUBACKs lost with the process: at most the window per kill.
    assert want <= set(by_counter)
    assert all(len(set(v)) == 1 for v in by_counter.values())
    assert sum(len(v) - 1 for v in by_counter.values()) <= kills * 4  # in-flight window per kill
    # Readings without a TRUTH line: sealed+appended, then killed before printing: <= 1 per kill.
    assert len(set(by_counter) - want) <= kills
    # Delivery order after dedup: counters strictly increasing.
    seen = []
    for m in got:
        c = m["header"]["counter"]
        if c not in seen:
            seen.append(c)
    assert seen == sorted(seen)
    # Interval starts never repeat across reboots.
    starts = [m["header"]["interval_start"] for m in got if m["header"]["counter"] in want]
    assert len(set(starts)) == len(want)
    sub.close()


def test_broker_down_for_simulated_hours(tmp_path, mosquitto):
    """Broker stopped ~4 simulated hours: readings queue in the outbox and all arrive in order."""
    sub = Subscriber(mosquitto.port)
    cfg = meter_config(tmp_path, mosquitto.url, sim={"speed": 3600})
    meter = fr.MeterProcess(cfg, tmp_path / "state", intervals=28, drain_timeout=60,
                            log_path=tmp_path / "meter.log")
    meter.start()
    assert meter.wait_for(lambda lines: sum(x.startswith("TRUTH ") for x in lines) >= 4, 60)
    assert sub.wait_count(lambda msgs: len(msgs) >= 3, 30)
    # The unix HAL's netcut flag keeps the meter off the network until the test subscriber has
    # resubscribed on the restarted broker (otherwise the drain could race the subscriber).
    netcut = tmp_path / "state" / "netcut"
    netcut.write_text("")
    mosquitto.stop()
    n0 = len(meter.truth())
    # 16 readings = 4 simulated hours while the broker is down.
    assert meter.wait_for(lambda lines: sum(x.startswith("TRUTH ") for x in lines) >= n0 + 16, 120)
    statuses = meter.tagged("STATUS")
    assert max(s["outbox_depth"] for s in statuses) >= 8  # the outbox really held the backlog
    subs = sub.subacks
    mosquitto.start()
    assert sub.wait_subscribed(subs + 1, 30)
    netcut.unlink()
    assert meter.wait(120) == fr.EXIT_OK, meter.output[-2000:]
    truth = meter.truth()
    want = [t["counter"] for t in truth]
    ok = sub.wait_count(lambda msgs: len({int.from_bytes(m[1][20:24], "big") for m in msgs
                                          if m[1][3] == frame.KIND_READING}) >= len(want), 30)
    assert ok, (want, [int.from_bytes(m[1][20:24], "big") for m in sub.msgs])
    got = _readings(sub)
    # QoS 1 is at-least-once: a frame in flight when the broker died is retransmitted after the
    # reconnect. Such a resend must be byte-identical (same IV, same tag: the gateway stores it
    # once); a re-sealed copy or a gap would fail here.
    first: dict[int, bytes] = {}
    order = []
    for m in got:
        c = m["header"]["counter"]
        if c in first:
            assert m["raw"] == first[c], f"counter {c} re-sealed, not retransmitted"
        else:
            first[c] = m["raw"]
            order.append(m)
    assert len(got) - len(order) <= 4, "more resends than the in-flight window"
    assert [m["header"]["counter"] for m in order] == want, "every reading, in order, none lost"
    got = order
    for m, t in zip(got, truth, strict=True):
        assert m["fields"]["billing_wh"] == t["energy_wh"]
        assert m["header"]["interval_start"] == t["interval_start"]
    # Status frames report the reconnect.
    status = sub.decoded(frame.KIND_STATUS)
    assert any(s["fields"]["reconnects"] >= 1 for s in status)
    sub.close()


def test_reset_mid_interval_keeps_the_checkpointed_energy(tmp_path, mosquitto):
    """SIGKILL mid-interval, restart after the interval has ended: the energy measured before the
    kill (checkpointed to flash) is sealed at boot, once, flagged partial, with missing_s counting
    exactly the unmeasured time. Without the checkpoint that interval would never be reported."""
    import time

    speed = 600  # one 15-minute interval per 1.5 s of real time
    cfg = meter_config(tmp_path, mosquitto.url, sim={"speed": speed, "block_s": 10})
    state = tmp_path / "state"
    meter = fr.MeterProcess(cfg, state, log_path=tmp_path / "meter.log")
    meter.start()
    assert meter.wait_for(lambda lines: sum(x.startswith("TRUTH ") for x in lines) >= 2, 60), meter.output[-2000:]
    cp_path = state / "partial"
    deadline = time.monotonic() + 60
    cp = None
    while time.monotonic() < deadline and cp is None:
        last = max(t["interval_start"] for t in meter.truth())
        vals = [int(v) for v in cp_path.read_text().split()] if cp_path.exists() else []
        if len(vals) == 6 and vals[0] > last and vals[3] > 0:
            meter.kill()
            cp = [int(v) for v in cp_path.read_text().split()]  # the file as the reset left it
        time.sleep(0.002)
    assert cp is not None, "no mid-interval checkpoint seen"
    before = meter.truth()
    assert all(t["interval_start"] < cp[0] for t in before)
    time.sleep(2 * 900 / speed)  # the meter's clock moves on past the end of that interval
    again = fr.MeterProcess(cfg, state, intervals=2, drain_timeout=60, log_path=tmp_path / "meter.log")
    again.start()
    assert again.wait(120) == fr.EXIT_OK, again.output[-2000:]
    truth = before + again.truth()
    hit = [t for t in truth if t["interval_start"] == cp[0]]
    assert len(hit) == 1, (cp, truth)
    r = hit[0]
    assert r["energy_wh"] == cp[1] // 1000, (r, cp)  # exactly what was measured before the kill
    assert r["missing_s"] == 900 - cp[3] // 1000, (r, cp)
    assert r["flags"] & 2  # FLAG_PARTIAL_INTERVAL
    counters = [t["counter"] for t in truth]
    assert counters == sorted(set(counters))


@pytest.mark.parametrize("mode", ["before", "after"])
def test_power_cut_around_the_outbox_append_loses_and_repeats_nothing(tmp_path, mosquitto, mode):
    """Cut at the 3rd reading, just before its record is written (it must come back from the last
    checkpoint) or just after (the boot scan of the outbox must know it is sealed): every interval
    is delivered exactly once either way."""
    import subprocess

    sub = Subscriber(mosquitto.port)
    try:
        cfg = meter_config(tmp_path, mosquitto.url, sim={"speed": 600, "block_s": 10})
        state = tmp_path / "state"
        env = fr.firmware_env()
        env["MICROPYPATH"] += ":" + str(fr.REPO / "tests" / "mpy")
        cut = subprocess.run([fr.micropython_binary(), "-X", "heapsize=128k", str(fr.REPO / "tests" / "mpy" / "powercut.py"),
                              mode, "3", str(cfg), "--storage", str(state)], capture_output=True, text=True,
                             env=env, timeout=120, cwd=tmp_path)
        assert cut.returncode == 9 and f"POWERCUT {mode} 3" in cut.stdout, cut.stdout[-2000:] + cut.stderr[-2000:]
        again = fr.MeterProcess(cfg, state, intervals=3, drain_timeout=60, log_path=tmp_path / "meter.log")
        again.start()
        assert again.wait(120) == fr.EXIT_OK, again.output[-2000:]
        assert sub.wait_count(lambda msgs: len([t for t, _ in msgs if t.endswith("/reading")]) >= 5, 30)
        readings = sub.decoded(frame.KIND_READING)
        starts = [r["header"]["interval_start"] for r in readings]
        counters = [r["header"]["counter"] for r in readings]
        assert len(starts) == len(set(starts)), sorted(starts)  # no interval sealed twice
        assert len(counters) == len(set(counters))
        iv = 900
        first, last = min(starts), max(starts)
        assert sorted(starts) == list(range(first, last + iv, iv)), sorted(starts)  # none lost
    finally:
        sub.close()


def test_replacement_board_with_a_new_key_is_accepted_not_counter_reuse(tmp_path, mosquitto):
    """A meter's board dies and a fresh one (new key, empty flash) takes over the meter id: its frame
    counters must not collide with the old board's stored ones, or the gateway rejects every reading
    as counter reuse. Counters follow seconds since 2020 once the clock is set."""
    from fwutil import START
    from phe import paillier

    from meterveil.host.gateway.encryptor import make_encryptor
    from meterveil.host.gateway.ingest import Gateway, Message
    from meterveil.host.gateway.meter_keys import KeyedRegistry
    from meterveil.host.store.base import open_store

    sub = Subscriber(mosquitto.port)
    try:
        old_key, new_key = bytes(range(32)), bytes(range(100, 132))
        runs = [("old", old_key, START), ("new", new_key, START + 6 * 3600)]  # replaced 6 h later
        for name, key, start in runs:
            (tmp_path / name).mkdir()
            cfg = meter_config(tmp_path / name, mosquitto.url, master_key=key.hex(), sim={"start_time": start})
            meter = fr.MeterProcess(cfg, tmp_path / name / "state", intervals=3, drain_timeout=60)
            meter.start()
            assert meter.wait(120) == fr.EXIT_OK, meter.output[-2000:]
        assert sub.wait_count(lambda msgs: len([t for t, _ in msgs if t.endswith("/reading")]) >= 6, 30)
        reg = KeyedRegistry.load(tmp_path / "keys", tmp_path / "registry" / "meters.json")
        reg.add("m0001", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10, key=old_key)
        reg.rotate("m0001", new_key)  # what `meterveil provision m0001 --rotate-key` records
        pub, _ = paillier.generate_paillier_keypair(n_length=1024)
        store = open_store(tmp_path / "gw.db")
        gw = Gateway(store, reg, make_encryptor("djn+packed", pub, exp_bits=256),
                     clock=lambda: START + 7 * 3600)
        outcomes = [gw.process(Message(t, p)).reason for t, p in sub.msgs if t.endswith("/reading")]
        gw.commit()
        assert outcomes == ["accepted"] * 6, outcomes
        store.close()
    finally:
        sub.close()
