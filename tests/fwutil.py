"""Helpers for firmware tests: meter configs, a paho subscriber that decodes frames."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho

from meterveil.protocol import frame

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "tests" / "data" / "profiles"
MASTER_KEY = bytes(range(32))
START = 1763856000  # 2025-11-23 00:00 UTC, a multiple of 900


def meter_config(tmp: Path, broker_url: str, meter_id: str = "m0001", **over) -> Path:
    cfg = json.loads((REPO / "firmware" / "config.example.json").read_text())
    cfg.update({"meter_id": meter_id, "master_key": MASTER_KEY.hex()})
    cfg["broker"] = {"url": broker_url, "keepalive_s": 30, "backoff_min_ms": 100,
                     "backoff_max_ms": 1000, "ack_timeout_ms": 3000}
    cfg["sim"] = {"profile": str(PROFILES / "stepped.csv"), "period_s": 300, "speed": 3600,
                  "mains_hz": 50, "mode": "sparse", "block_s": 60, "seed": 1, "start_time": START}
    cfg.pop("wifi", None)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    path = tmp / f"{meter_id}.json"
    path.write_text(json.dumps(cfg, indent=1))
    return path


class Subscriber:
    """Persistent-session QoS 1 subscriber on meterveil/v1/+/+; keeps raw payloads in order."""

    def __init__(self, port: int, client_id: str = "test-sub", username=None, password=None):
        self.msgs: list[tuple[str, bytes]] = []
        self._lock = threading.Condition()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                             clean_session=False, protocol=paho.MQTTv311)
        if username:
            self.c.username_pw_set(username, password)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("meterveil/v1/+/+", qos=1)
        self.c.on_message = self._on_message
        self.subacks = 0
        self.c.on_subscribe = self._on_subscribe
        self.c.reconnect_delay_set(0.05, 0.5)
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        deadline = time.monotonic() + 10
        while not self.c.is_connected() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # SUBACK

    def _on_subscribe(self, c, u, mid, rcs, p):
        with self._lock:
            self.subacks += 1
            self._lock.notify_all()

    def wait_subscribed(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.subacks < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.2))
            return True

    def _on_message(self, c, u, msg):
        with self._lock:
            self.msgs.append((msg.topic, bytes(msg.payload)))
            self._lock.notify_all()

    def wait_count(self, pred, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not pred(self.msgs):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.2))
            return True

    def decoded(self, kind: int | None = None) -> list[dict]:
        keys = frame.derive_keys(MASTER_KEY)
        out = []
        with self._lock:
            msgs = list(self.msgs)
        for topic, payload in msgs:
            meter = topic.split("/")[2]
            m = frame.open_frame(keys, payload, topic_meter=meter)
            m["topic"] = topic
            m["raw"] = payload
            if kind is None or m["header"]["kind"] == kind:
                out.append(m)
        return out

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()
