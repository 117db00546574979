"""Heap budget of the whole meter app (boot, config, simulated CT, sealing, outbox, MQTT, status)
on the MicroPython unix port against a real mosquitto.

Target (issue 3 item 7): `-X heapsize=64k`. Measured today (docs/FIRMWARE.md "Memory"): the app
needs ~74 KB live at its low point on the 64-bit unix port (84 KB before the boot-only modules
were split out). 84k and 88k run reliably (~10.5 / ~14.5 KB free at the low point, 5 runs each);
80k has ~6 KB free but dies of fragmentation in most runs, 76k fails at boot. 88k (and the old
104k) are guarded here with >= 8 KB free; the 64k case is a strict xfail that turns into XPASS
(a failure) the day the app fits.
"""

from __future__ import annotations

import pytest
from fwutil import Subscriber, meter_config

from meterveil.host import firmware_runner as fr
from meterveil.protocol import frame

INTERVALS = 6
STATUS_EVERY = 3
MARGIN = 8 * 1024  # free heap required at the low point (after a collection), bytes


@pytest.mark.parametrize("heapsize", [
    "104k",
    "88k",
    pytest.param("64k", marks=pytest.mark.xfail(
        strict=True, reason="the app needs ~74 KB live on the 64-bit unix port (docs/FIRMWARE.md)")),
])
def test_meter_delivers_everything_with_heap_margin(tmp_path, mosquitto, heapsize):
    sub = Subscriber(mosquitto.port)
    try:
        cfg = meter_config(tmp_path, mosquitto.url, status_every=STATUS_EVERY)
        meter = fr.MeterProcess(cfg, tmp_path / "state", intervals=INTERVALS, drain_timeout=60,
                                heapsize=heapsize, log_path=tmp_path / "meter.log")
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
        assert heap["min_free_after_gc"] >= MARGIN, heap
    finally:
        sub.close()
