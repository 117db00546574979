"""Network-free firmware checks on the target: DP share statistics (same stream as CPython), the
outbox across simulated power cuts on the target's flash, and the meter loop with the network down.

On --target qemu these run on a 32-bit Cortex-M3 with a 64 KB heap, where ms timestamps are long
ints and floats are single precision: the checks are the same as on the 64-bit unix port.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "mpy"))
from mpyrun import run_cpython  # noqa: E402
from target import UnixTarget  # noqa: E402

EXAMPLE = json.loads((REPO / "firmware" / "config.example.json").read_text())
DELTA = 1e-9  # DKW failure probability (the seed is fixed, so the outcome is too)
HEAP_MARGIN = 8 * 1024  # free heap the meter must keep at its low point (tests/test_fw_heap.py)


def _write(path: str, text: str) -> str:
    """Snippet lines that create path's folder and write text there, on the target."""
    folder = path.rsplit("/", 1)[0]
    return (f"import os\ntry:\n    os.mkdir({folder!r})\nexcept OSError:\n    pass\n"
            f"with open({path!r}, 'w') as f:\n    f.write({text!r})\n")


def _roomy(target):
    """The unix target with a larger heap: there the code is compiled from source into the heap
    (64 KB is not enough for the whole app, tests/test_fw_heap.py), and on 64-bit every int and
    pointer is twice the size. Other targets run code from flash: their own heap as it is."""
    return UnixTarget(heap="192k", build_dir=target.build_dir) if target.name == "unix" else target


def _last_json(output: str):
    lines = [ln for ln in output.splitlines() if ln.startswith(("[", "{"))]
    assert lines, output
    return json.loads(lines[-1])


def test_dp_shares_on_target_match_cpython_and_the_discrete_gaussian(target, tmp_path):
    n = 800
    cases = [["var3_single", 3, 1, 3],
             ["var1000_sum5", 1000, 5, 5000],        # 2*var*t^2 > 2**31: big-int rationals on 32-bit
             ["neg_var_doubled", 1000, 5, 10000]]    # half the noise the target says: must fail
    spec = {"seed": "meterveil-dp-hil", "n": n, "keep": 100, "cases": cases}
    target = _roomy(target)
    spec_path = target.scratch + "/dp_spec.json"
    res = target.run(_write(spec_path, json.dumps(spec))
                     + "sys.path.append(REPO + '/tests/mpy')\n"
                     + f"sys.argv[:] = ['privacy_check.py', {spec_path!r}]\nimport privacy_check\n", timeout=600)
    assert res.returncode == 0, res.output
    got = {r["name"]: r for r in _last_json(res.output)}
    (tmp_path / "dp.json").write_text(json.dumps(spec))
    want = {r["name"]: r for r in run_cpython("privacy_check.py", tmp_path, "dp")}
    bound = math.sqrt(math.log(2 / DELTA) / (2 * n))
    for name, r in got.items():
        # The same random bytes give the same shares on the target as on CPython: the sampler is
        # integer-only, so 32-bit small ints and single-precision floats change nothing.
        assert r["hash"] == want[name]["hash"] and r["first"] == want[name]["first"], name
        assert r["bytes"] == want[name]["bytes"], name
    def chi2_limit(df: int) -> float:  # upper 1 - 1e-9 quantile (Wilson-Hilferty, z = 6)
        return df * (1 - 2 / (9 * df) + 6 * math.sqrt(2 / (9 * df))) ** 3

    for name in ("var3_single", "var1000_sum5"):
        assert got[name]["ks"] < bound and got[name]["chi2"] < chi2_limit(got[name]["bins"] - 1), got[name]
    neg = got["neg_var_doubled"]
    assert neg["chi2"] > chi2_limit(neg["bins"] - 1), neg


CUTS = (1, 2, 3, 4, 5)  # the block write at which power fails; an append programs 4 blocks here


@pytest.mark.parametrize("cut", CUTS)
def test_outbox_keeps_every_durable_record_across_a_power_cut_on_flash(target, cut):
    if target.name != "qemu":
        pytest.skip("needs the QEMU board's RAM flash (ramblock.py) to cut power at a block write; "
                    "the unix port's equivalent is tests/test_fw_outbox.py (SIGKILL mid-write)")
    box = target.scratch + "/ob-cut"
    first = target.run(
        "import os\nimport ramblock\nfrom meter import outbox\n"
        "ramblock.mount('/flash', fresh=True)\nos.mkdir('/flash/hil')\n"
        f"b = outbox.Outbox({box!r}, segment_bytes=512, max_bytes=8192)\n"
        "for i in range(4):\n    b.append(bytes([i]) * (60 + i))\n    print('DURABLE', i)\n"
        f"ramblock.cut_after({cut})\n"
        "try:\n    b.append(bytes([9]) * 70)\n    print('DURABLE', 9)\nexcept OSError as e:\n"
        "    print('CUT', e.args[0])\n")
    assert first.returncode == 0, first.output
    durable = [int(x) for x in first.lines("DURABLE")]
    assert durable[:4] == [0, 1, 2, 3]
    target.reset()  # the heap is gone; the RAM flash keeps what was programmed before the cut
    second = target.run(
        "from meter import outbox\n"
        f"b = outbox.Outbox({box!r}, segment_bytes=512, max_bytes=8192)\n"
        "print('DEPTH', b.depth, b.torn)\npos = b.first()\n"
        "while pos is not None:\n    rec = b.read(pos)\n    if rec is None:\n        break\n"
        "    data, at, nxt = rec\n    print('REC', data[0], len(data), data == bytes([data[0]]) * len(data))\n"
        "    pos = nxt\n")
    assert second.returncode == 0, second.output
    recs = second.lines("REC")
    want = [f"{i} {60 + i} True" for i in range(4)]
    assert recs[:4] == want, second.output  # every append that returned survives, intact
    # The record whose append the cut interrupted is either whole or absent, never torn data.
    assert recs[4:] in ([], ["9 70 True"]), second.output
    if 9 in durable:
        assert recs[4:] == ["9 70 True"]


