# Publisher: connection policy over the MQTT wire layer (mqtt.py). Owns reconnect with
# exponential backoff and jitter, QoS 1 with PUBACK tracking and retransmission (DUP), keepalive
# pings, and draining the outbox oldest first with a bounded number of messages in flight.
# Timers here are real time (time.ticks_ms): the network is real even when the meter's clock
# is simulated, so keepalive and backoff must not speed up with the simulation.
import asyncio
import gc
import os
import time

from meter import mqtt

try:
    from protocol import frame
except ImportError:  # CPython tests with only firmware/ on the path
    from meterveil.protocol import frame

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

# A message in flight: [pid, pos, next_pos, sent_ms, acked] (a list: sent_ms and acked change).
_PID = const(0)
_POS = const(1)
_NEXT = const(2)
_SENT = const(3)
_ACKED = const(4)
_TICK_MS = const(250)     # housekeeping period while idle
_CONNECT_TIMEOUT_MS = const(10000)
_POLL_MS = const(10)      # idle wait polls the kick flag (no asyncio.Event: heap)


def _since(t):
    return time.ticks_diff(time.ticks_ms(), t)


def backoff_ms(attempt, lo, hi, rnd16):
    # Exponential backoff with "equal jitter": half fixed, half random, so a feeder's meters
    # do not reconnect in lockstep after a broker restart. rnd16: a random int in [0, 65535].
    if attempt > 20:
        attempt = 20
    d = lo << attempt
    if d > hi:
        d = hi
    half = d // 2
    return half + (half * rnd16) // 65535


