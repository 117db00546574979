# Frame v1: layout, constants and sealing (encrypt-then-MAC). Opening (parse_header, open_frame)
# lives in protocol/opener.py: a meter only seals, and the split keeps the opening half and the
# error classes out of a 64 KB heap. `frame.parse_header` / `frame.open_frame` still resolve
# (lazily, via the module __getattr__ at the end) for existing callers. Byte layout and the
# security argument are in protocol/SPEC.md; keep the two in step. MicroPython and CPython.
# On MicroPython sealing needs only cryptolib and hashlib: AES-CBC runs over one reused ECB
# context and HMAC is inlined, so neither aes.py nor hmac_sha256.py stays loaded (derive_keys
# imports the HKDF once, at boot).
import hashlib
import os
import struct

try:
    import cryptolib
except ImportError:  # CPython: AES from `cryptography`, through protocol/aes.py
    cryptolib = None

try:
    from hmac import digest as _c_hmac  # CPython only; MicroPython has no hmac module
except ImportError:
    _c_hmac = None

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

MAGIC = b"MV"
VERSION = const(1)
KIND_READING = const(1)
KIND_STATUS = const(2)
KIND_READING_PAILLIER = const(3)  # end-to-end mode: Paillier ciphertext + household copy (e2e.py)

HEADER_FMT = ">2sBB16sIIHHIHH"
HEADER_LEN = const(40)
# Byte offsets in HEADER_FMT, for readers that peek at a stored frame without parsing it.
KIND_OFF = const(3)
INTERVAL_START_OFF = const(24)
IV_LEN = const(16)
TAG_LEN = const(16)
MIN_FRAME = const(72)   # header + IV + tag, empty body
MAX_FRAME = const(1024)
_MAX_BODY = const(952)   # MAX_FRAME - MIN_FRAME, a multiple of 16

READING_FMT = ">IiHIHH"
STATUS_FMT = ">IIIIIIIHHBBB"
STATUS_KEYS = ("uptime_s", "free_heap", "outbox_depth", "outbox_overflow", "reconnects",
               "publish_retries", "dp_spend_milli", "readings_today", "boot_count")

FLAG_CLOCK_UNSYNCED = const(1)
FLAG_PARTIAL_INTERVAL = const(2)
FLAG_CLAMPED = const(4)
FLAG_ADC_CLIPPED = const(8)
FLAG_OVER_RATED = const(16)         # rms current above the CT's rated_amps in some block
FLAG_CLIPPED_SATURATED = const(32)  # more clipped samples than the u16 `clipped` field holds

HKDF_SALT = b"meterveil/v1/hkdf-salt"
_U16 = const(0xFFFF)
_U32 = 0xFFFFFFFF


def derive_keys(master_key):
    # Distinct labels give independent AES and MAC keys from one provisioned secret.
    if len(master_key) != 32:
        raise ValueError("master key must be 32 bytes")
    from .hmac_sha256 import hkdf_sha256  # a meter derives once at boot, then unloads it
    enc = hkdf_sha256(master_key, HKDF_SALT, b"meterveil/v1/aes-128-cbc", 16)
    mac = hkdf_sha256(master_key, HKDF_SALT, b"meterveil/v1/hmac-sha256", 32)
    return enc, mac


# MQTT topics: TOPIC_ROOT/<meter_id>/<leaf>. The one place the topic layout is spelled; the gateway's
# subscriptions, the broker ACL and the meter's publisher all derive from it.
TOPIC_ROOT = "meterveil/v1"
TOPIC_LEAVES = ("reading", "status")


def topic(meter_id, leaf):
    return TOPIC_ROOT + "/" + meter_id + "/" + leaf


def valid_meter_id(meter_id):
    if not 1 <= len(meter_id) <= 16:
        return False
    # Checked as bytes: on MicroPython each character taken from a str is interned for good.
    for b in meter_id.encode():
        if not (97 <= b <= 122 or 65 <= b <= 90 or 48 <= b <= 57 or b in (45, 95)):  # a-z A-Z 0-9 - _
            return False
    return True


def _fail(cls_name, msg):
    # The error classes are imported only when a frame is actually bad: sealing valid frames
    # on a meter never loads them (11 classes, ~4 KB of heap on the unix port).
    from . import errors
    raise getattr(errors, cls_name)(msg)


def _check_range(name, value, lo, hi):
    # MicroPython's struct.pack silently truncates: range checks must be explicit.
    if not isinstance(value, int) or value < lo or value > hi:
        _fail("BadField", name + " out of range: " + repr(value))


