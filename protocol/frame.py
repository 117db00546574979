# Frame v1: layout, sealing (encrypt-then-MAC) and opening. Byte layout and the security argument
# are in protocol/SPEC.md; keep the two in step. Pure code for MicroPython and CPython.
import os
import struct

from . import errors
from .aes import cbc_decrypt, cbc_encrypt, pkcs7_pad, pkcs7_unpad
from .hmac_sha256 import ct_equal, hkdf_sha256, hmac_sha256

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

MAGIC = b"MV"
VERSION = const(1)
KIND_READING = const(1)
KIND_STATUS = const(2)
KIND_READING_PAILLIER = const(3)  # reserved for end-to-end mode (SPEC.md); rejected in v1
KIND_NAMES = {KIND_READING: "reading", KIND_STATUS: "status"}

HEADER_FMT = ">2sBB16sIIHHIHH"
HEADER_LEN = const(40)
IV_LEN = const(16)
TAG_LEN = const(16)
MIN_FRAME = const(72)   # header + IV + tag, empty body
MAX_FRAME = const(1024)
MAX_BODY = const(952)   # MAX_FRAME - MIN_FRAME, a multiple of 16

READING_FMT = ">IiHIHH"
READING_KEYS = ("billing_wh", "analytics_wh", "flags", "samples", "clipped", "missing_s")
STATUS_FMT = ">IIIIIIIHHBBB"
STATUS_KEYS = ("uptime_s", "free_heap", "outbox_depth", "outbox_overflow", "reconnects",
               "publish_retries", "dp_spend_milli", "readings_today", "boot_count")
# padded body lengths (PKCS#7 always adds 1..16 bytes)
BODY_LEN = {KIND_READING: 32, KIND_STATUS: 48}

FLAG_CLOCK_UNSYNCED = const(1)
FLAG_PARTIAL_INTERVAL = const(2)
FLAG_CLAMPED = const(4)
FLAG_ADC_CLIPPED = const(8)

HKDF_SALT = b"meterveil/v1/hkdf-salt"
_U16 = 0xFFFF
_U32 = 0xFFFFFFFF


def derive_keys(master_key):
    # Distinct labels give independent AES and MAC keys from one provisioned secret.
    if len(master_key) != 32:
        raise ValueError("master key must be 32 bytes")
    enc = hkdf_sha256(master_key, HKDF_SALT, b"meterveil/v1/aes-128-cbc", 16)
    mac = hkdf_sha256(master_key, HKDF_SALT, b"meterveil/v1/hmac-sha256", 32)
    return enc, mac


def topic(meter_id, leaf):
    return "meterveil/v1/" + meter_id + "/" + leaf


def valid_meter_id(meter_id):
    if not 1 <= len(meter_id) <= 16:
        return False
    for c in meter_id:
        if not (("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c in "-_"):
            return False
    return True


def _check_range(name, value, lo, hi):
    # MicroPython's struct.pack silently truncates: range checks must be explicit.
    if not isinstance(value, int) or value < lo or value > hi:
        raise errors.BadField(name + " out of range: " + repr(value))


def _pack_header(h, body_len):
    meter_id = h["meter_id"]
    if not valid_meter_id(meter_id):
        raise errors.BadField("meter_id must be 1-16 chars of A-Za-z0-9_-: " + repr(meter_id))
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
    raise errors.UnsupportedKind("kind " + repr(kind))


def seal(keys, header, fields, iv=None):
    # Encrypt-then-MAC: AES-128-CBC over the body, HMAC-SHA256 (first 16 bytes) over
    # header + IV + ciphertext. The header stays readable so the gateway can route and pick keys.
    enc_key, mac_key = keys
    kind = header["kind"]
    body = pkcs7_pad(_pack_body(kind, fields))
    head = _pack_header(header, len(body))
    if iv is None:
        iv = os.urandom(IV_LEN)
    elif len(iv) != IV_LEN:
        raise ValueError("iv must be 16 bytes")
    ct = cbc_encrypt(enc_key, iv, body)
    signed = head + iv + ct
    return signed + hmac_sha256(mac_key, signed)[:TAG_LEN]


def parse_header(frame):
    # Structural checks only (no key needed): lets the gateway reject junk cheaply and
    # look up the sender's keys. Order matters: the cheapest, least ambiguous checks first.
    n = len(frame)
    if n > MAX_FRAME:
        raise errors.Oversize("frame of %d bytes exceeds %d" % (n, MAX_FRAME))
    if n < MIN_FRAME:
        raise errors.Truncated("frame of %d bytes is shorter than %d" % (n, MIN_FRAME))
    magic, version, kind, mid, counter, start, ilen, eps, clamp, m, body_len = struct.unpack(
        HEADER_FMT, bytes(frame[:HEADER_LEN]))
    if magic != MAGIC:
        raise errors.BadMagic("bad magic " + repr(magic))
    if version != VERSION:
        raise errors.UnsupportedVersion("version %d, expected %d" % (version, VERSION))
    if kind not in BODY_LEN:
        raise errors.UnsupportedKind("kind %d" % kind)
    end = 0
    while end < 16 and mid[end] != 0:
        end += 1
    for i in range(end, 16):
        if mid[i] != 0:
            raise errors.BadField("meter_id padding is not NUL")
    try:
        meter_id = mid[:end].decode()
    except UnicodeError:
        raise errors.BadField("meter_id is not ASCII")
    if not valid_meter_id(meter_id):
        raise errors.BadField("meter_id has characters outside A-Za-z0-9_-")
    if body_len != BODY_LEN[kind]:
        raise errors.BadLength("body_len %d, kind %d needs %d" % (body_len, kind, BODY_LEN[kind]))
    need = MIN_FRAME + body_len
    if n < need:
        raise errors.Truncated("frame of %d bytes, header says %d" % (n, need))
    if n > need:
        raise errors.BadLength("%d bytes trail the tag" % (n - need))
    return {"kind": kind, "meter_id": meter_id, "counter": counter, "interval_start": start,
            "interval_len": ilen, "epsilon_milli": eps, "clamp_wh": clamp, "m": m,
            "body_len": body_len}


def open_frame(keys, frame, topic_meter=None):
    # Verify, then decrypt: nothing is decrypted before the tag checks out (no padding oracle).
    header = parse_header(frame)
    if topic_meter is not None and topic_meter != header["meter_id"]:
        raise errors.WrongMeter("header meter %s on topic of %s" % (header["meter_id"], topic_meter))
    enc_key, mac_key = keys
    split = len(frame) - TAG_LEN
    signed = bytes(frame[:split])
    if not ct_equal(hmac_sha256(mac_key, signed)[:TAG_LEN], frame[split:]):
        raise errors.BadTag("tag does not verify")
    iv = signed[HEADER_LEN:HEADER_LEN + IV_LEN]
    body = pkcs7_unpad(cbc_decrypt(enc_key, iv, signed[HEADER_LEN + IV_LEN:]))
    if body is None:
        raise errors.BadPadding("bad PKCS#7 padding")
    kind = header["kind"]
    if kind == KIND_READING:
        if len(body) != struct.calcsize(READING_FMT):
            raise errors.BadLength("reading body of %d bytes" % len(body))
        fields = dict(zip(READING_KEYS, struct.unpack(READING_FMT, body)))
    else:
        if len(body) != struct.calcsize(STATUS_FMT):
            raise errors.BadLength("status body of %d bytes" % len(body))
        vals = struct.unpack(STATUS_FMT, body)
        fields = dict(zip(STATUS_KEYS, vals[:9]))
        fields["fw_version"] = [vals[9], vals[10], vals[11]]
    return {"header": header, "fields": fields}
