"""An in-process MQTT broker (amqtt 0.12.1) for the demo, so a newcomer needs no mosquitto.

Why a thread with its own event loop: the gateway and the demo driver are synchronous (paho,
subprocesses), so the broker gets a private asyncio loop and is started and stopped from outside.

Limits of amqtt 0.12.1, checked against its source (see tests/test_broker_embedded.py):
- MQTT 3.1.1 only: a CONNECT with protocol level 5 gets CONNACK "unacceptable protocol version"
  when it carries no username; with a username amqtt misparses the v5 properties and never
  answers (the client waits for a CONNACK until its timeout). Clients must use MQTTv311 here
  (persistent sessions via clean_session=False work); no `$share/` shared subscriptions.
- A session is kept after disconnect only if it is not anonymous. amqtt's own AnonymousAuthPlugin
  marks every session anonymous, so persistent sessions would be dropped; `UserAuthPlugin` below
  marks sessions that present a username as non-anonymous (and checks passwords when given).
- ACLs are per-user topic lists (no mosquitto `%u` pattern): `meter_acls()` expands them.
- A publish to a topic outside the publisher's ACL is acknowledged and silently dropped (as mosquitto).
- Loses acknowledged messages: amqtt PUBACKs an incoming QoS 1 publish when it enters the session's
  delivery queue, but routes the queue one message per loop turn and stops at the client's
  DISCONNECT, dropping what is still queued. Meters that drain their outbox in a burst and then
  disconnect lost the tail (measured: 120 meters, 1 day: 5,790 of 11,520 readings arrived).
  `_DrainingBroker` routes the leftover queue after the client loop ends.
- Waits only 5 s for a subscriber's PUBACK, then logs an error with a traceback and never
  redelivers; the message itself was already written to the subscriber's socket and arrives. The
  demo's gateway acks on receipt (host/demo/gateway.py), yet under load (200 meters, one GIL for
  broker and gateway) it still reads more than 5 s behind: `_PubackNoise` counts these errors and
  the late-PUBACK warnings instead of printing thousands of tracebacks (`.puback_timeouts`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

from meterveil.protocol import frame

log = logging.getLogger(__name__)


class UserAuthPlugin(BaseAuthPlugin):
    """Password check against an in-memory dict (constant-time); usernamed sessions persist."""

    @dataclass
    class Config:
        users: dict[str, str] = field(default_factory=dict)
        require_password: bool = False

    async def authenticate(self, *, session: Session) -> bool | None:
        users: dict[str, str] = self.config.users
        name = session.username or ""
        session.is_anonymous = not name
        if not self.config.require_password:
            return True
        expected = users.get(name)
        if expected is None:
            return False
        return hmac.compare_digest((session.password or "").encode(), expected.encode())


def meter_acls(meter_ids: list[str], gateway_user: str, topic_root: str = frame.TOPIC_ROOT) -> dict:
    """publish/subscribe ACLs: each meter writes only its own subtree; the gateway reads all."""
    pub = {m: [f"{topic_root}/{m}/#"] for m in meter_ids}
    pub[gateway_user] = []
    sub = {gateway_user: [f"{topic_root}/#"]}
    return {"publish_acl": pub, "acl": sub}


class _DrainingBroker(Broker):
    """amqtt Broker that routes messages a client had published (and got PUBACKs for) before it
    disconnected; upstream 0.12.1 drops them (see the module docstring).

    The queue is emptied synchronously before anything awaits: the broker's session monitor empties
    a disconnected session's queue in place (Session.clear_queues) whenever it gets to run.
    """

    async def _route_leftovers(self, client_session: Session, handler: Any) -> None:
        queue = client_session.delivered_message_queue
        leftovers = []
        while not queue.empty():
            leftovers.append(queue.get_nowait())
        loop = asyncio.get_running_loop()
        for msg in leftovers:
            done: asyncio.Future = loop.create_future()
            done.set_result(msg)
            await self._handle_message_delivery(client_session, handler, done)

    async def _handle_disconnect(self, client_session: Session, handler: Any, disconnect_waiter: Any) -> None:
        await self._route_leftovers(client_session, handler)
        await super()._handle_disconnect(client_session, handler, disconnect_waiter)

    async def _client_message_loop(self, client_session: Session, handler: Any) -> None:
        await super()._client_message_loop(client_session, handler)
        await self._route_leftovers(client_session, handler)  # loop left without a disconnect


def _quiet_cancel(loop: asyncio.AbstractEventLoop, ctx: dict) -> None:
    """Half-open connections cancelled at stop are expected; report everything else."""
    if isinstance(ctx.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(ctx)


class _PubackNoise(logging.Filter):
    """Counts and hides amqtt's per-message PUBACK-timeout errors and late-PUBACK warnings."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts = 0
        self.late_acks = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        text = record.getMessage()
        if isinstance(exc, TimeoutError) and "PUBACK" in str(exc) or "Timeout waiting for PUBACK" in text:
            self.timeouts += exc is not None  # the handler's warning and the broker's error: count once
            return False
        if "PUBACK for unknown pending message" in text:
            self.late_acks += 1
            return False
        return True


_NOISY = ("amqtt.broker", "amqtt.mqtt.protocol.handler")


class EmbeddedBroker:
    """amqtt on 127.0.0.1 (port 0 = pick a free one) in a background thread; `.url` once started."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 users: dict[str, str] | None = None, acls: dict | None = None):
        self.host = host
        self.port = port
        self.users = users
        self.acls = acls
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Broker | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._noise = _PubackNoise()

    @property
    def puback_timeouts(self) -> int:
        """Deliveries to a subscriber whose PUBACK came later than amqtt's fixed 5 s."""
        return self._noise.timeouts

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _config(self) -> dict[str, Any]:
        plugins: dict[str, Any] = {
            f"{__name__}.UserAuthPlugin": {"users": dict(self.users or {}),
                                           "require_password": self.users is not None},
        }
        if self.acls:
            plugins["amqtt.plugins.topic_checking.TopicAccessControlListPlugin"] = self.acls
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": plugins,
        }

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(_quiet_cancel)

        async def boot() -> None:
            with warnings.catch_warnings():
                # 0.12.1's ACL plugin only accepts `acl` for subscriptions yet warns it is deprecated.
                warnings.filterwarnings("ignore", message=".*'acl' option is deprecated")
                self._broker = _DrainingBroker(self._config(), loop=loop)
            await self._broker.start()
            server = self._broker._servers["default"].instance
            self.port = server.sockets[0].getsockname()[1]

        try:
            loop.run_until_complete(boot())
        except BaseException as exc:  # reported to start() in the caller's thread
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        for name in _NOISY:
            logging.getLogger(name).addFilter(self._noise)
        self._thread = threading.Thread(target=self._run, name="amqtt-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("embedded broker did not start in time")
        if self._error is not None:
            raise RuntimeError(f"embedded broker failed to start: {self._error}") from self._error
        log.info("embedded amqtt broker on %s", self.url)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        loop, broker = self._loop, self._broker
        if loop is None or broker is None or self._thread is None or not self._thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(broker.shutdown(), loop)
        try:
            fut.result(timeout)
        except Exception as exc:  # still stop the loop; say why shutdown was unclean
            log.warning("embedded broker shutdown: %r", exc)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout)
        self._broker = None
        for name in _NOISY:
            logging.getLogger(name).removeFilter(self._noise)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
