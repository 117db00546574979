# A board restarted mid-interval with its RTC kept but not yet trusted (no NTP answer yet): the
# unix HAL with clock_synced() false until a given simulated time. Prints the TRUTH lines as JSON.
import asyncio
import json
import sys

from meter import config
from meter.app import Meter
from meter.hal_unix import UnixHAL

spec = json.load(open(sys.argv[1]))
cfg = config.load(spec["config"])


class LateSyncHAL(UnixHAL):
    def clock_synced(self):
        return self._sim >= spec["sync_at_ms"]


hal = LateSyncHAL(cfg, spec["storage"])
lines = []
m = Meter(hal, cfg, log=lambda s: None, out=lines.append)
asyncio.run(m.measure(spec["intervals"]))
print(json.dumps([json.loads(ln[6:]) for ln in lines if ln.startswith("TRUTH ")]))