def _loop_config(target, intervals_s: int = 900) -> dict:
    cfg = json.loads(json.dumps(EXAMPLE))
    cfg.pop("wifi")
    cfg.update({"meter_id": "hil-loop", "interval_s": intervals_s, "status_every": 2})
    cfg["broker"] = {"url": "mqtt://127.0.0.1:1883", "keepalive_s": 30, "backoff_min_ms": 100,
                     "backoff_max_ms": 1000, "ack_timeout_ms": 3000}
    cfg["sim"] = {"profile": target.repo_on_target + "/tests/data/profiles/stepped.csv", "period_s": 300,
                  "speed": 100000, "mains_hz": 50, "mode": "sparse", "block_s": 5, "seed": 1,
                  "start_time": 1763856000}
    return cfg


def _offline_loop(cfg_path: str, cfg: dict, state: str, intervals: int) -> str:
    """Snippet: main.py's sequence with the unix HAL and the network cut, `intervals` readings, then
    `ok` (drained?) and the meter `m` are left for the caller's own prints."""
    return (_write(cfg_path, json.dumps(cfg))
            + "import gc\nimport asyncio\nasyncio.open_connection, asyncio.wait_for_ms\n"
            "bufs = (bytearray(1024), bytearray(384))\n"
            "from meter import persist, startup\n"
            f"rc, o, cfg = startup.from_argv(['main.py', {cfg_path!r}, '--storage', {state!r}], False)\n"
            "assert rc is None, rc\n"
            "import meter\nmeter.drop('meter.startup')\nmeter.drop('meter.config')\ndel startup\n"
            f"persist.makedirs({state!r})\nopen({state!r} + '/netcut', 'w').close()\n"
            "from meter.hal_unix import UnixHAL\nhal = UnixHAL(cfg, o['storage'])\n"
            "from meter.app import Meter\nm = Meter(hal, cfg, bufs=bufs)\ndel cfg, o, bufs\ngc.collect()\n"
            f"ok = asyncio.run(m.run({intervals}, 1))\n")  # 1 s drain timeout: the network stays down


def test_meter_loop_with_the_network_down_seals_every_interval_within_the_heap(target):
    # main.py's sequence with the unix HAL (simulated CT, netcut flag = network down), so it runs
    # on any target: 4 intervals are measured, sealed and kept in the outbox; nothing is sent.
    if target.name == "serial":
        pytest.skip("a board build leaves the unix-port simulator (hal_unix, ctsim) out: the unix and "
                    "qemu targets run this loop; on a board the meter itself runs it")
    intervals = 4
    code_in_heap = target.name == "unix"
    target = _roomy(target)
    state = target.scratch + "/loop-state"
    cfg_path = target.scratch + "/loop.json"
    res = target.run(_offline_loop(cfg_path, _loop_config(target), state, intervals)
                     + "print('DONE', ok, m.readings, m.outbox.depth, m.pub.reconnects)\n", timeout=600)
    assert res.returncode == 0, res.output
    done = res.lines("DONE")
    assert done, res.output
    ok, readings, depth, _reconnects = done[0].split()
    assert ok == "False"  # not drained: the broker was never reachable
    assert int(readings) == intervals
    statuses = intervals // 2
    assert int(depth) == intervals + statuses  # sealed readings and status frames wait on flash
    truth = [json.loads(x) for x in res.lines("TRUTH")]
    assert len(truth) == intervals
    for t in truth:
        # Whole-Wh billing energy against the simulator's exact integral: the profile steps on
        # 5 s boundaries, so 5 s sparse blocks lose nothing but ADC noise and the sub-Wh remainder.
        true_wh = t["true_mwh"] / 1000
        assert abs(t["energy_wh"] - true_wh) <= 0.01 * true_wh + 1, t
        assert t["interval_start"] % 900 == 0
    heap = json.loads(res.lines("HEAP")[0])
    if not code_in_heap:  # code runs from flash (frozen on qemu): the 64 KB heap is the meter's alone
        assert heap["min_free_after_gc"] >= HEAP_MARGIN, heap
    print(f"{target.name}: heap low point {heap}")


