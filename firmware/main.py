# Meter entry point.
#   board:     runs at boot with /config.json, state on flash in /data
#   unix port: MICROPYPATH=.frozen:<repo>/firmware:<repo> micropython firmware/main.py CONFIG.json
#              [--storage DIR] [--intervals K] [--drain-timeout S] [--check] [--board] [--romfs IMG]
# Exit codes (unix): 0 ok / drained, 2 bad config, 3 outbox not drained in time, 1 crash.
import sys

BOARD = sys.platform not in ("linux", "darwin")


def mount_romfs(argv):
    """Unix stand-in for a board's ROMFS partition: `--romfs IMG` mounts an image at /rom.

    On a board with ROMFS (MicroPython >= 1.25, `mpremote romfs deploy`) the image is memory-mapped
    flash, mounted at /rom at boot, and .mpy bytecode runs in place instead of being copied into the
    heap. Here the image has to live somewhere: it is read into one block allocated first, at the
    bottom of the heap, where it never moves; the runner adds exactly its size to `-X heapsize`, so
    the meter's own budget is the heap a board would have (host/demo/firmware_runner.py).
    """
    if "--romfs" not in argv:
        return
    i = argv.index("--romfs")
    path = argv[i + 1]
    del argv[i:i + 2]
    import os

    import vfs
    img = bytearray(os.stat(path)[6])
    with open(path, "rb") as f:
        f.readinto(img)
    vfs.mount(vfs.VfsRom(img), "/rom")
    sys.path.insert(0, "/rom")


def main(argv, board=BOARD):
    # asyncio and the parts of it the meter uses (streams, wait_for) first, while the heap is
    # empty: their module dicts are the largest blocks the meter ever needs, and after boot the
    # heap may be too fragmented to hold them (a lazy import mid-run can fail for a few hundred bytes).
    import asyncio
    asyncio.open_connection, asyncio.wait_for_ms  # noqa: B018 - loads asyncio.stream, .funcs
    # The meter's long-lived buffers, for the same reason: outbox record (1 KB), MQTT packets.
    bufs = (bytearray(1024), bytearray(384))
    # Options and config validation (startup.py, config.py) are boot-only: unloaded before the
    # meter allocates, since on the unix port module code shares the 64 KB heap.
    from meter import startup
    rc, o, cfg = startup.from_argv(argv, board)
    del startup
    import meter
    meter.drop("meter.startup")
    meter.drop("meter.config")
    if rc is not None:
        return rc
    import gc
    gc.collect()
    if cfg.get("e2e"):
        # End-to-end mode: its modules load while the heap is still in one piece (after boot it
        # is too fragmented for their dicts, as for asyncio above).
        import meter.e2e  # noqa: F401
    intervals = int(o["intervals"]) if o["intervals"] is not None else cfg["run"]["intervals"]
    drain = o["drain"] if o["drain"] is not None else cfg["run"]["drain_timeout_s"]
    if board:
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


def board_boot():
    # A board runs this file at every hard reset (a soft reset into the raw REPL does not).
    import asyncio  # noqa: F401 - first, while the heap is empty (see main)

    from meter import hal_board
    hal_board.boot(lambda: main(sys.argv, True))


if __name__ == "__main__":
    if BOARD:
        board_boot()
    else:
        mount_romfs(sys.argv)
        sys.exit(main(sys.argv))
