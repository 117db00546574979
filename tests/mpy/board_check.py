# Board HAL scenarios under the board stub (boardstub.py), one per run: prints one JSON line.
#   micropython board_check.py SPEC.json   SPEC: {"profile", "scenario", "dir", ...}
# The firmware is imported after the stub is installed, as a board would see its modules.
import json
import sys

import boardstub

spec = json.load(open(sys.argv[1]))
W = boardstub.install(boardstub.World(spec["profile"], rtc_unix=spec.get("rtc_unix"),
                                      true_unix=spec.get("true_unix"), ntp=spec.get("ntp"),
                                      amps_rms=spec.get("amps_rms", 0.0)))
import asyncio  # noqa: E402

from meter import config  # noqa: E402

CAL = {"ct_turns": 2000, "burden_ohm": 33.0, "adc_bits": 12, "vref_mv": 3300, "volts": 230.0,
       "power_factor": 1.0, "rated_amps": 30.0}


def board_cfg(**over):
    cfg = {"meter_id": "m0001", "master_key": "00" * 32, "feeder": "F1",
           "dp": {"epsilon_milli": 1000, "clamp_wh": 1000, "m": 10}, "calibration": dict(CAL),
           "broker": {"url": "mqtt://127.0.0.1:9"}, "wifi": {"ssid": "x", "password": "y"}}
    cfg.update(over)
    return config.with_defaults(cfg)


def make_hal(cfg=None, **kw):
    from meter.hal_board import BoardHAL
    return BoardHAL(cfg or board_cfg(board=spec.get("board") or {}), spec["dir"] + "/data", **kw)


def out(**r):
    print(json.dumps(r))


def err(e):
    return "%s: %s" % (type(e).__name__, e)


sc = spec["scenario"]
if sc == "boot":
    # The HAL comes up with its watchdog armed, under the chip's limits and default ADC pin.
    try:
        hal = make_hal()
        out(ok=True, wdt_ms=W.wdt_timeout, pin=getattr(hal, "adc_pin", None))
    except Exception as e:  # noqa: BLE001 - the result is the report
        out(ok=False, error=err(e))

elif sc == "clock":
    # Wall clock after a sync: the HAL's Unix time must match the true time whatever the epoch.
    hal = make_hal()
    W.set_rtc(spec["true_unix"])
    hal._pin()
    out(now_s=hal.now_ms() // 1000, true_s=W.utc())

elif sc == "ntp":
    # NTP fails at first; the HAL must retry soon (backoff), not an hour later.
    hal = make_hal()
    synced_at = None
    for step in range(spec["steps"]):
        try:
            hal._wifi()
        except OSError:
            pass
        asyncio.run(hal.sleep_ms(0))
        W.wdt_fed = W.ticks_ms()  # the meter loop feeds every block; only NTP is under test
        if hal.clock_synced() and synced_at is None:
            synced_at = step * spec["step_ms"]
        W.advance(spec["step_ms"])
    t0 = W.ntp_log[0] if W.ntp_log else 0
    out(synced_after_ms=synced_at, attempts=[(t - t0) & 0x3FFFFFFF for t in W.ntp_log],
        now_s=hal.now_ms() // 1000, true_s=W.utc())

elif sc == "resync":
    # After the first sync the crystal drifts; the next sync must correct it without a jump.
    hal = make_hal()
    try:
        hal._wifi()  # starts associating
    except OSError:
        pass
    asyncio.run(hal.sleep_ms(0))
    synced = hal.clock_synced()
    W.drift(spec["drift_s"])
    prev = hal.now_ms()
    deltas = []
    for _ in range(spec["steps"]):
        W.wdt_fed = W.ticks_ms()
        W.advance(spec["step_ms"])
        asyncio.run(hal.sleep_ms(0))
        t = hal.now_ms()
        deltas.append(t - prev - spec["step_ms"])
        prev = t
    out(synced=synced, attempts=len(W.ntp_log), min_delta=min(deltas), max_delta=max(deltas),
        off_ms=hal.now_ms() - W.utc() * 1000)

elif sc == "adc":
    # A block at the given current: how many samples the meter counts as outside the ADC's range.
    import array

    from meter import sensing
    hal = make_hal()
    cfg = board_cfg()
    cal = getattr(hal, "cal", None) or sensing.Calibration(cfg["calibration"])
    buf = array.array("H", bytes(2 * hal.block_samples))
    stats = [0, 0]  # sensing: clipped samples, over-rated blocks
    n, fs, cov = hal.read_block(buf, len(buf))
    mw = sensing.block_power_mw(buf, n, cal, stats)
    out(n=n, clipped=stats[0], max_code=max(buf), mw=mw)

elif sc == "boot_scan":
    # A large outbox scanned at boot, after the HAL armed the watchdog: it must be fed meanwhile.
    from meter import outbox
    box = spec["dir"] + "/data/outbox"
    ob = outbox.Outbox(box, 1024, 1 << 20)
    for i in range(spec["records"]):
        ob.append(bytes([1 + i % 200]) * 200)
    del ob
    hal = make_hal()
    before = W.feeds
    from meter.app import Meter
    try:
        m = Meter(hal, board_cfg(), log=lambda s: None, out=lambda s: None)
        out(ok=True, depth=m.outbox.depth, feeds=W.feeds - before)
    except boardstub.WatchdogReset as e:
        out(ok=False, error=str(e), feeds=W.feeds - before)

elif sc == "ivs":
    # IVs of sealed frames across two boots with the port's os.urandom (rp2: biased ring oscillator).
    from meter.app import Meter

    from protocol import frame
    ivs = []
    for _boot in range(2):
        hal = make_hal()
        m = Meter(hal, board_cfg(), log=lambda s: None, out=lambda s: None)
        for _ in range(spec["frames"]):
            blob = m._will_frame()
            ivs.append(bytes(blob[frame.HEADER_LEN:frame.HEADER_LEN + frame.IV_LEN]).hex())
    out(frames=len(ivs), distinct=len(set(ivs)))

elif sc == "tls_wait":
    # With TLS, no handshake is tried before the clock is set (certificate dates).
    hal = make_hal()
    try:
        hal._wifi()  # starts associating
    except OSError:
        pass
    try:
        asyncio.run(hal.open_connection("127.0.0.1", 9, tls=object()))
        out(error=None)
    except Exception as e:  # noqa: BLE001
        out(error=err(e), synced=hal.clock_synced())
