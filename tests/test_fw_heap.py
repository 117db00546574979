"""Heap budget of the whole meter app (boot, config, simulated CT, sealing, outbox, MQTT, status)
on the MicroPython unix port against a real mosquitto.

Target (issue 3 item 7): a 64 KB heap. Met when the code runs from a ROMFS image (bytecode in place,
as on a board with a ROMFS partition; the runner keeps the image outside the 64 KB budget):
~11 KB free at the low point. With the .mpy files copied into the heap (stock firmware layout)
the app needs ~75 KB live on the 64-bit port: 84k, 88k and 104k are guarded, RAM-loaded 64k is a
strict xfail that turns into XPASS (a failure) the day it fits. docs/FIRMWARE.md "Memory".
"""

from __future__ import annotations

import pytest
from fwutil import Subscriber, meter_config

from meterveil.host.demo import firmware_runner as fr
from meterveil.protocol import frame

INTERVALS = 6
STATUS_EVERY = 3
MARGIN = 8 * 1024  # free heap required at the low point (after a collection), bytes


@pytest.mark.parametrize("heapsize,margin,romfs", [
    ("64k", MARGIN, True),   # bytecode in place from a ROMFS image, as on a board with ROMFS
    ("104k", MARGIN, False),
    ("88k", MARGIN, False),
    ("84k", 6 * 1024, False),  # .mpy loaded into the heap: the smallest that runs reliably (~9 KB free)
    pytest.param("64k", 6 * 1024, False, marks=pytest.mark.xfail(
        strict=True, reason="with bytecode in the heap the app needs ~74 KB live (docs/FIRMWARE.md)")),
])
def test_meter_delivers_everything_with_heap_margin(tmp_path, mosquitto, heapsize, margin, romfs):
    sub = Subscriber(mosquitto.port)
    try:
        cfg = meter_config(tmp_path, mosquitto.url, status_every=STATUS_EVERY)
        meter = fr.MeterProcess(cfg, tmp_path / "state", intervals=INTERVALS, drain_timeout=60,
                                heapsize=heapsize, log_path=tmp_path / "meter.log", romfs=romfs)
        meter.start()
        rc = meter.wait(120)
        assert rc == fr.EXIT_OK, meter.output[-2000:]
        truth = meter.truth()
        assert len(truth) == INTERVALS
        want = {t["counter"] for t in truth}
        assert sub.wait_count(lambda msgs: len(msgs) >= INTERVALS + INTERVALS // STATUS_EVERY, 30)
        got = {m["header"]["counter"] for m in sub.decoded(frame.KIND_READING)}
        assert want <= got, f"readings not delivered: {sorted(want - got)}"
        assert len(sub.decoded(frame.KIND_STATUS)) >= INTERVALS // STATUS_EVERY
        heap = meter.heap()
        assert heap is not None, meter.output[-2000:]
        assert heap["min_free_after_gc"] >= margin, heap
        assert (heap["code_from"] == "/rom") == romfs, heap
    finally:
        sub.close()