def test_per_sample_sensing_loop_allocates_nothing_on_target(target):
    # A full-scale square wave: sums of squares pass 2**30 many times per block. On a 32-bit MCU
    # every long int in the per-sample loop would allocate (>= 16 bytes per sample, 64 KB for
    # 4000 samples), so the block's heap use would grow with its length. Only the block tail's own
    # long ints may grow, by a few digits.
    res = target.run(
        "import array, gc\nfrom meter import sensing\n"
        f"cal = sensing.Calibration({json.dumps(EXAMPLE['calibration'])})\n"
        "def garbage(n):\n"
        "    buf = array.array('H', bytes(2 * n))\n"
        "    for i in range(0, n, 2):\n        buf[i] = 48\n        buf[i + 1] = 4047\n"
        "    gc.collect()\n    gc.disable()\n    a = gc.mem_alloc()\n"
        "    p = sensing.block_power_mw(buf, n, cal)\n"
        "    b = gc.mem_alloc()\n    gc.enable()\n    return b - a, p\n"
        "garbage(200)\n"
        "for n in (200, 1000, 4000):\n    print('ALLOC', n, *garbage(n))\n")
    assert res.returncode == 0, res.output
    rows = [ln.split() for ln in res.lines("ALLOC")]
    assert len(rows) == 3, res.output
    assert all(int(r[2]) > 0 for r in rows), rows  # the wave reads as power (the block was sensed)
    assert int(rows[2][1]) - int(rows[0][1]) < 256, rows  # 4000 samples vs 200: no per-sample garbage


E2E_MARGIN = 4 * 1024  # free heap an end-to-end meter keeps at its low point (issue 14)


@pytest.fixture(scope="module")
def utility_key():
    from phe import paillier as phe_paillier

    from meterveil.host.common.pubkey import make_hs

    pub, sk = phe_paillier.generate_paillier_keypair(n_length=2048)
    return pub, sk, make_hs(pub.n)


def test_e2e_meter_loop_offline_encrypts_on_target_within_the_heap(target, utility_key):
    # The loop above in end-to-end mode with a real 2048-bit utility key: the meter draws its
    # obfuscators, Paillier-encrypts every interval itself and keeps the kind 3 frames on flash.
    # On qemu this is a 32-bit MCU with a 64 KB heap and the code frozen in flash, the shape of an
    # ESP32 or Pico build: the low point must keep E2E_MARGIN free. The frames are read back from
    # the target's flash and decrypted with phe here, to the meter's own TRUTH.
    if target.name == "serial":
        pytest.skip("a board build leaves the unix-port simulator (hal_unix, ctsim) out")
    from meterveil.host.common import packing
    from meterveil.protocol import frame, opener

    pub, sk, hs = utility_key
    intervals = 3
    code_in_heap = target.name == "unix"
    target = _roomy(target)
    state = target.scratch + "/e2e-state"
    cfg_path = target.scratch + "/e2e.json"
    cfg = _loop_config(target)
    cfg["meter_id"] = "hil-e2e"
    cfg["e2e"] = {"n": f"{pub.n:x}", "hs": f"{hs:x}", "exp_bits": pub.n.bit_length() // 2,
                  "household_key": bytes(range(32)).hex()}
    res = target.run(
        _offline_loop(cfg_path, cfg, state, intervals)
        + "print('DONE', ok, m.readings, m.outbox.depth)\n"
        "import binascii\nb = m.outbox\npos = b.first()\n"
        "while pos is not None:\n    rec = b.read(pos)\n    if rec is None:\n        break\n"
        "    print('FRAME', binascii.hexlify(rec[0]).decode())\n    pos = rec[2]\n", timeout=900)
    assert res.returncode == 0, res.output[-3000:]
    done = res.lines("DONE")
    assert done, res.output[-3000:]
    assert int(done[0].split()[1]) == intervals
    truth = {t["counter"]: t for t in (json.loads(x) for x in res.lines("TRUTH"))}
    mac = frame.derive_keys(bytes.fromhex(cfg["master_key"]))[1]
    got = {}
    for line in res.lines("FRAME"):
        payload = bytes.fromhex(line.split()[0])
        hdr = frame.parse_header(payload)
        if hdr["kind"] != frame.KIND_READING_PAILLIER:
            continue  # status frames
        frame.verify_frame(mac, payload, "hil-e2e")
        _meta, c, _hh = opener.split_e2e(payload, hdr["body_len"])
        got[hdr["counter"]] = packing.unpack_sum(sk.raw_decrypt(c), 1)
    assert sorted(got) == sorted(truth) and len(got) == intervals
    for counter, t in truth.items():
        assert got[counter] == (t["energy_wh"], t["analytics_wh"])
    heap = json.loads(res.lines("HEAP")[0])
    if not code_in_heap:
        assert heap["min_free_after_gc"] >= E2E_MARGIN, heap
    print(f"{target.name}: e2e heap low point {heap}")
