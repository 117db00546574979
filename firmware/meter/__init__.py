# Firmware package. drop(name): unload a boot-only module (meter.config, meter.simboot,
# meter.calboot, meter.obscan, protocol.hmac_sha256) so its code and constants leave the heap;
# on the unix port module code lives in the 64 KB GC heap (its interned names stay).
import sys


def drop(name):
    sys.modules.pop(name, None)
    pkg, leaf = name.rsplit(".", 1)
    try:
        delattr(sys.modules[pkg], leaf)
    except (KeyError, AttributeError):
        pass
