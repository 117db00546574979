# Frame v1 opening: structural header checks, then verify-then-decrypt. The gateway and tools
# use this half; a meter only seals (protocol/frame.py) and never loads it. Byte layout and the
# security argument are in protocol/SPEC.md. Pure code for MicroPython and CPython.
import struct

from . import errors
from .aes import cbc_decrypt, pkcs7_unpad
from .frame import (
    HEADER_FMT,
    HEADER_LEN,
    IV_LEN,
    KIND_READING,
    KIND_STATUS,
    MAGIC,
    MAX_FRAME,
    MIN_FRAME,
    READING_FMT,
    STATUS_FMT,
    STATUS_KEYS,
    TAG_LEN,
    VERSION,
    valid_meter_id,
)
from .hmac_sha256 import ct_equal, hmac_sha256

KIND_NAMES = {KIND_READING: "reading", KIND_STATUS: "status"}
READING_KEYS = ("billing_wh", "analytics_wh", "flags", "samples", "clipped", "missing_s")
# padded body lengths (PKCS#7 always adds 1..16 bytes)
BODY_LEN = {KIND_READING: 32, KIND_STATUS: 48}


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
