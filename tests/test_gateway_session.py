"""The gateway's broker session: a meter login cannot take it over, and a takeover is logged loudly.

Attack run: a meter account connecting with the gateway's client id `meterveil-gateway` made mosquitto
close the gateway's connection and restart its session; of 40 readings the broker acknowledged to
another meter, 21 never reached the gateway.
"""

from __future__ import annotations

import logging
import threading
import time

import paho.mqtt.client as mqtt
from brokerutil import tls_client, wait_until
from phe import paillier

from meterveil.host.gateway.encryptor import make_encryptor
from meterveil.host.gateway.ingest import Gateway
from meterveil.host.gateway.meter_keys import KeyedRegistry
from meterveil.host.gateway.mqtt import MqttConfig, MqttIngest
from meterveil.host.store.base import open_store
from meterveil.protocol import frame

PUB, _PRIV = paillier.generate_paillier_keypair(n_length=1024)
READINGS = 40


def _registry(root) -> KeyedRegistry:
    reg = KeyedRegistry.load(root / "keys", root / "registry" / "meters.json")
    for i, mid in enumerate(("m0001", "m0002")):
        reg.add(mid, feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10, key=bytes([i + 1]) * 32)
    return reg


def _readings(reg: KeyedRegistry, mid: str, n: int) -> list[bytes]:
    keys = frame.derive_keys(reg.get(mid).key)
    start = int(time.time()) // 900 * 900 - (n + 1) * 900
    return [frame.seal(keys, {"kind": frame.KIND_READING, "meter_id": mid, "counter": c, "interval_len": 900,
                              "interval_start": start + c * 900, "epsilon_milli": 1000, "clamp_wh": 1000, "m": 10},
                       {"billing_wh": 200, "analytics_wh": 150, "flags": 0, "samples": 900, "clipped": 0,
                        "missing_s": 0})
            for c in range(1, n + 1)]


def _publish_while(publish: mqtt.Client, topic: str, frames: list[bytes], attack) -> None:
    """Publish `frames` (QoS 1, each acknowledged by the broker) while `attack()` runs alongside."""
    t = threading.Thread(target=attack)
    t.start()
    for f in frames:
        publish.publish(topic, f, qos=1).wait_for_publish(10)
        time.sleep(0.01)
    t.join()


def test_a_meter_login_using_the_gateway_client_id_cannot_disconnect_it(tmp_path, pilot, caplog):
    reg = _registry(tmp_path)
    store = open_store(tmp_path / "gw.db")
    cfg = MqttConfig.from_url(f"mqtts://localhost:{pilot.port}", tls_ca=str(pilot.ca), username="gateway",
                              password=pilot.gateway_password, batch_ms=20)
    assert cfg.client_id == "meterveil-gateway"  # the default the attack used
    ingest = MqttIngest(Gateway(store, reg, make_encryptor("djn+packed", PUB, exp_bits=256)), cfg).start()
    caplog.set_level(logging.INFO, logger="meterveil.gateway.mqtt")
    intruders: list[mqtt.Client] = []

    def attack():
        # the meter account m0002 connects with the gateway's client id (and with its login as id),
        # clean start, again and again while m0001's readings flow
        for i in range(6):
            cid = ("meterveil-gateway", "gateway")[i % 2]
            c, rc = tls_client(pilot.port, pilot.ca, "m0002", pilot.pw["m0002"], client_id=cid,
                               protocol=mqtt.MQTTv5, clean=True)
            assert not rc.is_failure  # accepted, but as client id "m0002": its own session only
            intruders.append(c)
            time.sleep(0.15)

    try:
        assert ingest.wait_subscribed()
        meter, rc = tls_client(pilot.port, pilot.ca, "m0001", pilot.pw["m0001"])
        _publish_while(meter, "meterveil/v1/m0001/reading", _readings(reg, "m0001", READINGS), attack)
        assert wait_until(lambda: store.count_readings() == READINGS, 20), store.counters()
        meter.disconnect()
        meter.loop_stop()
    finally:
        for c in intruders:
            c.disconnect()
            c.loop_stop()
        ingest.stop()
    assert store.counters() == {"accepted": READINGS}
    assert (ingest.takeovers, ingest.sessions_lost) == (0, 0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    store.close()


def test_gateway_logs_a_session_takeover_loudly(tmp_path, mosquitto, caplog):
    """On a broker that does not bind client ids (a hand-written config) a takeover still happens: the
    gateway must say so at ERROR level and count it. mosquitto 2.0.11 closes the old connection without
    the v5 DISCONNECT "session taken over" (newer brokers send it; counted as `takeovers`), so what
    the gateway sees is its reconnect finding the session gone."""
    reg = _registry(tmp_path)
    store = open_store(tmp_path / "gw.db")
    cfg = MqttConfig(port=mosquitto.port, client_id="gw-takeover", batch_ms=20)
    ingest = MqttIngest(Gateway(store, reg, make_encryptor("djn+packed", PUB, exp_bits=256)), cfg).start()
    caplog.set_level(logging.INFO, logger="meterveil.gateway.mqtt")
    try:
        assert ingest.wait_subscribed()
        intruder = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-takeover", protocol=mqtt.MQTTv5)
        connected = threading.Event()
        intruder.on_connect = lambda *a: connected.set()
        intruder.connect("127.0.0.1", mosquitto.port, clean_start=True)
        intruder.loop_start()
        assert connected.wait(5)
        intruder.disconnect()
        intruder.loop_stop()
        # paho reconnects the gateway; the intruder's clean start had deleted its session
        assert wait_until(lambda: ingest.sessions_lost == 1, 15)
    finally:
        ingest.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(m.startswith("SESSION LOST") and "gw-takeover" in m for m in errors), errors
    store.close()