def _pack_header(h, body_len):
    meter_id = h["meter_id"]
    if not valid_meter_id(meter_id):
        _fail("BadField", "meter_id must be 1-16 chars of A-Za-z0-9_-: " + repr(meter_id))
    for name, hi in (("counter", _U32), ("interval_start", _U32), ("interval_len", _U16),
                     ("epsilon_milli", _U16), ("clamp_wh", _U32), ("m", _U16)):
        _check_range(name, h[name], 0, hi)
    mid = meter_id.encode()
    return struct.pack(HEADER_FMT, MAGIC, VERSION, h["kind"], mid + bytes(16 - len(mid)),
                       h["counter"], h["interval_start"], h["interval_len"],
                       h["epsilon_milli"], h["clamp_wh"], h["m"], body_len)


def _pack_body(kind, f):
    if kind == KIND_READING:
        _check_range("billing_wh", f["billing_wh"], 0, _U32)
        _check_range("analytics_wh", f["analytics_wh"], -0x80000000, 0x7FFFFFFF)
        for name, hi in (("flags", _U16), ("samples", _U32), ("clipped", _U16), ("missing_s", _U16)):
            _check_range(name, f[name], 0, hi)
        return struct.pack(READING_FMT, f["billing_wh"], f["analytics_wh"], f["flags"],
                           f["samples"], f["clipped"], f["missing_s"])
    if kind == KIND_STATUS:
        vals = []
        for name in STATUS_KEYS:
            _check_range(name, f[name], 0, _U16 if name in ("readings_today", "boot_count") else _U32)
            vals.append(f[name])
        fw = f["fw_version"]
        for part in fw:
            _check_range("fw_version", part, 0, 255)
        return struct.pack(STATUS_FMT, *vals, fw[0], fw[1], fw[2])
    _fail("UnsupportedKind", "kind " + repr(kind))


_ecb = [None, None]  # [key, cryptolib ECB context]: one AES key schedule for every seal


def _cbc(key, iv, body):
    # AES-128-CBC. On MicroPython by hand over one reused ECB context: cryptolib's CBC context
    # is single-use (it consumes its IV), and a fresh 320-byte context per seal fragments a
    # 64 KB heap. Same bytes as aes.cbc_encrypt (checked by the vectors on both runtimes).
    if cryptolib is None:
        from .aes import cbc_encrypt
        return cbc_encrypt(key, iv, body)
    if _ecb[0] != key:
        _ecb[0] = bytes(key)
        _ecb[1] = cryptolib.aes(key, 1)
    ecb = _ecb[1]
    out = bytearray(len(body))
    mv = memoryview(out)
    blk = bytearray(16)
    prev = iv
    for o in range(0, len(body), 16):
        for i in range(16):
            blk[i] = body[o + i] ^ prev[i]
        prev = mv[o:o + 16]
        ecb.encrypt(blk, prev)
    return out


def _hmac(key, msg):
    # HMAC-SHA256 (RFC 2104) core for keys of at most 64 bytes (the MAC key is 32).
    # hmac_sha256.hmac_sha256 wraps it for longer keys; RFC 4231 vectors check it on both runtimes.
    if _c_hmac is not None:  # CPython: the same function in C (a gateway checks >10,000 tags/s)
        return _c_hmac(key, msg, "sha256")
    k = bytearray(64)
    k[:len(key)] = key
    for i in range(64):
        k[i] ^= 0x36
    h = hashlib.sha256(k)
    h.update(msg)
    d = h.digest()
    for i in range(64):
        k[i] ^= 0x6A  # 0x36 ^ 0x5C: inner pad -> outer pad
    h = hashlib.sha256(k)
    h.update(d)
    return h.digest()


def seal(keys, header, fields, iv=None):
    # Encrypt-then-MAC: AES-128-CBC over the body, HMAC-SHA256 (first 16 bytes) over
    # header + IV + ciphertext. The header stays readable so the gateway can route and pick keys.
    enc_key, mac_key = keys
    kind = header["kind"]
    body = _pack_body(kind, fields)
    n = 16 - len(body) % 16
    body += bytes((n,)) * n  # PKCS#7
    head = _pack_header(header, len(body))
    if iv is None:
        iv = os.urandom(IV_LEN)
    elif len(iv) != IV_LEN:
        raise ValueError("iv must be 16 bytes")
    signed = head + iv + _cbc(enc_key, iv, body)
    return signed + _hmac(mac_key, signed)[:TAG_LEN]


def __getattr__(name):
    # Lazy aliases for the opening half (protocol/opener.py), loaded on first use.
    if name in ("parse_header", "open_frame", "verify_frame", "KIND_NAMES", "READING_KEYS", "BODY_LEN"):
        from . import opener
        return getattr(opener, name)
    raise AttributeError(name)
