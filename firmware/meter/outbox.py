# Outbox: sealed frames live on flash from the moment they are sealed until the broker has
# acknowledged them (PUBACK). Layout (docs/FIRMWARE.md):
#   <dir>/s00000012.log   segments; records appended, never rewritten
#   <dir>/ack             "seg off overflow": every record before (seg, off) is acknowledged
# Record = <HI (payload length, crc32 of the two length bytes + payload) then the payload.
# A power cut can tear only the record being appended; reopening finds it (short or bad CRC),
# drops it and keeps everything before it. After a boot, appends always go to a fresh segment,
# so a torn tail stays at the end of its (now sealed) segment and is skipped deterministically.
# Capacity policy when full: drop the OLDEST whole segment and count its records in `overflow`
# (persisted, reported in the status frame). Why oldest: after a month-long outage the recent
# readings are the ones a bill and the grid operator still need, and the counter gap plus the
# overflow count tell the gateway exactly what was lost.
import binascii
import struct

from meter import persist

try:
    from micropython import const
except ImportError:  # CPython (tests)
    def const(x):
        return x

HDR = const(6)  # record header: <HI payload length, crc32
_MAX_RECORD = const(1024)  # protocol.frame.MAX_FRAME


def _crc(lenb, payload):
    return binascii.crc32(payload, binascii.crc32(lenb)) & 0xFFFFFFFF


class OutboxError(ValueError):
    reason = "outbox"


class Outbox:
    def __init__(self, path, segment_bytes=16384, max_bytes=524288, log=None, buf=None, feed=None):
        # feed: called while the boot scan reads flash (a board's watchdog must not expire there)
        self.dir = path
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self._log = log
        self._hdr = bytearray(HDR)
        self._mv = memoryview(buf or bytearray(_MAX_RECORD))  # record buffer (_MAX_RECORD bytes)
        self.torn = 0      # torn tails dropped at boot (power cut mid-append)
        self.corrupt = 0   # segments cut short by a bad record that was not at the tail
        # Recovery (scan the segments, drop torn tails) runs once: its code lives in obscan.py,
        # unloaded afterwards to spare the 64 KB heap.
        import meter
        from meter import obscan
        obscan.recover(self, feed)
        meter.drop("meter.obscan")

    # -- paths and scanning --------------------------------------------------------------
    def _p(self, name):
        return self.dir + "/" + name

    def _seg_path(self, s):
        return self.dir + "/s%08d.log" % s

    def _read_at(self, f, off, size):
        # Validate the record at `off`; returns its payload length or -1 (torn/corrupt).
        if off + HDR > size:
            return -1
        f.seek(off)
        if f.readinto(self._hdr) != HDR:
            return -1
        n, crc = struct.unpack("<HI", self._hdr)
        if n == 0 or n > _MAX_RECORD or off + HDR + n > size:
            return -1
        mv = self._mv[:n]
        if f.readinto(mv) != n:
            return -1
        if _crc(self._hdr[:2], mv) != crc:
            return -1
        return n

    def _say(self, msg):
        if self._log:
            self._log(msg)

    # -- state ---------------------------------------------------------------------------
    @property
    def depth(self):
        d = 0
        for s in self._segs:
            d += self._counts[s]
        return d

    @property
    def used_bytes(self):
        return self._bytes

    def _end(self, s):
        return self._ends.get(s, 0)

    def _normalise_ack(self):
        # Move the ack pointer off fully-acknowledged sealed segments, deleting them.
        while self._segs and self._segs[0] != self._head and self._counts[self._segs[0]] == 0:
            self._drop_segment(self._segs[0])
        if self._segs:
            s = self._segs[0]
            if s != self._ack_seg:
                self._ack_seg, self._ack_off = s, 0
        elif (self._ack_seg, self._ack_off) < (self._head, 0):
            self._ack_seg, self._ack_off = self._head, 0

    def _drop_segment(self, s):
        persist.remove(self._seg_path(s))
        self._segs.remove(s)
        self._bytes -= self._sizes.pop(s, 0)
        self._ends.pop(s, None)
        self._counts.pop(s, None)

    def _save_ack(self):
        persist.write_ints(self._p("ack"), (self._ack_seg, self._ack_off, self.overflow))

    # -- API -----------------------------------------------------------------------------
    def append(self, frame):
        # Durable when this returns (file closed; the OS has it even if the process dies).
        # Header and payload are written separately: no concatenated copy on the heap.
        n = len(frame)
        if n == 0 or n > _MAX_RECORD:
            raise OutboxError("record of %d bytes" % n)
        rec = HDR + n
        while self._bytes + rec > self.max_bytes and self._segs and self._segs[0] != self._head:
            s = self._segs[0]
            self.overflow += self._counts[s]
            self._say("outbox full: dropped %d oldest records" % self._counts[s])
            self._counts[s] = 0
            self._normalise_ack()
            self._save_ack()
        if self._head_size and self._head_size + rec > self.segment_bytes:
            self._head += 1
            self._head_size = 0
        struct.pack_into("<HI", self._hdr, 0, n, 0)
        struct.pack_into("<I", self._hdr, 2, _crc(self._hdr[:2], frame))
        with open(self._seg_path(self._head), "ab") as f:
            f.write(self._hdr)
            f.write(frame)
        if not self._segs or self._segs[-1] != self._head:
            self._segs.append(self._head)
            self._counts[self._head] = 0
        self._counts[self._head] += 1
        self._head_size += rec
        self._bytes += rec
        self._ends[self._head] = self._head_size
        self._sizes[self._head] = self._head_size
        before = (self._ack_seg, self._ack_off)
        self._normalise_ack()
        if before != (self._ack_seg, self._ack_off):
            self._save_ack()

    def first(self):
        return (self._ack_seg, self._ack_off)

    def read(self, pos):
        # Record at `pos` or the next live one after it: (payload bytes, pos, next_pos), or None.
        s, off = pos
        if (s, off) < (self._ack_seg, self._ack_off):
            s, off = self._ack_seg, self._ack_off
        for seg in self._segs:
            if seg < s:
                continue
            if seg > s:
                off = 0
            end = self._end(seg)
            if off >= end:
                continue
            path = self._seg_path(seg)
            with open(path, "rb") as f:
                n = self._read_at(f, off, end)
            if n < 0:
                # Bit rot after boot: skip the rest of this segment, loudly.
                self.corrupt += 1
                self._say("outbox: bad record at seg %d off %d" % (seg, off))
                lost = self._counts[seg]
                self.overflow += lost
                self._counts[seg] = 0
                self._ends[seg] = off
                if seg == self._head:
                    self._head += 1
                    self._head_size = 0
                self._normalise_ack()
                self._save_ack()
                return self.read(pos)
            return bytes(self._mv[:n]), (seg, off), (seg, off + HDR + n)
        return None

    def ack(self, pos, next_pos):
        # The record at `pos` was acknowledged; callers ack in send order. Stale acks (the
        # record was already dropped by overflow or acknowledged) are ignored.
        if pos != (self._ack_seg, self._ack_off):
            if pos < (self._ack_seg, self._ack_off):
                return False
            raise OutboxError("ack out of order: %r, expected %r" % (pos, self.first()))
        s = pos[0]
        self._counts[s] -= 1
        self._ack_seg, self._ack_off = next_pos
        self._normalise_ack()
        self._save_ack()
        return True
