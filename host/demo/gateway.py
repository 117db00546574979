"""The demo's gateway: helper-3's Gateway + MqttIngest run in-process (threads), plus `stats.json`.

With the embedded broker: the amqtt 0.12.1 broker speaks 3.1.1 only (see host/demo/broker.py), so
the ingest runs with ``mqtt_version=311`` (clean_session=False, fixed client id: a persistent QoS 1
session) and one deliberate change, ``ack_on_receipt``: it acknowledges on receipt, not after commit.
Why: amqtt waits only 5 s for a subscriber's PUBACK, then drops the message from its in-flight
table for good (measured: with 200 meters the gateway's backlog passed 5 s and ~10k of 19,200
readings were lost). Ack-after-commit protects against a gateway crash while the broker keeps the
message; here the broker lives in the same process, so a crash loses its queue anyway and the
later ack buys nothing. With an external broker (--broker) the ingest is the production one (v5).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from meterveil.host.common.pubkey import PUBLIC_NAME, load_public
from meterveil.host.gateway.encryptor import make_encryptor
from meterveil.host.gateway.ingest import Gateway, IngestConfig, stats_summary
from meterveil.host.gateway.meter_keys import KeyedRegistry
from meterveil.host.gateway.mqtt import MqttConfig, MqttIngest
from meterveil.host.store.base import open_store

log = logging.getLogger("meterveil.demo")


class DemoGateway:
    """Owns store, registry, encryptor and the MQTT ingest for one demo run."""

    def __init__(self, keys_dir: Path, registry: Path, db_path: Path, broker_url: str, *, mqtt_v5: bool,
                 username: str | None = None, password: str | None = None,
                 encryption: str = "djn+packed"):
        self.pub = load_public(keys_dir / PUBLIC_NAME)
        self.registry = KeyedRegistry.load(keys_dir, registry)
        self.store = open_store(db_path)
        self.encryptor = make_encryptor(encryption, self.pub)
        self.gateway = Gateway(self.store, self.registry, self.encryptor, IngestConfig())
        cfg = MqttConfig.from_url(broker_url, username=username, password=password,
                                  client_id="meterveil-demo-gateway", mqtt_version=5 if mqtt_v5 else 311,
                                  ack_on_receipt=not mqtt_v5)
        self.ingest = MqttIngest(self.gateway, cfg)
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
    return stats_summary(store)
