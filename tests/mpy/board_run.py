# One session of a stub board (tests/stubboard/mpremote_stub.py): the MicroPython unix port under
# the board stub with the board's filesystem mounted at "/", running either the code of an
# `mpremote exec` or a boot (boot.py, then main.py as __main__, as a board does after a reset).
#   micropython board_run.py SESSION.json
# SESSION: {"profile", "fs", "mode": "exec"|"boot", "code", "mount", "wdt_timeout",
#           "wdt_fed_ago_ms", "rtc_unix", "adc_budget"}. The last stdout line is "STUBRESULT {json}".
import json
import sys

import boardstub

s = json.load(open(sys.argv[1]))
W = boardstub.install(boardstub.World(s["profile"], rtc_unix=s.get("rtc_unix"), amps_rms=5.0))
W.adc_budget = s.get("adc_budget") or 0
if s.get("wdt_timeout"):
    W.wdt_timeout = s["wdt_timeout"]
    W.wdt_fed = W.ticks_ms() - s["wdt_fed_ago_ms"]
import os  # noqa: E402  (the stub's os: uname and urandom as the board has them)

import vfs  # noqa: E402

vfs.umount("/")
vfs.mount(vfs.VfsPosix(s["fs"]), "/")
os.chdir("/")
W.fs_mounted = True
if s.get("mount"):  # mpremote mount: the host folder at /remote, which becomes the cwd
    vfs.mount(vfs.VfsPosix(s["mount"]), "/remote")
    os.chdir("/remote")
sys.path[:] = ["", ".frozen", "/lib"]
sys.argv[:] = []
result = {}
try:
    if s["mode"] == "exec":
        exec(s["code"], {"__name__": "__main__"})
    else:
        for name in ("boot.py", "main.py"):
            try:
                src = open("/" + name).read()
            except OSError:
                continue
            exec(compile(src, "/" + name, "exec"), {"__name__": "__main__"})
except boardstub.WatchdogReset as e:
    result["reset"] = str(e)
except boardstub.BoardHalt:
    result["halted"] = True
except Exception as e:  # noqa: BLE001 - shown like mpremote shows a board traceback
    sys.print_exception(e)
    result["error"] = repr(e)
result["wdt_timeout"] = W.wdt_timeout
result["wdt_fed_ago_ms"] = W.ticks_ms() - W.wdt_fed if W.wdt_timeout else None
result["adc_reads"] = W.adc_reads
print("STUBRESULT " + json.dumps(result))
