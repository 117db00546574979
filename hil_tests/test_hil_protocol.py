"""Protocol vectors and sealing on the target (unix port or a real board)."""

import json
from pathlib import Path

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "protocol" / "vectors.json").read_text())


def test_protocol_vectors_pass_on_target(target):
    res = target.run("from protocol import selftest\nsys.exit(selftest.main(REPO + '/protocol/vectors.json'))")
    assert res.returncode == 0, res.output
    assert res.lines("VECTORS") and "fail=0" in res.lines("VECTORS")[0]


def test_seal_on_target_opens_on_host(target):
    from meterveil.protocol import frame

    master = bytes(range(32))
    res = target.run(
        "import binascii\nfrom protocol import frame\n"
        "k = frame.derive_keys(bytes(range(32)))\n"
        "h = {'kind': 1, 'meter_id': 'hil-1', 'counter': 42, 'interval_start': 1763856000,"
        " 'interval_len': 900, 'epsilon_milli': 500, 'clamp_wh': 800, 'm': 8}\n"
        "f = {'billing_wh': 321, 'analytics_wh': -7, 'flags': 2, 'samples': 1800, 'clipped': 1, 'missing_s': 3}\n"
        "print('FRAME', binascii.hexlify(frame.seal(k, h, f)).decode())\n"
        "print('FRAME', binascii.hexlify(frame.seal(k, h, f)).decode())\n")
    assert res.returncode == 0, res.output
    a, b = res.lines("FRAME")
    assert a != b, "IVs must differ between two seals on the device"
    for blob in (a, b):
        msg = frame.open_frame(frame.derive_keys(master), bytes.fromhex(blob), topic_meter="hil-1")
        assert msg["fields"]["billing_wh"] == 321 and msg["fields"]["analytics_wh"] == -7
        assert msg["header"]["counter"] == 42
