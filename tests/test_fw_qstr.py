"""Interned names (qstrs) of the whole meter app, proxy and E2E mode, against a budget.

Every module name, global, attribute, argument name and short string constant of a loaded module
(boot-only ones included) stays interned in RAM for good. The unix port's five qstr pools hold 620
names; the 621st allocates a sixth pool of ~7 KB, which the 64 KB budgets (tests/test_fw_heap.py,
tests/test_fw_e2e.py) cannot give: they then fail with a bare MemoryError at boot. This test runs
with room to spare, so crossing a budget fails here with the count and the reason instead.
docs/FIRMWARE.md "Memory".
"""

from __future__ import annotations

import pytest
from fwutil import Subscriber, meter_config
from phe import paillier as phe_paillier

from meterveil.host.common.pubkey import make_hs
from meterveil.host.demo import firmware_runner as fr

QSTR_POOLS_HOLD = 620  # 20 + 40 + 80 + 160 + 320 names in the unix port's first five pools
E2E_BUDGET = 616  # a little under the cliff: the warning comes before the MemoryError
PROXY_BUDGET = 575  # E2E mode interns ~41 names on top of proxy mode's (measured: 557 and 598)


@pytest.mark.parametrize("mode", ["proxy", "e2e"])
def test_interned_names_stay_within_budget(tmp_path, mosquitto, mode):
    over = {}
    if mode == "e2e":
        pub, _sk = phe_paillier.generate_paillier_keypair(n_length=2048)
        over = {"e2e": {"n": f"{pub.n:x}", "hs": f"{make_hs(pub.n):x}", "exp_bits": 1024,
                        "household_key": bytes(range(32)).hex()}, "sim": {"block_s": 60}}
    sub = Subscriber(mosquitto.port)
    try:
        cfg = meter_config(tmp_path, mosquitto.url, status_every=3, **over)
        meter = fr.MeterProcess(cfg, tmp_path / "state", intervals=4, drain_timeout=60, heapsize="256k",
                                log_path=tmp_path / "meter.log", romfs=True)
        meter.start()
        assert meter.wait(240) == fr.EXIT_OK, meter.output[-2000:]
        heap = meter.heap()
        assert heap is not None and "qstrs" in heap, meter.output[-2000:]
        budget = PROXY_BUDGET if mode == "proxy" else E2E_BUDGET
        assert heap["qstrs"] <= budget, (
            f"{mode} meter interns {heap['qstrs']} names (budget {budget}); past {QSTR_POOLS_HOLD} the "
            "unix port allocates a sixth qstr pool (~7 KB) and the 64 KB heap tests fail at boot: "
            "use fewer distinct names (docs/FIRMWARE.md \"Memory\")")
    finally:
        sub.close()
