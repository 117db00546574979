# main.py's boot-only front half: the command line, then the config loaded and validated by
# config.py. Kept out of config.py so that config.py still compiles from source within a 64 KB
# heap (provisioning and the HIL tests run it that way). main.py unloads both before the meter
# allocates. MicroPython and CPython.
from meter import config


def _opts(argv, board):
    o = {"config": "config.json", "storage": None, "intervals": None, "drain": None,
         "check": False, "board": board}
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


def from_argv(argv, board):
    # main.py's front half: command line, then the validated config.
    # -> (exit code or None to run, options, config); reports problems on the console.
    try:
        o = _opts(argv, board)
    except ValueError as e:
        print("usage error:", e)
        return 2, None, None
    try:
        cfg = config.load(o["config"], board=o["board"])
    except config.ConfigError as e:
        print("CONFIG ERROR: %d bad field(s) in %s" % (len(e.errors), o["config"]))
        for field, msg in e.errors:
            print("  " + field + ": " + msg)
        return 2, None, None
    if o["check"]:
        print("CONFIG OK " + cfg["meter_id"])
        return 0, None, None
    return None, o, cfg
