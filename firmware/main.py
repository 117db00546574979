# Meter entry point.
#   board:     runs at boot with /config.json, state on flash in /data
#   unix port: MICROPYPATH=.frozen:<repo>/firmware:<repo> micropython firmware/main.py CONFIG.json
#              [--storage DIR] [--intervals K] [--drain-timeout S] [--check] [--board]
# Exit codes (unix): 0 ok / drained, 2 bad config, 3 outbox not drained in time, 1 crash.
import sys

BOARD = sys.platform not in ("linux", "darwin")


def main(argv):
    # asyncio and the parts of it the meter uses (streams, wait_for) first, while the heap is
    # empty: their module dicts are the largest blocks the meter ever needs, and after boot the
    # heap is too fragmented to guarantee them (a lazy import mid-run failed on 592 bytes).
    import asyncio
    asyncio.open_connection, asyncio.wait_for_ms  # noqa: B018 - loads asyncio.stream, .funcs
    # The meter's long-lived buffers, for the same reason: outbox record (1 KB), MQTT packets.
    bufs = (bytearray(1024), bytearray(384))
    # Options and config validation (startup.py, config.py) are boot-only: unloaded before the
    # meter allocates, since on the unix port module code shares the 64 KB heap.
    from meter import startup
    rc, o, cfg = startup.from_argv(argv, BOARD)
    del startup
    import meter
    meter.drop("meter.startup")
    meter.drop("meter.config")
    if rc is not None:
        return rc
    import gc
    gc.collect()
    intervals = int(o["intervals"]) if o["intervals"] is not None else cfg["run"]["intervals"]
    drain = o["drain"] if o["drain"] is not None else cfg["run"]["drain_timeout_s"]
    if BOARD:
        from meter.hal_board import BoardHAL
        hal = BoardHAL(cfg, o["storage"] or "/data")
    else:
        from meter.hal_unix import UnixHAL
        base = o["config"].rsplit("/", 1)[0] if "/" in o["config"] else "."
        hal = UnixHAL(cfg, o["storage"] or base + "/state")
    from meter.app import Meter
    meter = Meter(hal, cfg, bufs=bufs)
    del cfg, o, bufs  # everything needed has been copied out: free the parsed config before the loop
    gc.collect()
    ok = asyncio.run(meter.run(intervals, drain))
    return 0 if ok else 3


if BOARD:
    # Under the watchdog (started by BoardHAL): anything unexpected is logged and the board
    # resets; the outbox and counters on flash make a reset lose at most the current interval.
    try:
        main(sys.argv)
    except Exception as e:  # noqa: BLE001 - last line of defence on a device nobody watches
        sys.print_exception(e)
        import time

        import machine
        time.sleep(5)
        machine.reset()
else:
    sys.exit(main(sys.argv))
