# MQTT 3.1.1 wire layer for the meter: packet encoding into one preallocated buffer, packet
# decoding, and one session over asyncio streams (TCP or TLS). Connection policy (reconnect,
# backoff, QoS 1 retransmission, outbox draining) lives in publisher.py, as umqtt.robust sits
# over umqtt.simple.
# Why our own client: umqtt.simple/robust are not installable from PyPI (their sdists have no
# build configuration; `mip install` needs the internet) and mqtt_as imports `network` and
# `machine.unique_id` at import time, so neither loads on the unix port where CI runs the
# firmware. This module imports nothing board-specific and also imports on CPython (tests).

try:
    from micropython import const
except ImportError:  # CPython (tests)
    def const(x):
        return x

_CONNECT = const(0x10)
_CONNACK = const(0x20)
PUBLISH = const(0x30)
PUBACK = const(0x40)
_PINGREQ = const(0xC0)
PINGRESP = const(0xD0)
DISCONNECT = const(0xE0)
_MAX_REMAINING = const(268435455)
_PINGREQ_PKT = const(b"\xc0\x00")
_DISCONNECT_PKT = const(b"\xe0\x00")
# CONNACK return codes 1-5 (one string: module-level names stay interned on a meter)
_CONNACK_REASONS = const("unacceptable protocol version/identifier rejected/server unavailable/"
                         "bad username or password/not authorized")


def parse_url(url):
    # "mqtt://host:port" or "mqtts://host[:port]" -> (host, port, tls) or None.
    if not isinstance(url, str):
        return None
    if url.startswith("mqtt://"):
        rest, tls, port = url[7:], False, 1883
    elif url.startswith("mqtts://"):
        rest, tls, port = url[8:], True, 8883
    else:
        return None
    rest = rest.rstrip("/")
    if ":" in rest:
        host, p = rest.rsplit(":", 1)
        try:
            port = int(p)
        except ValueError:
            return None
    else:
        host = rest
    if not host or "/" in host or not 1 <= port <= 65535:
        return None
    return host, port, tls


class MQTTError(OSError):
    # An OSError so the publisher's one `except OSError` handles network and protocol failures
    # alike; `reason` is the counted code.
    def __init__(self, reason, msg=""):
        super().__init__(reason + (": " + msg if msg else ""))
        self.reason = reason


def _b(s):
    if s is None:
        return None
    return s.encode() if isinstance(s, str) else s


def varlen_size(n):
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def put_varlen(buf, i, n):
    if n < 0 or n > _MAX_REMAINING:
        raise MQTTError("bad_length", "remaining length %d" % n)
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            buf[i] = b | 0x80
            i += 1
        else:
            buf[i] = b
            return i + 1


def put_str(buf, i, s):
    n = len(s)
    buf[i] = n >> 8
    buf[i + 1] = n & 0xFF
    buf[i + 2:i + 2 + n] = s
    return i + 2 + n


def encode_connect(buf, client_id, keepalive_s, username=None, password=None,
                   will_topic=None, will_msg=None, will_qos=1, will_retain=False, clean=True):
    # Returns the packet length in `buf`. Will = a sealed status frame on the status topic.
    cid, user, pw = _b(client_id), _b(username), _b(password)
    wt, wm = _b(will_topic), will_msg
    flags = 0x02 if clean else 0
    rem = 10 + 2 + len(cid)
    if wt is not None:
        flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
        rem += 2 + len(wt) + 2 + len(wm)
    if user is not None:
        flags |= 0x80
        rem += 2 + len(user)
    if pw is not None:
        flags |= 0x40
        rem += 2 + len(pw)
    if 1 + varlen_size(rem) + rem > len(buf):
        raise MQTTError("too_big", "CONNECT of %d bytes" % rem)
    buf[0] = _CONNECT
    i = put_varlen(buf, 1, rem)
    i = put_str(buf, i, b"MQTT")
    buf[i] = 4  # protocol level 3.1.1
    buf[i + 1] = flags
    buf[i + 2] = keepalive_s >> 8
    buf[i + 3] = keepalive_s & 0xFF
    i = put_str(buf, i + 4, cid)
    if wt is not None:
        i = put_str(buf, i, wt)
        i = put_str(buf, i, wm)
    if user is not None:
        i = put_str(buf, i, user)
    if pw is not None:
        i = put_str(buf, i, pw)
    return i


