# Outbox and counter checks on the MicroPython unix port (run by tests/test_fw_outbox.py).
# Usage: micropython outbox_unit.py WORKDIR   -> prints "OK <cases>" or raises (exit 1).
import os
import sys

from meter import persist
from meter.outbox import Outbox

WORK = sys.argv[1]
cases = 0


def rmtree(path):
    if not persist.exists(path):
        return
    for name in os.listdir(path):
        p = path + "/" + name
        if os.stat(p)[0] & 0x4000:
            rmtree(p)
        else:
            os.remove(p)
    os.rmdir(path)


def fresh(name):
    p = WORK + "/" + name
    rmtree(p)
    return p


def rec(i, n=104):
    # Distinct, self-describing payloads of varying lengths.
    b = bytearray(n + (i % 7))
    for k in range(len(b)):
        b[k] = (i * 31 + k) & 0xFF
    b[0] = i & 0xFF
    b[1] = (i >> 8) & 0xFF
    return bytes(b)


def drain(ob, ack=True):
    out = []
    pos = ob.first()
    while True:
        r = ob.read(pos)
        if r is None:
            return out
        data, at, nxt = r
        out.append(data)
        if ack:
            assert ob.ack(at, nxt)
        pos = nxt


def check(cond, msg):
    global cases
    cases += 1
    if not cond:
        raise AssertionError(msg)


# 1. append, reopen, read in order, ack, reclaim
d = fresh("basic")
ob = Outbox(d, segment_bytes=600, max_bytes=100000)
recs = [rec(i) for i in range(20)]
for r in recs:
    ob.append(r)
check(ob.depth == 20, "depth after append")
ob = Outbox(d, segment_bytes=600, max_bytes=100000)
check(ob.depth == 20, "depth after reopen %d" % ob.depth)
got = drain(ob, ack=False)
check(got == recs, "read order after reopen")
pos = ob.first()
for _ in range(7):
    data, at, nxt = ob.read(pos)
    ob.ack(at, nxt)
    pos = nxt
ob = Outbox(d, segment_bytes=600, max_bytes=100000)
check(ob.depth == 13, "depth after partial ack + reopen: %d" % ob.depth)
check(drain(ob) == recs[7:], "remaining records after partial ack")
check(ob.depth == 0, "drained")
segs = [n for n in os.listdir(d) if n.endswith(".log")]
check(len(segs) <= 1, "acknowledged segments reclaimed: %r" % segs)
ob = Outbox(d, segment_bytes=600, max_bytes=100000)
check(ob.depth == 0 and drain(ob) == [], "empty after reopen")
check(ob.read(ob.first()) is None, "nothing to read")

# 2. power cut at every byte of the last append: torn tail dropped, nothing before it lost
d = fresh("torn")
ob = Outbox(d, segment_bytes=100000, max_bytes=1000000)
for r in recs[:5]:
    ob.append(r)
seg = [n for n in os.listdir(d) if n.endswith(".log")][0]
with open(d + "/" + seg, "rb") as f:
    full = f.read()
last = 6 + len(recs[4])
prefix = len(full) - last
for cut in range(0, last):
    t = fresh("torn_case")
    persist.makedirs(t)
    with open(t + "/" + seg, "wb") as f:
        f.write(full[:prefix + cut])
    o2 = Outbox(t, segment_bytes=100000, max_bytes=1000000)
    want = recs[:4]
    check(o2.depth == 4, "cut %d: depth %d" % (cut, o2.depth))
    check(o2.torn == (1 if cut else 0), "cut %d: torn count %d" % (cut, o2.torn))
    o2.append(recs[5])
    o3 = Outbox(t, segment_bytes=100000, max_bytes=1000000)
    check(drain(o3) == want + [recs[5]], "cut %d: records after recovery" % cut)

# 3. torn ack file write (temp file only) keeps the old pointer
d = fresh("acktmp")
ob = Outbox(d)
for r in recs[:3]:
    ob.append(r)
with open(d + "/ack.tmp", "w") as f:
    f.write("9 9")  # a write that never reached its rename
ob = Outbox(d)
check(ob.depth == 3, "stray ack.tmp ignored while ack exists")

# 4. a corrupted record in the middle of a sealed segment: earlier records kept, counted
d = fresh("corrupt")
ob = Outbox(d, segment_bytes=100000)
for r in recs[:6]:
    ob.append(r)
seg = [n for n in os.listdir(d) if n.endswith(".log")][0]
with open(d + "/" + seg, "rb") as f:
    b = bytearray(f.read())
off = 0
for r in recs[:2]:
    off += 6 + len(r)
b[off + 10] ^= 0xFF
with open(d + "/" + seg, "wb") as f:
    f.write(b)
ob = Outbox(d, segment_bytes=100000)
check(ob.corrupt == 1 and ob.depth == 2, "corrupt: depth %d corrupt %d" % (ob.depth, ob.corrupt))
check(drain(ob) == recs[:2], "records before corruption kept")

# 5. full: oldest segments dropped, counted, newest kept; depth + overflow = appended
d = fresh("full")
ob = Outbox(d, segment_bytes=400, max_bytes=1200)
for i in range(40):
    ob.append(rec(i))
check(ob.overflow > 0, "overflow counted")
check(ob.depth + ob.overflow == 40, "depth %d + overflow %d" % (ob.depth, ob.overflow))
check(ob.used_bytes <= 1200, "bounded: %d" % ob.used_bytes)
ov = ob.overflow
ob = Outbox(d, segment_bytes=400, max_bytes=1200)
check(ob.overflow == ov, "overflow persisted")
got = drain(ob)
check(got == [rec(i) for i in range(40 - len(got), 40)], "newest records kept, in order")

# 6. stale ack (record dropped meanwhile) ignored
d = fresh("stale")
ob = Outbox(d, segment_bytes=300, max_bytes=700)
ob.append(rec(1))
data, at, nxt = ob.read(ob.first())
for i in range(2, 20):
    ob.append(rec(i))
check(ob.ack(at, nxt) is False, "stale ack ignored")

# 7. frame counter: strictly increasing across reopen, one flash write per block
p = WORK + "/ctr"
persist.remove(p)
c = persist.FrameCounter(p, block=4)
seen = [c.take() for _ in range(6)]
c = persist.FrameCounter(p, block=4)
seen += [c.take() for _ in range(3)]
c = persist.FrameCounter(p, block=4)
seen.append(c.take())
check(all(seen[i] < seen[i + 1] for i in range(len(seen) - 1)), "counters %r" % seen)
check(seen[0] >= 1, "counters start at 1")
print("OK", cases)
