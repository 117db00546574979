# The household's own copy of a kind 3 reading (protocol/e2e.py seals it): open it, fingerprint
# the key. Used by `meterveil household show` and any client the household runs; never by the
# meter, the gateway or the decryption role. MicroPython and CPython.
import binascii
import hashlib
import struct

from . import errors
from .aes import cbc_decrypt, pkcs7_unpad
from .e2e import HOUSEHOLD_FMT, household_aad
from .hmac_sha256 import ct_equal, hmac_sha256

BLOB_LEN = 48   # iv (16) + AES-CBC of the 14-byte body (16) + tag (16): what the gateway stores
KEY_LEN = 32


def fingerprint(household_key):
    # What the utility may keep about a household key: enough to match a card, not to open a copy.
    h = hashlib.sha256(b"meterveil/v1/household-fingerprint")
    h.update(household_key)
    return binascii.hexlify(h.digest()[:16]).decode()


def open_copy(hkeys, blob, meter_id, counter, interval_start, interval_len):
    # Verify the tag (bound to meter, counter and interval), then decrypt. FrameError subclasses.
    if len(blob) != BLOB_LEN:
        raise errors.BadLength("household copy of %d bytes" % len(blob))
    iv, hct, tag = blob[:16], blob[16:32], blob[32:48]
    aad = household_aad(meter_id, counter, interval_start, interval_len)
    if not ct_equal(hmac_sha256(hkeys[1], aad + iv + hct)[:16], tag):
        raise errors.BadTag("household tag does not verify")
    body = pkcs7_unpad(cbc_decrypt(hkeys[0], iv, hct))
    if body is None or len(body) != struct.calcsize(HOUSEHOLD_FMT):
        raise errors.BadPadding("bad household body")
    b, f, s, c, m = struct.unpack(HOUSEHOLD_FMT, body)
    return {"billing_wh": b, "flags": f, "samples": s, "clipped": c, "missing_s": m}
