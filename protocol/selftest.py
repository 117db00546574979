# Check protocol/vectors.json (or vectors_e2e.json) on whatever runtime runs this: the MicroPython unix port, a real
# board (copy vectors.json next to it) or CPython. Prints one line per failure and a summary
# "VECTORS ok=N fail=M"; returns the failure count. Used by tests and the HIL suite.
import binascii
import json

from . import errors, frame, opener
from .hmac_sha256 import hkdf_sha256, hmac_sha256


def _h(s):
    return binascii.unhexlify(s)


def _same(a, b):
    # JSON gives lists where frame gives tuples/lists; compare as lists.
    return json.dumps(a) == json.dumps(b)


def run(vectors, log=print):
    ok = fail = 0

    def check(cond, what):
        nonlocal ok, fail
        if cond:
            ok += 1
        else:
            fail += 1
            log("FAIL " + what)

    for v in vectors.get("e2e_frames", ()):
        _check_e2e(vectors, v, check)
    for v in vectors.get("hmac_sha256", ()):
        mac = binascii.hexlify(hmac_sha256(_h(v["key"]), _h(v["msg"]))).decode()
        check(mac.startswith(v["mac"]), "hmac " + v["mac"][:16])
    for v in vectors.get("hkdf_sha256", ()):
        okm = hkdf_sha256(_h(v["ikm"]), _h(v["salt"]), _h(v["info"]), v["length"])
        check(binascii.hexlify(okm).decode() == v["okm"], "hkdf " + v["okm"][:16])
    for v in vectors.get("derive_keys", ()):
        enc, mac = frame.derive_keys(_h(v["master_key"]))
        check(binascii.hexlify(enc).decode() == v["enc_key"], "derive enc key")
        check(binascii.hexlify(mac).decode() == v["mac_key"], "derive mac key")
    for v in vectors.get("frames", ()):
        keys = frame.derive_keys(_h(v["master_key"]))
        name = "frame counter %d" % v["header"]["counter"]
        blob = frame.seal(keys, v["header"], v["fields"], iv=_h(v["iv"]))
        check(binascii.hexlify(blob).decode() == v["frame"], "seal " + name)
        try:
            got = opener.open_frame(keys, _h(v["frame"]), topic_meter=v["header"]["meter_id"])
            hdr = dict(got["header"])
            hdr.pop("body_len")
            check(_same(sorted(hdr.items()), sorted(v["header"].items())), "open header " + name)
            check(_same(sorted(got["fields"].items()), sorted(v["fields"].items())), "open fields " + name)
        except errors.FrameError as e:
            check(False, "open " + name + ": " + e.reason)
    for v in vectors.get("bad_frames", ()):
        keys = frame.derive_keys(_h(v["master_key"]))
        try:
            opener.open_frame(keys, _h(v["frame"]), topic_meter=v.get("topic_meter"))
            check(False, v["name"] + ": accepted, expected " + v["error"])
        except errors.FrameError as e:
            check(e.reason == v["error"], v["name"] + ": got " + e.reason + ", expected " + v["error"])
    return ok, fail


def _check_e2e(k, v, check):
    # Kind 3: the stepwise obfuscator, the seal (exact bytes), the MAC check and the household copy.
    from . import e2e, household, paillier
    n, hs = int(k["n"], 16), int(k["hs"], 16)
    nsq = n * n
    name = "e2e frame counter %d" % v["header"]["counter"]
    o = paillier.Obfuscator(hs, n, k["exp_bits"], int(v["a"], 16))
    while not o.step(7):
        pass
    check(o.value() == pow(hs, int(v["a"], 16), nsq), "obfuscator " + name)
    check(paillier.pack(v["fields"]["billing_wh"], v["fields"]["analytics_wh"]) == int(v["plain"], 16),
          "pack " + name)
    keys = frame.derive_keys(_h(k["master_key"]))
    hkeys = e2e.household_keys(_h(k["household_key"]))
    blob = e2e.seal(keys, hkeys, v["header"], v["fields"], n, o.value(), _h(k["iv"]))
    check(binascii.hexlify(blob).decode() == v["frame"], "seal " + name)
    try:
        hdr = opener.verify_frame(keys[1], _h(v["frame"]), v["header"]["meter_id"])
        meta, c, hh = opener.split_e2e(_h(v["frame"]), hdr["body_len"])
        check(c == int(v["ciphertext"], 16), "ciphertext " + name)
        got = household.open_copy(hkeys, hh, hdr["meter_id"], hdr["counter"], hdr["interval_start"],
                                 hdr["interval_len"])
        check(got["billing_wh"] == v["fields"]["billing_wh"], "household copy " + name)
    except errors.FrameError as e:
        check(False, "open " + name + ": " + e.reason)


def main(path=None):
    if path is None:
        path = __file__.rsplit("/", 1)[0] + "/vectors.json" if "/" in __file__ else "vectors.json"
    with open(path) as f:
        vectors = json.load(f)
    ok, fail = run(vectors)
    print("VECTORS ok=%d fail=%d" % (ok, fail))
    return fail