def encode_publish(buf, topic, payload_len, pid, qos=1, dup=False, retain=False):
    # Fixed header + topic + packet id into `buf`; the payload is written separately (no copy).
    t = _b(topic)
    rem = 2 + len(t) + payload_len + (2 if qos else 0)
    buf[0] = PUBLISH | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    i = put_varlen(buf, 1, rem)
    i = put_str(buf, i, t)
    if qos:
        buf[i] = pid >> 8
        buf[i + 1] = pid & 0xFF
        i += 2
    return i


def parse_packet(data, i=0):
    # One packet from bytes: (type, flags, body, next_index), or None if incomplete.
    n = len(data)
    if i >= n:
        return None
    first = data[i]
    j = i + 1
    rem = 0
    shift = 0
    while True:
        if j >= n:
            return None
        b = data[j]
        j += 1
        rem |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 21:
            raise MQTTError("bad_length", "remaining length over 4 bytes")
    if j + rem > n:
        return None
    return first & 0xF0, first & 0x0F, bytes(data[j:j + rem]), j + rem


def check_connack(body):
    if len(body) != 2:
        raise MQTTError("bad_connack", "length %d" % len(body))
    code = body[1]
    if code:
        raise MQTTError("refused", _CONNACK_REASONS.split("/")[code - 1] if 1 <= code <= 5 else "code %d" % code)
    return body[0] & 1  # session present


class Session:
    # One connected MQTT session over an asyncio (reader, writer) pair. Raises OSError.
    def __init__(self, reader, writer, buf=None):
        # buf: packet buffer (the publisher passes one it keeps across sessions)
        self.r = reader
        self.w = writer
        self.buf = buf or bytearray(384)
        self.mv = memoryview(self.buf)

    async def _send(self, n, payload=None):
        self.w.write(bytes(self.mv[:n]))
        if payload is not None:
            self.w.write(payload)
        await self.w.drain()

    async def connect(self, client_id, keepalive_s, username=None, password=None,
                      will_topic=None, will_msg=None, clean=True):
        n = encode_connect(self.buf, client_id, keepalive_s, username, password,
                           will_topic, will_msg, 1, False, clean)
        await self._send(n)
        t, _, body = await self.read_packet()
        if t != _CONNACK:
            raise MQTTError("bad_connack", "packet type 0x%02x" % t)
        return check_connack(body)

    async def publish(self, topic, payload, pid, dup=False, qos=1):
        n = encode_publish(self.buf, topic, len(payload), pid, qos, dup)
        await self._send(n, payload)

    async def ping(self):
        self.w.write(_PINGREQ_PKT)
        await self.w.drain()

    async def disconnect(self):
        self.w.write(_DISCONNECT_PKT)
        await self.w.drain()

    async def read_packet(self):
        first = await self.r.readexactly(1)
        rem = 0
        shift = 0
        while True:
            b = (await self.r.readexactly(1))[0]
            rem |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MQTTError("bad_length", "remaining length over 4 bytes")
        if rem > 4096:  # we only subscribe to nothing: CONNACK/PUBACK/PINGRESP are tiny
            raise MQTTError("too_big", "inbound packet of %d bytes" % rem)
        body = await self.r.readexactly(rem) if rem else b""
        return first[0] & 0xF0, first[0] & 0x0F, body

    def close(self):
        try:
            self.w.close()
        except Exception:  # already closed or reset: nothing left to release
            pass


def tls_context(ca_der):
    # MicroPython's ssl wants the CA as DER bytes via cadata (PEM fails); lazy import keeps
    # mbedTLS out of RAM when TLS is not configured.
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_der is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cadata=ca_der)
        except TypeError:  # some ports take positional (cafile, cadata)
            ctx.load_verify_locations(None, ca_der)
    return ctx
