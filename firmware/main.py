# Meter entry point.
#   board:     runs at boot with /config.json, state on flash in /data
#   unix port: MICROPYPATH=.frozen:<repo>/firmware:<repo> micropython firmware/main.py CONFIG.json
#              [--storage DIR] [--intervals K] [--drain-timeout S] [--check] [--board]
# Exit codes (unix): 0 ok / drained, 2 bad config, 3 outbox not drained in time, 1 crash.
import sys

BOARD = sys.platform not in ("linux", "darwin")


def _opts(argv):
    o = {"config": "config.json", "storage": None, "intervals": None, "drain": None,
         "check": False, "board": BOARD}
    i = 1
    while i < len(argv):
        a = argv[i]
        if a in ("--storage", "--intervals", "--drain-timeout") and i + 1 < len(argv):
            key = {"--storage": "storage", "--intervals": "intervals", "--drain-timeout": "drain"}[a]
            o[key] = argv[i + 1] if key == "storage" else float(argv[i + 1])
            i += 2
            continue
        if a == "--check":
            o["check"] = True
        elif a == "--board":
            o["board"] = True
        elif a.startswith("--"):
            raise ValueError("unknown option " + a)
        else:
            o["config"] = a
        i += 1
    return o


def _report_config_error(path, e):
    print("CONFIG ERROR: %d bad field(s) in %s" % (len(e.errors), path))
    for field, msg in e.errors:
        print("  " + field + ": " + msg)


def main(argv):
    try:
        o = _opts(argv)
    except ValueError as e:
        print("usage error:", e)
        return 2
    from meter import config
    try:
        cfg = config.load(o["config"], board=o["board"])
    except config.ConfigError as e:
        _report_config_error(o["config"], e)
        return 2
    if o["check"]:
        print("CONFIG OK " + cfg["meter_id"])
        return 0
    # The validator is big and needed once: drop it before the meter allocates (64 KB heap).
    del config
    sys.modules.pop("meter.config", None)
    import meter
    if hasattr(meter, "config"):
        delattr(meter, "config")
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
    import asyncio

    from meter.app import Meter
    meter = Meter(hal, cfg)
    del cfg  # everything needed has been copied out: free the parsed config before the loop
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
