# Boot-only half of the outbox (outbox.py): find the segments, validate every unacknowledged
# record, drop torn tails and fully acknowledged segments. Outbox.__init__ runs recover() once,
# then unloads this module (meter.drop). MicroPython and CPython.
import os

from meter import persist
from meter.outbox import HDR

try:
    from protocol import frame
except ImportError:  # CPython tests with only firmware/ on the path
    from meterveil.protocol import frame


def recover(ob, feed=None):
    path = ob.dir
    persist.makedirs(path)
    ob._ack_seg, ob._ack_off, ob.overflow = persist.read_ints(ob._p("ack"), 3) or [0, 0, 0]
    segs = []
    for name in os.listdir(path):
        if name[0] == "s" and name.endswith(".log"):
            try:
                segs.append(int(name[1:-4]))
            except ValueError:
                pass
    segs.sort()
    ob._segs = []     # live segment numbers, oldest first
    ob._ends = {}     # seg -> end of its valid records
    ob._counts = {}   # seg -> unacknowledged records
    ob._sizes = {}    # seg -> bytes on flash (torn tails included)
    ob._bytes = 0     # flash used by live segments
    ob.newest_reading = 0  # interval start of the newest reading not yet acknowledged
    for s in segs:
        if feed:
            feed()
        if s < ob._ack_seg:
            persist.remove(ob._seg_path(s))  # fully acknowledged before the last boot
            continue
        n, end, size = _scan(ob, s, ob._ack_off if s == ob._ack_seg else 0, feed)
        if n == 0:
            persist.remove(ob._seg_path(s))
            continue
        ob._segs.append(s)
        ob._ends[s] = end
        ob._counts[s] = n
        ob._sizes[s] = size
        ob._bytes += size
    ob._head = (segs[-1] + 1) if segs else max(ob._ack_seg, 1)
    if ob._head <= ob._ack_seg:
        ob._head = ob._ack_seg + 1
    ob._head_size = 0
    ob._normalise_ack()
    ob._save_ack()


def _scan(ob, s, start, feed):
    # Count valid records from `start`; returns (count, end of valid data, file size).
    path = ob._seg_path(s)
    try:
        size = os.stat(path)[6]
    except OSError:
        return 0, 0, 0
    count = 0
    off = start
    with open(path, "rb") as f:
        while off < size:
            n = ob._read_at(f, off, size)
            if n < 0:
                # A torn append is the last thing in its file: its declared length runs past
                # the end. Anything else is corruption.
                torn = off + HDR > size
                if not torn:
                    f.seek(off)
                    f.readinto(ob._hdr)
                    torn = off + HDR + (ob._hdr[0] | (ob._hdr[1] << 8)) >= size
                if torn:
                    ob.torn += 1
                else:
                    ob.corrupt += 1
                ob._say("outbox: seg %d cut at %d of %d bytes" % (s, off, size))
                break
            off += HDR + n
            count += 1
            if feed and not count & 63:
                feed()
            mv = ob._mv
            i = frame.INTERVAL_START_OFF
            if n > i + 4 and mv[frame.KIND_OFF] == frame.KIND_READING:  # big-endian u32
                t = (mv[i] << 24) | (mv[i + 1] << 16) | (mv[i + 2] << 8) | mv[i + 3]
                if t > ob.newest_reading:
                    ob.newest_reading = t
    return count, off, size