class Publisher:
    def __init__(self, hal, cfg, outbox, will=None, log=None, buf=None):
        br = cfg["broker"]
        self.host, self.port, self.tls = mqtt.parse_url(br["url"])
        self.hal = hal
        self.outbox = outbox
        self.user = br.get("username")
        self.password = br.get("password")
        self.client_id = br.get("client_id") or cfg["meter_id"]
        self.keepalive_s = br["keepalive_s"]
        self.ack_timeout = br["ack_timeout_ms"]
        self.window = br["inflight"]
        self.backoff = (br["backoff_min_ms"], br["backoff_max_ms"])
        self.ca_path = br.get("ca_der_path")
        self.t_reading = frame.topic(cfg["meter_id"], "reading").encode()
        self.t_status = frame.topic(cfg["meter_id"], "status").encode()
        self._will = will      # callable -> sealed status frame bytes (taken once per boot)
        self._will_msg = None
        self._log = log or (lambda m: None)
        self.connected = False
        self.connects = 0
        self.reconnects = 0    # successful connects after the first
        self.retries = 0       # PUBLISH retransmissions (DUP) within a session
        self.failures = 0      # failed connection attempts
        self.last_error = None
        self._kick = False      # set by kick(), PUBACK, a lost link: wakes the pump
        self._inflight = []    # messages in flight (_PID.._ACKED), in send order
        self._sent_hi = (0, 0)  # everything before was sent in an earlier session: DUP on resend
        self._pid = 0
        self._ping_at = None
        self._stop = False
        self._stop_when_idle = False
        self._ctx = None
        self._buf = buf or bytearray(384)  # MQTT packet buffer, kept across sessions

    def kick(self):
        # A new record is in the outbox.
        self._kick = True

    def idle(self):
        return self.outbox.depth == 0 and not self._inflight

    async def run(self):
        attempt = 0
        while not self._stop:
            if self._stop_when_idle and self.idle():
                return
            try:
                await self._session()
                attempt = 0
            except (OSError, EOFError) as e:  # network and MQTT errors; EOF: broker closed
                self.failures += 1
                self.last_error = repr(e)
                self._log("mqtt: %r" % (e,))
            except asyncio.TimeoutError:
                self.failures += 1
                self.last_error = "timeout"
                self._log("mqtt: timeout")
            except MemoryError as e:
                # Heap exhausted mid-session (a 64 KB heap leaves little slack): drop the
                # session, free what it held and reconnect after the backoff. Never let the
                # publisher task die: asyncio would not report it and nothing would be sent.
                self.failures += 1
                self.last_error = "MemoryError"
                gc.collect()
                self._log("mqtt: out of memory, session dropped: %s" % e)
            except Exception as e:  # noqa: BLE001 - anything else must not end the task either
                self.failures += 1
                self.last_error = repr(e)
                self._log("mqtt: unexpected %r" % (e,))
            if self.connected:
                attempt = 0  # a session that held: the next reconnect starts at the short delay
            self.connected = False
            if self._stop or (self._stop_when_idle and self.idle()):
                return
            d = backoff_ms(attempt, self.backoff[0], self.backoff[1],
                           int.from_bytes(os.urandom(2), "big"))
            attempt += 1
            await asyncio.sleep_ms(d)

    async def stop_when_drained(self, timeout_ms=0):
        # Finish sending what the outbox holds, then DISCONNECT (no will). True if drained.
        self._stop_when_idle = True
        self._kick = True
        t0 = time.ticks_ms()
        while not (self.idle() and not self.connected):
            if timeout_ms and _since(t0) > timeout_ms:
                self._stop = True
                self._kick = True
                return False
            await asyncio.sleep_ms(20)
        return True

    async def _session(self):
        if self._will_msg is None and self._will is not None:
            self._will_msg = self._will()
        if self.tls and self._ctx is None:
            der = None
            if self.ca_path:
                with open(self.ca_path, "rb") as f:
                    der = f.read()
            self._ctx = mqtt.tls_context(der)
        r, w = await asyncio.wait_for_ms(
            self.hal.open_connection(self.host, self.port, self._ctx if self.tls else None),
            _CONNECT_TIMEOUT_MS)
        sess = mqtt.Session(r, w, self._buf)
        rx = up = None
        try:
            await asyncio.wait_for_ms(
                sess.connect(self.client_id, self.keepalive_s, self.user, self.password,
                             self.t_status if self._will_msg else None, self._will_msg),
                _CONNECT_TIMEOUT_MS)
            self.connected = True
            up = sess.rx_at = time.ticks_ms()  # rx_at: last packet from the broker
            if self.connects:
                self.reconnects += 1
            self.connects += 1
            self._log("mqtt: connected to %s:%d (outbox %d)" % (self.host, self.port, self.outbox.depth))
            self._inflight = []
            self._ping_at = None
            rx = asyncio.create_task(self._receiver(sess))
            await self._pump(sess, rx)
        finally:
            if rx is not None:
                rx.cancel()
            sess.close()
            self._inflight = []
            if up is not None and _since(up) <= self.keepalive_s * 1000:
                # Dropped as soon as it was up (e.g. two devices sharing a client id): count it
                # as a failed attempt, so the backoff keeps growing.
                self.connected = False

    async def _publish(self, sess, data, pid, dup):
        await asyncio.wait_for_ms(
            sess.publish(self.t_status if data[frame.KIND_OFF] == frame.KIND_STATUS else self.t_reading, data,
                         pid, dup), self.ack_timeout)

    async def _pump(self, sess, rx):
        cursor = self.outbox.first()
        last_tx = time.ticks_ms()
        ka_ms = self.keepalive_s * 1000
        while True:
            self._kick = False
            if rx.done():
                raise OSError("connection lost")
            # Fill the window, oldest first.
            while len(self._inflight) < self.window:
                rec = self.outbox.read(cursor)
                if rec is None:
                    break
                data, at, nxt = rec
                pid = self._pid = self._pid % 65535 + 1
                await self._publish(sess, data, pid, at < self._sent_hi)
                last_tx = time.ticks_ms()
                self._inflight.append([pid, at, nxt, last_tx, False])
                cursor = nxt
                if nxt > self._sent_hi:
                    self._sent_hi = nxt
            # Retransmit what the broker has not acknowledged in time.
            for e in self._inflight:
                if not e[_ACKED] and _since(e[_SENT]) > self.ack_timeout:
                    rec = self.outbox.read(e[_POS])
                    data, at, _nxt = rec or (None, None, None)
                    if at != e[_POS]:
                        e[_ACKED] = True  # dropped by overflow meanwhile: nothing to resend
                        continue
                    self.retries += 1
                    await self._publish(sess, data, e[_PID], True)
                    e[_SENT] = last_tx = time.ticks_ms()
            self._advance()
            # Keepalive: ping at half the interval; a missing PINGRESP means a dead link. With
            # messages in flight, retransmissions keep last_tx fresh and no ping is sent: then
            # silence from the broker for a whole keepalive means the same.
            if self._ping_at is not None and _since(self._ping_at) > ka_ms:
                raise OSError("no PINGRESP")
            if self._inflight and _since(sess.rx_at) > ka_ms:
                raise OSError("no PUBACK for a keepalive period")
            if self._ping_at is None and _since(last_tx) >= ka_ms // 2:
                await asyncio.wait_for_ms(sess.ping(), self.ack_timeout)
                self._ping_at = last_tx = time.ticks_ms()
            if (self._stop_when_idle and self.idle()) or self._stop:
                await sess.disconnect()
                return
            # Idle until kicked or the housekeeping tick, polling a flag: no Event, no task
            # per wait (asyncio.Event + wait_for cost heap on a 64 KB meter).
            t = time.ticks_ms()
            while not self._kick and _since(t) < _TICK_MS:
                await asyncio.sleep_ms(_POLL_MS)

    def _advance(self):
        # Acknowledge the contiguous acked prefix in the outbox, in send order.
        moved = False
        while self._inflight and self._inflight[0][_ACKED]:
            e = self._inflight.pop(0)
            self.outbox.ack(e[_POS], e[_NEXT])
            moved = True
        return moved

    async def _receiver(self, sess):
        try:
            while True:
                t, _, body = await sess.read_packet()
                sess.rx_at = time.ticks_ms()
                if t == mqtt.PUBACK and len(body) == 2:
                    pid = (body[0] << 8) | body[1]
                    for e in self._inflight:
                        if e[_PID] == pid:
                            e[_ACKED] = True
                            break
                    self._advance()
                elif t == mqtt.PINGRESP:
                    self._ping_at = None
                self._kick = True
        except (OSError, EOFError) as e:  # EOFError: the broker closed the stream
            self.last_error = repr(e)
        finally:
            self._kick = True  # wake the pump so it sees the lost connection
