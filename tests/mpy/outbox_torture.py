# SIGKILL target: appends and acknowledges outbox records as fast as it can, printing what it
# did; the host kills it at random moments and checks the log (tests/test_fw_outbox.py).
# Usage: micropython outbox_torture.py DIR SEED [drain]
#   prints "BOOT depth torn", "P c" per pending record at boot, then "C c" after each durable
#   append and "A c" just before each ack; with "drain": acks everything and prints "DONE".
import os
import struct
import sys

from meter.outbox import Outbox
from meter.persist import FrameCounter

d = sys.argv[1]
seed = int(sys.argv[2])
ob = Outbox(d + "/ob", segment_bytes=1024, max_bytes=1 << 22)
ctr = FrameCounter(d + "/ctr", block=8)
print("BOOT", ob.depth, ob.torn)
pos = ob.first()
while True:
    r = ob.read(pos)
    if r is None:
        break
    print("P", struct.unpack(">I", r[0][:4])[0])
    pos = r[2]
filler = bytes(100)


def ack_one():
    r = ob.read(ob.first())
    if r is None:
        return False
    print("A", struct.unpack(">I", r[0][:4])[0])
    ob.ack(r[1], r[2])
    return True


if len(sys.argv) > 3:
    while ack_one():
        pass
    print("DONE")
    sys.exit(0)
x = seed * 2654435761 & 0xFFFFFFFF or 1
while True:
    c = ctr.take()
    ob.append(struct.pack(">I", c) + filler)
    print("C", c)
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    x ^= (x << 5) & 0xFFFFFFFF
    for _ in range(x % 3):   # acks lag appends on average: the outbox keeps some depth
        ack_one()
    if x % 97 == 0:
        os.listdir(d)  # vary timing a little
