"""MQTT transport for the gateway: paho-mqtt 2.x, MQTT v5, persistent session, ack after commit.

Why manual acks: paho normally sends PUBACK as soon as ``on_message`` returns. Then a crash between
receipt and the SQLite commit would lose the reading (the broker has forgotten it). With
``manual_ack=True`` we send PUBACK only after ``Gateway.commit`` returned, so a SIGKILL at any point
leads to redelivery (handled as ``duplicate`` if it had been committed), never to loss.

Threads: paho's network loop (``loop_start``) only enqueues messages; one worker thread runs the
pipeline, commits (when the queue runs dry, at ``batch_size`` messages, or after ``batch_ms``) and then
acks in arrival order. Acks of a previous connection are dropped: the broker redelivers those messages
on the resumed session and they are then acked as duplicates.

Session: fixed client id, ``clean_start=False`` and a long session expiry, so the broker queues QoS 1
messages for us while the gateway is down. ``share_group`` subscribes ``$share/<group>/...`` so several
stateless workers split the load (ingest is idempotent by (meter_id, counter)).

Takeover: whoever connects with our client id closes our connection, and with a clean start deletes
the session and the messages queued in it, already acknowledged to the meters. A broker from
`meterveil broker-config` binds client ids to logins, so only the gateway's own account can; if it
happens anyway (a second gateway with the same account, a hand-written broker config) the gateway
logs an ERROR for the DISCONNECT "session taken over" and for every reconnect that finds no session,
and counts both (``takeovers``, ``sessions_lost``).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from meterveil.host.gateway.ingest import Gateway, Message
from meterveil.protocol import frame

log = logging.getLogger("meterveil.gateway.mqtt")

TOPICS = tuple(frame.topic("+", leaf) for leaf in frame.TOPIC_LEAVES)
SESSION_TAKEN_OVER = 0x8E  # MQTT v5 DISCONNECT reason code
# paho's reconnect backoff: doubles from MIN to MAX seconds between attempts
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
LEAVE_QUIET_S = 0.5  # leaving a share group: no message for this long means the broker sent all it had for us


@dataclass(frozen=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    tls_ca: str | None = None
    username: str | None = None
    password: str | None = None
    client_id: str = "meterveil-gateway"
    share_group: str | None = None
    session_expiry_s: int = 30 * 86400
    keepalive: int = 30
    receive_maximum: int = 1000
    stay_in_group: bool = False  # on stop, keep the session in the share group (stopping every worker)
    batch_size: int = 256
    batch_ms: int = 100
    mqtt_version: int = 5   # 5, or 311 for brokers without v5 (clean_session=False; no shared subs)
    # Acknowledge on receipt instead of after the SQLite commit. Only for a broker living in the
    # gateway's own process (the demo's amqtt, which gives up on a PUBACK after 5 s): a crash then
    # loses the broker's queue anyway, so the later ack protects nothing. Never with a real broker.
    ack_on_receipt: bool = False
    # how often the worker retries quarantined frames (gateway.py: unknown meter, clock, DP params)
    quarantine_retry_s: float = 10.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.quarantine_retry_s) or self.quarantine_retry_s <= 0:
            raise ValueError(f"quarantine_retry_s must be finite and > 0, got {self.quarantine_retry_s}")

    @classmethod
    def from_url(cls, url: str, **kwargs) -> MqttConfig:
        """``mqtt://host:port`` or ``mqtts://host:port`` (TLS)."""
        u = urlparse(url)
        if "://" not in url:
            raise ValueError(f"broker URL {url!r} has no scheme: use mqtt://{url} (or mqtts:// for TLS)")
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise ValueError(f"broker URL must be mqtt://HOST:PORT or mqtts://HOST:PORT, got {url!r}")
        try:
            port = u.port
        except ValueError:
            raise ValueError(f"broker URL {url!r}: the port must be a number in 0..65535") from None
        tls = u.scheme == "mqtts" or bool(kwargs.get("tls_ca"))
        return cls(host=u.hostname, port=port or (8883 if tls else 1883), tls=tls, **kwargs)

    def topics(self) -> list[str]:
        prefix = f"$share/{self.share_group}/" if self.share_group else ""
        return [prefix + t for t in TOPICS]


