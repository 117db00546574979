# Frame v1 opening: structural header checks, then verify-then-decrypt. The gateway and tools
# use this half; a meter only seals (protocol/frame.py) and never loads it. Byte layout and the
# security argument are in protocol/SPEC.md. Pure code for MicroPython and CPython.
import struct

from . import errors
from .aes import cbc_decrypt, pkcs7_unpad
from .e2e import META_FMT, OVERHEAD
from .frame import (
    HEADER_FMT,
    HEADER_LEN,
    IV_LEN,
    KIND_READING,
    KIND_READING_PAILLIER,
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

KIND_NAMES = {KIND_READING: "reading", KIND_STATUS: "status", KIND_READING_PAILLIER: "reading_e2e"}
READING_KEYS = ("billing_wh", "analytics_wh", "flags", "samples", "clipped", "missing_s")
# padded body lengths (PKCS#7 always adds 1..16 bytes)
BODY_LEN = {KIND_READING: 32, KIND_STATUS: 48}
# kind 3: one length per Paillier key size (n of 1024, 1536, 2048, 3072 bits: n^2 of 256..768 bytes);
# the gateway checks it against the key it has
E2E_BODY_LENS = tuple(OVERHEAD + x for x in (256, 384, 512, 768))


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
    if kind not in BODY_LEN and kind != KIND_READING_PAILLIER:
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
    if kind == KIND_READING_PAILLIER:
        if body_len not in E2E_BODY_LENS:
            raise errors.BadLength("body_len %d is no kind 3 length" % body_len)
    elif body_len != BODY_LEN[kind]:
        raise errors.BadLength("body_len %d, kind %d needs %d" % (body_len, kind, BODY_LEN[kind]))
    need = MIN_FRAME + body_len
    if n < need:
        raise errors.Truncated("frame of %d bytes, header says %d" % (n, need))
    if n > need:
        raise errors.BadLength("%d bytes trail the tag" % (n - need))
    return {"kind": kind, "meter_id": meter_id, "counter": counter, "interval_start": start,
            "interval_len": ilen, "epsilon_milli": eps, "clamp_wh": clamp, "m": m,
            "body_len": body_len}


def verify_frame(mac_key, frame, topic_meter=None, header=None):
    # Header checks and the tag, nothing decrypted: all a kind 3 frame allows the gateway.
    # `header`: this frame's parse_header result, if the caller already has it.
    if header is None:
        header = parse_header(frame)
    if topic_meter is not None and topic_meter != header["meter_id"]:
        raise errors.WrongMeter("header meter %s on topic of %s" % (header["meter_id"], topic_meter))
    split = len(frame) - TAG_LEN
    if not ct_equal(hmac_sha256(mac_key, bytes(frame[:split]))[:TAG_LEN], frame[split:]):
        raise errors.BadTag("tag does not verify")
    return header


def open_frame(keys, frame, topic_meter=None):
    # Verify, then decrypt: nothing is decrypted before the tag checks out (no padding oracle).
    enc_key, mac_key = keys
    header = verify_frame(mac_key, frame, topic_meter)
    if header["kind"] == KIND_READING_PAILLIER:
        raise errors.UnsupportedKind("kind 3 has no AES body: verify_frame, then protocol.e2e")
    signed = bytes(frame[:len(frame) - TAG_LEN])
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


def split_e2e(frame, body_len):
    # (public meta, Paillier ciphertext as an int, household copy) of a verified kind 3 frame;
    # the household copy is iv + ciphertext + tag, 48 bytes (protocol/household.py opens it).
    o = HEADER_LEN + IV_LEN
    flags, missing = struct.unpack(META_FMT, bytes(frame[o:o + 4]))
    size = body_len - OVERHEAD
    c0 = o + 4
    ct = int.from_bytes(bytes(frame[c0:c0 + size]), "big")
    blob = bytes(frame[HEADER_LEN:o]) + bytes(frame[c0 + size:c0 + size + 32])
    return {"flags": flags, "missing_s": missing}, ct, blob
