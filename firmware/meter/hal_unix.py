# Unix HAL: the meter's hardware on the MicroPython unix port, so the real firmware runs in CI.
# - clock: simulated wall clock. Time advances by what the meter consumes (each ADC block covers
#   a known span; sleep_ms adds its span), paced so it never runs ahead of
#   anchor + speed * real elapsed time. Every simulated second is sampled exactly once however
#   fast the machine is; a slow machine just runs the simulation slower than `speed`. The anchor
#   is kept in the storage dir, so after a kill the clock resumes where a battery-backed RTC
#   would be: the time the meter was down has passed (scaled).
# - ADC: helper SimADC (ctsim.py) replays the profile. dense: blocks of 200 ms back to back;
#   sparse: two mains cycles per block, the block standing for `sim.block_s` seconds.
# - storage: a folder; network: real sockets (asyncio streams, optional TLS); watchdog: a stall
#   detector (longest gap between feeds) instead of a reset.
import asyncio
import gc
import os
import time

from meter import persist

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

_SPC = const(32)         # default samples per mains cycle (fs = 32 * mains_hz)
_DENSE_MS = const(200)   # dense block: 10 cycles at 50 Hz, 12 at 60 Hz


def _real_ms():
    return time.time_ns() // 1000000


class UnixHAL:
    board = False

    def __init__(self, cfg, storage_dir, log=None):
        sim = cfg["sim"]
        self._log = log or (lambda m: None)
        self.storage_dir = storage_dir
        persist.makedirs(storage_dir)
        self.speed = sim["speed"]
        mains = sim["mains_hz"]
        self.fs_hz = sim["fs_hz"] or mains * _SPC
        self.dense = sim["mode"] == "dense"
        if self.dense:
            self.block_ms = _DENSE_MS
            cycles = mains * _DENSE_MS // 1000
        else:
            self.block_ms = sim["block_s"] * 1000
            cycles = 2
        self._anchor(sim)
        from meter import ctsim, sensing
        self.block_samples = sensing.cycle_samples(self.fs_hz, mains, cycles)
        self.cal = sensing.Calibration(cfg["calibration"])  # shared with app.Meter
        period = sim.get("period_s") or 0
        kw = dict(sim.get("adc") or {})
        # The simulated parts are the ones the config names (nominal values, not the meter's
        # derived constants) unless sim.adc.parts says otherwise; sim.adc.mains_hz sets the
        # true mains frequency (the meter samples for the nominal one).
        if "parts" not in kw:
            kw["parts"] = cfg["calibration"]  # SimADC reads only the part values from it
        true_mains = kw.pop("mains_hz", mains)
        # Daily profiles (period_s > 0) line up with UTC time of day; one-off profiles start
        # with the simulation.
        epoch = 0 if period else self._anchor_sim
        self.adc = ctsim.SimADC(sim["profile"], true_mains, sim["seed"], epoch_ms=epoch,
                                period_s=period, **kw)
        self._last_feed = None
        self.max_feed_gap_ms = 0
        self.netcut_path = storage_dir + "/netcut"

    def _anchor(self, sim):
        path = self.storage_dir + "/simclock"
        now = _real_ms()
        vals = persist.read_ints(path, 2)
        if vals is None:
            start = sim.get("start_time")
            vals = [now, start * 1000 if start else now]
            persist.write_ints(path, vals)
        self._anchor_real, self._anchor_sim = vals
        t = self._anchor_sim + int((now - self._anchor_real) * self.speed)
        self._sim = t + (-t) % self.block_ms  # blocks on a grid: none straddles an interval

    # -- clock --------------------------------------------------------------------------
    def now_ms(self):
        return self._sim

    def clock_synced(self):
        return True

    async def sleep_ms(self, ms):
        # Advance simulated time by ms, then wait until real time has caught up with it.
        self._sim += ms
        ahead = (self._sim - self._anchor_sim) / self.speed - (_real_ms() - self._anchor_real)
        await asyncio.sleep_ms(int(ahead) if ahead > 0 else 0)

    # -- ADC ----------------------------------------------------------------------------
    def read_block(self, buf, n):
        n = self.adc.read_block(buf, self._sim, n, self.fs_hz)
        self._sim += self.block_ms
        return n, self.fs_hz, self.block_ms

    def true_energy_mwh(self, t0_ms, t1_ms):
        return self.adc.true_energy_mwh(t0_ms, t1_ms)

    # -- network ------------------------------------------------------------------------
    async def open_connection(self, host, port, tls=None):
        # Test knob: while <storage>/netcut exists the network is down (like a Wi-Fi outage).
        if persist.exists(self.netcut_path):
            raise OSError(113, "network cut (netcut flag)")  # EHOSTUNREACH
        if tls is not None:
            return await asyncio.open_connection(host, port, ssl=tls, server_hostname=host)
        return await asyncio.open_connection(host, port)

    # -- misc ---------------------------------------------------------------------------
    def wdt_feed(self):
        t = time.ticks_ms()
        if self._last_feed is not None:
            gap = time.ticks_diff(t, self._last_feed)
            if gap > self.max_feed_gap_ms:
                self.max_feed_gap_ms = gap
        self._last_feed = t

    def unique_id(self):
        import hashlib
        return hashlib.sha256(os.getcwd().encode() + b"|" + self.storage_dir.encode()).digest()[:6]

    def free_heap(self):
        return gc.mem_free()

    def reset(self):
        # A board would reboot; the unix port ends the process (the runner restarts it).
        raise SystemExit(4)