class MqttIngest:
    """Runs a Gateway on an MQTT subscription until ``stop()``."""

    def __init__(self, gateway: Gateway, config: MqttConfig):
        self.gateway = gateway
        self.config = config
        self._q: queue.Queue[tuple[int, int, int, float, Message] | None] = queue.Queue()
        self.ack_latency = LatencyHistogram()
        self._generation = 0
        self._stop = threading.Event()
        self.subscribed = threading.Event()
        self.error: BaseException | None = None
        self.acked = 0
        self.connect_failures = 0  # failed TCP/TLS connection attempts since start (each logged)
        self.takeovers = 0         # DISCONNECTs "session taken over": another client used our client id
        self.sessions_lost = 0     # reconnects after which the broker had no session for us
        self._had_session = False  # a CONNACK in this process already established our session
        if config.mqtt_version not in (5, 311):
            raise ValueError("mqtt_version must be 5 or 311")
        if config.mqtt_version == 311 and config.share_group:
            raise ValueError("shared subscriptions need MQTT v5")
        if config.mqtt_version == 5:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id,
                            protocol=mqtt.MQTTv5, manual_ack=True)
        else:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id,
                            protocol=mqtt.MQTTv311, clean_session=False, manual_ack=True)
        if config.username:
            c.username_pw_set(config.username, config.password)
        if config.tls:
            c.tls_set(ca_certs=config.tls_ca, cert_reqs=ssl.CERT_REQUIRED)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        self._unsubacked: set[int] = set()
        self._last_message = 0.0
        c.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        self.client = c
        self._worker = threading.Thread(target=self._run, name="gateway-ingest", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> MqttIngest:
        self._worker.start()
        if self.config.mqtt_version == 5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.config.session_expiry_s
            props.ReceiveMaximum = self.config.receive_maximum
            self.client.connect_async(self.config.host, self.config.port, self.config.keepalive,
                                      clean_start=False, properties=props)
        else:
            self.client.connect_async(self.config.host, self.config.port, self.config.keepalive)
        self.client.loop_start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the current batch (commit + ack), then disconnect; unprocessed messages stay queued
        at the broker for the next start.

        A worker of a share group first leaves it (unless ``stay_in_group``): a persistent session
        that is only disconnected stays a member, and the broker keeps queueing its share of new
        readings for it, unread, until the session expires (mosquitto 2.0: days). Unsubscribed, the
        other workers get everything; what this session was sent is processed and acked before the
        disconnect (what arrives later stays in the session for a restart under the same client id)."""
        self._stop.set()
        if self.config.share_group and not self.config.stay_in_group:
            self._leave_group(timeout)
        self._q.put(None)
        self._worker.join(timeout)
        self.client.disconnect()
        self.client.loop_stop()
        if self.ack_latency.n:
            log.info("ack latency (receipt to PUBACK, ms): %s", json.dumps(self.ack_latency.summary()))

    def _leave_group(self, timeout: float) -> None:
        """Unsubscribe (waiting for the UNSUBACK), then wait until what the broker had already sent
        has arrived and been processed: no message for LEAVE_QUIET_S and the queue empty."""
        if not self.client.is_connected():
            return
        rc, mid = self.client.unsubscribe(self.config.topics())
        deadline = time.monotonic() + timeout
        if rc != mqtt.MQTT_ERR_SUCCESS or not self._wait(lambda: mid in self._unsubacked, deadline):
            log.warning("could not leave share group %s (rc %s): its session keeps receiving until it expires",
                        self.config.share_group, rc)
            return
        self._wait(lambda: self._q.empty() and time.monotonic() - self._last_message >= LEAVE_QUIET_S, deadline)
        log.info("left share group %s: the other workers get its share", self.config.share_group)

    @staticmethod
    def _wait(cond, deadline: float) -> bool:
        while not cond():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def wait_subscribed(self, timeout: float = 10.0) -> bool:
        return self.subscribed.wait(timeout)

    # -- paho callbacks (network thread) ---------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused connection: %s", reason_code)
            return
        self._generation += 1
        log.info("connected to %s:%d as %s (session present: %s)", self.config.host, self.config.port,
                 self.config.client_id, flags.session_present)
        if self._had_session and not flags.session_present:
            self.sessions_lost += 1
            log.error("SESSION LOST: reconnected as %s and the broker had no session for it: the frames it "
                      "queued for the gateway meanwhile are gone (another client used this client id with a "
                      "clean start, or the broker restarted without persistence)", self.config.client_id)
        self._had_session = True
        if self._stop.is_set():  # reconnected while stopping: do not rejoin the group
            return
        if self.config.mqtt_version == 5:
            client.subscribe([(t, SubscribeOptions(qos=1)) for t in self.config.topics()])
        else:
            client.subscribe([(t, 1) for t in self.config.topics()])

    def _on_connect_fail(self, client, userdata) -> None:
        """A connection attempt failed before CONNACK (refused, unreachable, DNS, TLS).

        paho calls this from inside its ``except OSError`` around the attempt, so the exception being
        handled is the reason. One WARNING per attempt: paho spaces attempts by its backoff
        (RECONNECT_MIN_S doubling to RECONNECT_MAX_S), which is the rate limit.
        """
        self.connect_failures += 1
        exc = sys.exc_info()[1]
        reason = (str(exc) or type(exc).__name__) if exc is not None else "unknown reason"
        log.warning("cannot connect to broker %s:%d (attempt %d): %s; retrying (backoff up to %d s)",
                    self.config.host, self.config.port, self.connect_failures, reason, RECONNECT_MAX_S)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        bad = [rc for rc in reason_codes if rc.is_failure]
        if bad:
            log.error("subscription refused: %s", bad)
            return
        log.info("gateway ready: subscribed to %s", ", ".join(self.config.topics()))
        self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code == SESSION_TAKEN_OVER:
            self.takeovers += 1
            log.error("SESSION TAKEN OVER: another client connected with client id %s and the broker closed "
                      "ours (takeover %d); readings queued for the gateway may be lost. Bind client ids to "
                      "logins (`use_username_as_clientid true`, as `meterveil broker-config` writes) and run "
                      "one gateway per broker account", self.config.client_id, self.takeovers)
        elif not self._stop.is_set():
            log.warning("disconnected from broker (%s); paho reconnects", reason_code)

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._unsubacked.add(mid)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        self._last_message = time.monotonic()
        if self.config.ack_on_receipt and msg.qos > 0:
            client.ack(msg.mid, msg.qos)
            self.acked += 1
        self._q.put((self._generation, msg.mid, msg.qos, time.monotonic(),
                     Message(msg.topic, bytes(msg.payload), bool(msg.dup))))

    # -- worker ---------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # commit failed: do not ack; the broker will redeliver
            self.error = exc
            log.exception("ingest worker stopped: nothing after the last commit was acknowledged")

    def _loop(self) -> None:
        cfg = self.config
        to_ack: list[tuple[int, int, int, float]] = []
        batch_started = 0.0
        next_retry = time.monotonic() + cfg.quarantine_retry_s
        while True:
            if to_ack:
                timeout = max(0.0, batch_started + cfg.batch_ms / 1000 - time.monotonic())
            else:
                if time.monotonic() >= next_retry and self.gateway.pending() == 0:
                    self.gateway.release_quarantine()
                    next_retry = time.monotonic() + cfg.quarantine_retry_s
                timeout = max(0.0, next_retry - time.monotonic())
            try:
                item = self._q.get(timeout=timeout) if timeout != 0.0 else self._q.get_nowait()
            except queue.Empty:
                item = ()  # type: ignore[assignment]
            if item is None:
                self._flush(to_ack)
                return
            if item:
                # what is already queued goes in one go: the store answers its checks in two queries
                items, stop = [item], False
                while len(to_ack) + len(items) < cfg.batch_size:
                    try:
                        nxt = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    items.append(nxt)
                if not to_ack:
                    batch_started = time.monotonic()
                self.gateway.prefetch([it[4] for it in items])  # type: ignore[index]
                for gen, mid, qos, received, msg in items:  # type: ignore[misc]
                    self.gateway.process(msg)
                    if qos > 0:
                        to_ack.append((gen, mid, qos, received))
                if stop:
                    self._flush(to_ack)
                    return
                if not to_ack and self.gateway.pending() == 0:
                    continue
            full = len(to_ack) >= cfg.batch_size
            late = to_ack and time.monotonic() - batch_started >= cfg.batch_ms / 1000
            if full or late or self._q.empty():
                self._flush(to_ack)

    def _flush(self, to_ack: list[tuple[int, int, int, float]]) -> None:
        self.gateway.commit()
        if self.config.ack_on_receipt:
            to_ack.clear()
            return
        gen_now = self._generation
        now = time.monotonic()
        for gen, mid, qos, received in to_ack:
            if gen == gen_now:
                self.client.ack(mid, qos)
                self.acked += 1
                self.ack_latency.add(now - received)
        to_ack.clear()


class LatencyHistogram:
    """Receipt-to-ack latencies in log-spaced buckets (10 per decade from 0.1 ms): constant memory,
    percentiles within ~12 %, and histograms of several workers add up."""

    PER_DECADE = 10

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.n = 0
        self.max_s = 0.0

    def add(self, seconds: float) -> None:
        b = max(0, int(math.log10(max(seconds, 1e-4) / 1e-4) * self.PER_DECADE))
        self.buckets[b] = self.buckets.get(b, 0) + 1
        self.n += 1
        self.max_s = max(self.max_s, seconds)

    def upper_ms(self, bucket: int) -> float:
        return 0.1 * 10 ** ((bucket + 1) / self.PER_DECADE)

    def percentile_ms(self, p: float) -> float:
        seen, want = 0, p / 100 * self.n
        for b in sorted(self.buckets):
            seen += self.buckets[b]
            if seen >= want:
                return min(self.upper_ms(b), self.max_s * 1000)
        return self.max_s * 1000

    def summary(self) -> dict:
        return {"n": self.n, "p50": round(self.percentile_ms(50), 2), "p99": round(self.percentile_ms(99), 2),
                "max": round(self.max_s * 1000, 2), "buckets": {str(k): v for k, v in sorted(self.buckets.items())}}
