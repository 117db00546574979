"""Outbox on the real MicroPython unix port: unit checks, torn writes at every byte, SIGKILL torture."""

from __future__ import annotations

import random
import struct
import subprocess
from pathlib import Path

from meterveil.host.demo import firmware_runner as fr

MPY = Path(__file__).parent / "mpy"


def _mp(*args, timeout=120):
    return subprocess.run([fr.micropython_binary(), "-X", "heapsize=128k", *map(str, args)],
                          capture_output=True, text=True, env=fr.firmware_env(), timeout=timeout)


def test_outbox_unit_on_unix_port(tmp_path):
    res = _mp(MPY / "outbox_unit.py", tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    ok = res.stdout.strip().splitlines()[-1].split()
    assert ok[0] == "OK" and int(ok[1]) > 300  # includes a power cut at every byte of a record


def _crc_reader(seg: Path) -> list[bytes]:
    """Independent CPython reader of one segment (same record format as firmware/meter/outbox.py)."""
    import binascii
    data = seg.read_bytes()
    out, off = [], 0
    while off + 6 <= len(data):
        n, crc = struct.unpack_from("<HI", data, off)
        body = data[off + 6:off + 6 + n]
        if len(body) != n or binascii.crc32(body, binascii.crc32(data[off:off + 2])) != crc:
            break
        out.append(body)
        off += 6 + n
    return out


def test_outbox_format_readable_from_cpython(tmp_path):
    res = _mp(MPY / "outbox_unit.py", tmp_path)
    assert res.returncode == 0, res.stdout
    segs = sorted((tmp_path / "acktmp").glob("s*.log"))
    assert segs
    recs = [r for s in segs for r in _crc_reader(s)]
    assert recs and all(100 <= len(r) <= 120 for r in recs)


def test_sigkill_during_outbox_writes(tmp_path):
    """Kill at random moments while the outbox appends/acks; nothing lost, nothing reordered."""
    rng = random.Random(20261123)
    script = MPY / "outbox_torture.py"
    env = fr.firmware_env()
    committed: list[int] = []     # "C": append returned (durable)
    boot_ok: list[bool] = []
    acked: list[int] = []         # "A": about to ack (in order)
    booted_pending: list[list[int]] = []
    kills = 25
    torn_total = 0
    for i in range(kills):
        p = subprocess.Popen([fr.micropython_binary(), "-X", "heapsize=128k", str(script),
                              str(tmp_path), str(i + 1)], stdout=subprocess.PIPE, env=env, text=True)
        # Kill after a random amount of progress (not time): independent of machine speed, and
        # the process is then inside its append/ack loop, usually mid-write.
        target = rng.randint(1, 60)
        head = []
        seen = 0
        while seen < target:
            line = p.stdout.readline()
            if not line:
                break
            head.append(line)
            seen += line.startswith("C ")
        p.kill()
        rest = p.stdout.read()  # not communicate(): it would bypass readline's buffer
        p.wait(30)
        out = "".join(head) + rest
        lines = out.split("\n")[:-1]  # complete lines only: a kill can cut the last one
        assert lines and lines[0].startswith("BOOT"), out[:500]
        torn_total += int(lines[0].split()[2])
        pend = [int(x.split()[1]) for x in lines if x.startswith("P ")]
        booted_pending.append(pend)
        # What a boot finds pending = committed minus acked so far (+ at most one append whose
        # "C" line the kill cut off, or one ack the kill cut off before its pointer write).
        want = [c for c in committed if c not in set(acked)]
        known = [c for c in pend if c in set(committed)]
        boot_ok.append(known == want or (known[1:] == want and known[0] in acked))
        committed += [int(x.split()[1]) for x in lines if x.startswith("C ")]
        acked += [int(x.split()[1]) for x in lines if x.startswith("A ")]
    res = subprocess.run([fr.micropython_binary(), "-X", "heapsize=128k", str(script), str(tmp_path),
                          "0", "drain"], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0 and "DONE" in res.stdout, res.stdout[-1000:]
    lines = res.stdout.splitlines()
    booted_pending.append([int(x.split()[1]) for x in lines if x.startswith("P ")])
    acked += [int(x.split()[1]) for x in lines if x.startswith("A ")]

    assert len(committed) >= kills
    # Counters never repeat across kills and only grow.
    assert all(a < b for a, b in zip(committed, committed[1:], strict=False))
    # Every durable record was delivered (acked), in order.
    delivered = sorted(set(acked))
    assert set(committed) <= set(acked)
    dedup = []
    for c in acked:
        if not dedup or c != dedup[-1]:
            dedup.append(c)
    assert dedup == delivered, "acks out of order"
    # Duplicates only from a kill between "about to ack" and the ack pointer write: at most one per kill.
    assert len(acked) - len(delivered) <= kills
    # Records not reported as committed (kill between append and print): at most one per kill.
    assert len(set(acked) - set(committed)) <= kills
    # At every boot the pending list is exactly what was committed and not yet acked before it.
    for pend in booted_pending:
        assert pend == sorted(pend)
    assert all(boot_ok)
    print(f"kills={kills} committed={len(committed)} delivered={len(delivered)} "
          f"dup_acks={len(acked) - len(delivered)} torn_tails={torn_total}")
