# Kind 3 frames (end-to-end mode), sealing half: the meter encrypts its packed reading under the
# utility's Paillier public key and seals its exact energy for the household; the gateway can
# check the MAC and header but opens neither. The opening halves are protocol/opener.py
# (split_e2e: what the gateway stores) and protocol/household.py (the household's copy), so a
# meter loads neither. Layout and argument: protocol/SPEC.md "Kind 3". MicroPython and CPython;
# sealing reuses frame.py's AES-CBC and HMAC, so a meter loads nothing new for them.
import struct

from . import frame

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

META_FMT = ">HH"            # public flags (CLOCK_UNSYNCED | PARTIAL_INTERVAL only), missing_s
HOUSEHOLD_FMT = ">IHIHH"    # billing_wh, flags (all), samples, clipped, missing_s: 14 bytes
PUBLIC_FLAGS = const(3)     # frame.FLAG_CLOCK_UNSYNCED | frame.FLAG_PARTIAL_INTERVAL
# body = meta (4) + Paillier ciphertext (bytes of n^2) + household ciphertext (16) + household tag (16)
OVERHEAD = const(36)


def body_len(size):
    # size: bytes of a ciphertext mod n^2 (paillier.nsq_len)
    return OVERHEAD + size


def household_keys(household_key):
    # Distinct HKDF labels: the household key never doubles as a meter key.
    if len(household_key) != 32:
        raise ValueError("household key must be 32 bytes")
    from .hmac_sha256 import hkdf_sha256
    enc = hkdf_sha256(household_key, frame.HKDF_SALT, b"meterveil/v1/household-aes-128-cbc", 16)
    mac = hkdf_sha256(household_key, frame.HKDF_SALT, b"meterveil/v1/household-hmac-sha256", 32)
    return enc, mac


def household_aad(meter_id, counter, interval_start, interval_s):
    # What the household tag binds besides its ciphertext: which meter, which frame, which interval.
    # Built from stored row fields, so the household verifies without the original frame.
    mid = meter_id.encode()
    return struct.pack(">16sIIH", mid + bytes(16 - len(mid)), counter, interval_start, interval_s)


def seal(keys, hkeys, header, fields, n, rho, iv):
    # keys: the meter's (enc, mac) (only mac is used); hkeys: household (enc, mac); rho: a fresh
    # obfuscator hs^a mod n^2, used once; iv: 16 random bytes (os.urandom). Returns the frame.
    from .paillier import encrypt, nsq_len, pack
    size = nsq_len(n)
    c = encrypt(n, pack(fields["billing_wh"], fields["analytics_wh"]), rho)
    h = dict(header)
    h["kind"] = frame.KIND_READING_PAILLIER
    head = frame._pack_header(h, body_len(size))
    for name, hi in (("flags", 0xFFFF), ("samples", 0xFFFFFFFF), ("clipped", 0xFFFF),
                     ("missing_s", 0xFFFF)):
        frame._check_range(name, fields[name], 0, hi)
    hb = struct.pack(HOUSEHOLD_FMT, fields["billing_wh"], fields["flags"], fields["samples"],
                     fields["clipped"], fields["missing_s"]) + b"\x02\x02"  # PKCS#7 to 16 bytes
    hct = frame._cbc(hkeys[0], iv, hb)
    aad = household_aad(header["meter_id"], header["counter"], header["interval_start"],
                        header["interval_len"])
    signed = (head + iv + struct.pack(META_FMT, fields["flags"] & PUBLIC_FLAGS, fields["missing_s"])
              + c.to_bytes(size, "big") + hct + frame._hmac(hkeys[1], aad + iv + hct)[:frame.TAG_LEN])
    return signed + frame._hmac(keys[1], signed)[:frame.TAG_LEN]
