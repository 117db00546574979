"""The demo's gateway: helper-3's Gateway + MqttIngest run in-process (threads), plus `stats.json`.

Why a v3.1.1 variant: MqttIngest speaks MQTT v5 only, and the embedded amqtt 0.12.1 broker speaks
3.1.1 only (see broker_embedded.py). `MqttIngest311` keeps the ingest pipeline (one worker thread,
batched commits) with a 3.1.1 handshake (clean_session=False, fixed client id: a persistent QoS 1
session) and one deliberate change: it acknowledges on receipt, not after commit.
Why: amqtt waits only 5 s for a subscriber's PUBACK, then drops the message from its in-flight
table for good (measured: with 200 meters the gateway's backlog passed 5 s and ~10k of 19,200
readings were lost). Ack-after-commit protects against a gateway crash while the broker keeps the
message; here the broker lives in the same process, so a crash loses its queue anyway and the
later ack buys nothing. With an external broker (--broker) the demo uses MqttIngest unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from . import keys
from .gateway import Gateway, IngestConfig, Message
from .mqtt_ingest import MqttConfig, MqttIngest
from .paillier_fast import make_encryptor
from .store import open_store

log = logging.getLogger("meterveil.demo")


class MqttIngest311(MqttIngest):
    """MqttIngest over MQTT 3.1.1 (clean_session=False) for brokers without v5, such as amqtt."""

    def __init__(self, gateway: Gateway, config: MqttConfig):
        super().__init__(gateway, config)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id,
                        protocol=mqtt.MQTTv311, clean_session=False, manual_ack=True)
        if config.username:
            c.username_pw_set(config.username, config.password)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.reconnect_delay_set(1, 30)
        c.max_inflight_messages_set(100)
        self.client = c

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        # As MqttIngest._on_connect, with plain QoS ints (SubscribeOptions are v5 only).
        if reason_code.is_failure:
            log.error("broker refused connection: %s", reason_code)
            return
        self._generation += 1
        client.subscribe([(t, 1) for t in self.config.topics()])

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        # Ack on receipt (see the module docstring); the worker still batches commits by count/time.
        if msg.qos > 0:
            client.ack(msg.mid, msg.qos)
        self._q.put((self._generation, msg.mid, msg.qos, Message(msg.topic, bytes(msg.payload), bool(msg.dup))))

    def _flush(self, to_ack: list[tuple[int, int, int]]) -> None:
        self.gateway.commit()  # already acknowledged in _on_message
        to_ack.clear()

    def start(self) -> MqttIngest311:
        self._worker.start()
        self.client.connect_async(self.config.host, self.config.port, self.config.keepalive)
        self.client.loop_start()
        return self


class DemoGateway:
    """Owns store, registry, encryptor and the MQTT ingest for one demo run."""

    def __init__(self, keys_dir: Path, db_path: Path, broker_url: str, *, mqtt_v5: bool,
                 username: str | None = None, password: str | None = None,
                 encryption: str = "djn+packed"):
        self.pub = keys.load_public(keys_dir / keys.PUBLIC_NAME)
        self.registry = keys.MeterRegistry.load(keys_dir)
        self.store = open_store(db_path)
        self.encryptor = make_encryptor(encryption, self.pub)
        self.gateway = Gateway(self.store, self.registry, self.encryptor, IngestConfig())
        cfg = MqttConfig.from_url(broker_url, username=username, password=password,
                                  client_id="meterveil-demo-gateway")
        self.ingest: MqttIngest = (MqttIngest if mqtt_v5 else MqttIngest311)(self.gateway, cfg)
        self._stopped = False

    def start(self, timeout: float = 20.0) -> DemoGateway:
        self.ingest.start()
        if not self.ingest.wait_subscribed(timeout):
            raise RuntimeError(f"gateway did not subscribe within {timeout:.0f} s (broker reachable?)")
        return self

    @property
    def error(self) -> BaseException | None:
        return self.ingest.error

    def stop(self) -> None:
        """Commit and ack what is in flight, disconnect (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self.ingest.stop()
        self.encryptor.close()

    def close(self) -> None:
        self.store.close()


def gateway_stats(store: Any) -> dict[str, Any]:
    """The same counters `meterveil stats` prints (accepted, duplicate, each rejection reason)."""
    counters = store.counters()
    rejected = {k: v for k, v in counters.items() if k not in ("accepted", "duplicate", "status")}
    return {"accepted": counters.get("accepted", 0), "duplicate": counters.get("duplicate", 0),
            "status": counters.get("status", 0), "rejected_total": sum(rejected.values()),
            "rejected": rejected, "readings": store.count_readings(), "meters": len(store.meters())}
