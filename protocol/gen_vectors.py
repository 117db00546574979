"""Compute protocol/vectors.json (CPython only; run once, then the file is frozen and checked).

Independent anchors come first: RFC 4231 HMAC and RFC 5869 HKDF values typed from the RFCs are
asserted against both our code and CPython's own hmac / cryptography's HKDF before anything is
written. Frame vectors use fixed keys and IVs so both runtimes must reproduce the exact bytes.

    python -m meterveil.protocol.gen_vectors [--check]
"""

import hashlib
import hmac
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import errors, frame
from .hmac_sha256 import hkdf_sha256, hmac_sha256

OUT = Path(__file__).with_name("vectors.json")
OUT_E2E = Path(__file__).with_name("vectors_e2e.json")  # apart: Paillier numbers would crowd a 64 KB heap

# RFC 4231 section 4 (HMAC-SHA256); case 5 is the truncated-to-128-bit case.
RFC4231 = [
    ("0b" * 20, b"Hi There".hex(), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe".hex(), b"what do ya want for nothing?".hex(),
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    ("aa" * 20, "dd" * 50, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (bytes(range(1, 26)).hex(), "cd" * 50, "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    ("0c" * 20, b"Test With Truncation".hex(), "a3b6167473100ee06e0c796c2955552b"),
    ("aa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First".hex(),
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    ("aa" * 131, b"This is a test using a larger than block-size key and a larger than block-size data. "
     b"The key needs to be hashed before being used by the HMAC algorithm.".hex(),
     "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
]

# RFC 5869 appendix A.1 and A.3 (HKDF-SHA256).
RFC5869 = [
    ("0b" * 22, bytes(range(13)).hex(), bytes(range(0xF0, 0xFA)).hex(), 42,
     "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
    ("0b" * 22, "", "", 42,
     "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"),
]

MASTER = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")  # test fixture
MASTER2 = hashlib.sha256(b"meterveil test fixture: not a real key").digest()
IV = bytes.fromhex("f0e1d2c3b4a5968778695a4b3c2d1e0f")

HEADER = {"kind": frame.KIND_READING, "meter_id": "m0001", "counter": 7, "interval_start": 1763856000,
          "interval_len": 900, "epsilon_milli": 1000, "clamp_wh": 1000, "m": 10}
READINGS = [
    {"billing_wh": 123, "analytics_wh": -45, "flags": 0, "samples": 900, "clipped": 0, "missing_s": 0},
    {"billing_wh": 0, "analytics_wh": 0, "flags": frame.FLAG_PARTIAL_INTERVAL, "samples": 300,
     "clipped": 0, "missing_s": 600},
    {"billing_wh": 0xFFFFFFFF, "analytics_wh": -0x80000000, "flags": 0xFFFF, "samples": 0xFFFFFFFF,
     "clipped": 0xFFFF, "missing_s": 0xFFFF},
    {"billing_wh": 2600, "analytics_wh": 0x7FFFFFFF, "flags": frame.FLAG_CLAMPED, "samples": 1800000,
     "clipped": 12, "missing_s": 0},
]
STATUS = {"uptime_s": 86400, "free_heap": 41234, "outbox_depth": 3, "outbox_overflow": 0,
          "reconnects": 2, "publish_retries": 5, "dp_spend_milli": 96000, "readings_today": 96,
          "boot_count": 4, "fw_version": [0, 1, 0]}


def _hkdf_ref(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)


def _mutations(good: bytes) -> list[tuple[str, str, str]]:
    """Malformed variants of a valid frame with the error each must raise."""
    tag_flip = bytearray(good)
    tag_flip[-1] ^= 1
    ct_flip = bytearray(good)
    ct_flip[frame.HEADER_LEN + frame.IV_LEN] ^= 0x80
    hdr_flip = bytearray(good)
    hdr_flip[20] ^= 1  # counter
    bad_magic = b"XV" + good[2:]
    bad_version = good[:2] + b"\x02" + good[3:]
    kind3_len = good[:3] + b"\x03" + good[4:]
    bad_kind = good[:3] + b"\x04" + good[4:]
    bad_len = good[:38] + b"\x00\x30" + good[40:]
    bad_id = good[:4] + b"m00/1" + good[9:]
    return [
        ("empty", "", errors.Truncated.reason),
        ("header only", good[:40].hex(), errors.Truncated.reason),
        ("missing last byte", good[:-1].hex(), errors.Truncated.reason),
        ("trailing byte", (good + b"\x00").hex(), errors.BadLength.reason),
        ("oversize", (good + bytes(frame.MAX_FRAME)).hex(), errors.Oversize.reason),
        ("bad magic", bad_magic.hex(), errors.BadMagic.reason),
        ("version 2", bad_version.hex(), errors.UnsupportedVersion.reason),
        ("kind 3 with a kind 1 body length", kind3_len.hex(), errors.BadLength.reason),
        ("unknown kind 4", bad_kind.hex(), errors.UnsupportedKind.reason),
        ("body_len 48 for a reading", bad_len.hex(), errors.BadLength.reason),
        ("meter id with slash", bad_id.hex(), errors.BadField.reason),
        ("tag bit flip", bytes(tag_flip).hex(), errors.BadTag.reason),
        ("ciphertext bit flip", bytes(ct_flip).hex(), errors.BadTag.reason),
        ("counter bit flip", bytes(hdr_flip).hex(), errors.BadTag.reason),
    ]


def _bad_padding_frame(keys) -> str:
    """A frame whose tag is valid but whose plaintext padding is not: only a key holder can make it."""
    from .aes import cbc_encrypt

    enc_key, mac_key = keys
    head = frame._pack_header(HEADER, 32)
    ct = cbc_encrypt(enc_key, IV, bytes(18) + bytes([0]) * 14)  # pad byte 0 is invalid
    signed = head + IV + ct
    return (signed + hmac_sha256(mac_key, signed)[:16]).hex()


HOUSEHOLD = bytes.fromhex("202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f")  # test fixture


def _probably_prime(x: int) -> bool:
    """Miller-Rabin with the first 24 primes as bases (deterministic output; ample for a test fixture)."""
    bases = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89]
    if x < 2 or any(x % b == 0 for b in bases):
        return x in bases
    d, r = x - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for b in bases:
        y = pow(b, d, x)
        if y in (1, x - 1):
            continue
        for _ in range(r - 1):
            y = y * y % x
            if y == x - 1:
                break
        else:
            return False
    return True


def fixture_primes() -> tuple[int, int]:
    """The test key's primes: next primes after fixed hashes (tests decrypt the vectors with phe)."""
    out = []
    for label in (b"meterveil e2e vector p", b"meterveil e2e vector q"):
        x = int.from_bytes(hashlib.sha512(label).digest(), "big") | (1 << 511) | (1 << 510) | 1
        while not _probably_prime(x):
            x += 2
        out.append(x)
    return out[0], out[1]


def _e2e_vectors() -> dict:
    """Kind 3 frames under a fixed 1024-bit test key: exact bytes on both runtimes. Decrypted here with
    textbook Paillier; tests/test_protocol.py decrypts them with phe (the independent anchor)."""
    from . import e2e, opener, paillier

    p, q = fixture_primes()
    n = p * q
    nsq = n * n
    lam = (p - 1) * (q - 1)
    mu = pow(lam, -1, n)
    x = int.from_bytes(hashlib.sha256(b"meterveil e2e vector x").digest(), "big")
    hs = pow(-x * x % n, n, nsq)
    exp_bits = n.bit_length() // 2
    keys, hkeys = frame.derive_keys(MASTER), e2e.household_keys(HOUSEHOLD)
    out = {"comment": "Frozen kind 3 (end-to-end) vectors under a 1024-bit test key; public test fixtures, "
                      "never use them on a meter.",
           "n": f"{n:x}", "hs": f"{hs:x}", "exp_bits": exp_bits, "master_key": MASTER.hex(),
           "household_key": HOUSEHOLD.hex(), "iv": IV.hex(), "e2e_frames": []}
    for i, fields in enumerate(READINGS[:3]):
        a = int.from_bytes(hashlib.sha512(b"meterveil e2e vector a%d" % i).digest(), "big") >> (512 - exp_bits)
        rho = paillier.obfuscator_now(hs, n, exp_bits, a)
        assert rho == pow(hs, a, nsq)
        hdr = dict(HEADER, kind=frame.KIND_READING_PAILLIER, counter=HEADER["counter"] + 20 + i)
        blob = e2e.seal(keys, hkeys, hdr, fields, n, rho, IV)
        plain = paillier.pack(fields["billing_wh"], fields["analytics_wh"])
        _meta, c, _hh = opener.split_e2e(blob, e2e.body_len(paillier.nsq_len(n)))
        assert (pow(c, lam, nsq) - 1) // n * mu % n == plain, "the vector does not decrypt"
        out["e2e_frames"].append({"a": f"{a:x}", "header": hdr, "fields": fields, "plain": f"{plain:x}",
                                  "ciphertext": f"{c:x}", "frame": blob.hex()})
    return out


def build() -> dict:
    for key, msg, want in RFC4231:
        k, m = bytes.fromhex(key), bytes.fromhex(msg)
        assert hmac_sha256(k, m).hex().startswith(want), "our HMAC disagrees with RFC 4231"
        assert hmac.new(k, m, hashlib.sha256).hexdigest().startswith(want)
    for ikm, salt, info, n, want in RFC5869:
        args = bytes.fromhex(ikm), bytes.fromhex(salt), bytes.fromhex(info), n
        assert hkdf_sha256(*args).hex() == want == _hkdf_ref(*args).hex()

    keys = frame.derive_keys(MASTER)
    ref = (_hkdf_ref(MASTER, frame.HKDF_SALT, b"meterveil/v1/aes-128-cbc", 16),
           _hkdf_ref(MASTER, frame.HKDF_SALT, b"meterveil/v1/hmac-sha256", 32))
    assert keys == ref
    frames = []
    for i, fields in enumerate(READINGS):
        hdr = dict(HEADER, counter=HEADER["counter"] + i)
        blob = frame.seal(keys, hdr, fields, iv=IV)
        frames.append({"master_key": MASTER.hex(), "iv": IV.hex(), "header": hdr, "fields": fields,
                       "frame": blob.hex()})
    status_hdr = dict(HEADER, kind=frame.KIND_STATUS, counter=100, interval_len=0)
    frames.append({"master_key": MASTER.hex(), "iv": IV.hex(), "header": status_hdr, "fields": STATUS,
                   "frame": frame.seal(keys, status_hdr, STATUS, iv=IV).hex()})
    hdr2 = dict(HEADER, meter_id="Feeder-7_meter16"[:16])
    frames.append({"master_key": MASTER2.hex(), "iv": IV.hex(), "header": hdr2, "fields": READINGS[0],
                   "frame": frame.seal(frame.derive_keys(MASTER2), hdr2, READINGS[0], iv=IV).hex()})

    good = bytes.fromhex(frames[0]["frame"])
    bad = [{"name": n, "master_key": MASTER.hex(), "frame": f, "error": e} for n, f, e in _mutations(good)]
    bad.append({"name": "valid tag, bad padding", "master_key": MASTER.hex(),
                "frame": _bad_padding_frame(keys), "error": errors.BadPadding.reason})
    bad.append({"name": "wrong key", "master_key": MASTER2.hex(), "frame": good.hex(),
                "error": errors.BadTag.reason})
    bad.append({"name": "wrong topic", "master_key": MASTER.hex(), "frame": good.hex(), "topic_meter": "m0002",
                "error": errors.WrongMeter.reason})
    return {
        "comment": "Frozen test vectors for meterveil protocol v1. Keys here are public test fixtures, never "
                   "use them on a meter. Regenerate only with a protocol version bump.",
        "hmac_sha256": [{"key": k, "msg": m, "mac": w} for k, m, w in RFC4231],
        "hkdf_sha256": [{"ikm": i, "salt": s, "info": f, "length": n, "okm": w} for i, s, f, n, w in RFC5869],
        "derive_keys": [{"master_key": MASTER.hex(), "enc_key": keys[0].hex(), "mac_key": keys[1].hex()}],
        "frames": frames,
        "bad_frames": bad,
    }


def main(argv: list[str]) -> int:
    bad = 0
    for out, built in ((OUT, build()), (OUT_E2E, _e2e_vectors())):
        data = json.dumps(built, indent=1, sort_keys=True) + "\n"
        if "--check" in argv:
            same = out.exists() and out.read_text() == data
            print(f"{out.name} is up to date" if same else f"{out.name} differs from the generator")
            bad += not same
        else:
            out.write_text(data)
            print(f"wrote {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
