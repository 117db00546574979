# The meter loop: sample continuously, integrate energy per wall-clock-aligned interval, add the
# DP noise share, seal, append to the outbox (before any send), kick the publisher; a status
# frame every `status_every` readings. The HAL is passed in (app.Meter(hal, cfg)), never
# imported here, so the same loop runs on a board and on the unix port.
import array
import asyncio
import binascii
import gc
import json
import sys
import time

import meter
from meter import persist, privacy, sensing
from meter.outbox import Outbox
from meter.publisher import Publisher
from protocol import frame

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

FW_VERSION = (0, 1, 0)
_MAX_GAP_INTERVALS = const(2)  # a clock step larger than this restarts measuring (NTP step, RTC reset)
# The running interval is checkpointed to flash this often (meter clock), so a reset loses at most
# this much energy instead of the whole interval. 5 min: ~290 small writes a day (flash wear).
_CHECKPOINT_MS = const(300000)
_COUNTER_EPOCH_S = 1577836800  # 2020-01-01: frame counters follow seconds since then (u32 until 2156)


def _line(s):
    # One write per line: a kill cannot leave half a TRUTH line followed by another line.
    sys.stdout.write(s + "\n")


def _cap16(v):
    return 0xFFFF if v > 0xFFFF else v


# The running interval as kept on flash (`partial` file, one int per field in this order).
_CP_START = const(0)      # interval start (s)
_CP_MWH = const(1)        # whole mWh so far
_CP_REM = const(2)        # sub-mWh remainder (mW*ms)
_CP_COVERED = const(3)    # ms measured
_CP_SAMPLES = const(4)
_CP_CLIPPED = const(5)
_CP_FIELDS = const(6)
# The `state` file: UTC day, DP spend that day, readings that day, last sealed interval start (s).
_ST_DAY = const(0)
_ST_SPEND = const(1)
_ST_READINGS = const(2)
_ST_LAST = const(3)
_ST_FIELDS = const(4)


class Meter:
    def __init__(self, hal, cfg, log=None, out=None, bufs=(None, None)):
        # bufs: (outbox record buffer 1 KB, MQTT packet buffer 384 B), allocated by main.py
        # while the heap was empty (a fragmented heap may not have 1 KB in one piece later).
        self.hal = hal
        self.status_every = cfg["status_every"]  # cfg itself is not kept: it is dropped after boot
        self.log = log or print
        self.out = out or _line   # machine-readable lines (TRUTH/STATUS/HEAP) for the host
        sd = hal.storage_dir
        self.e2e = None  # end-to-end mode: readings leave Paillier-encrypted (meter/e2e.py)
        if cfg.get("e2e"):  # first: its numbers are the largest blocks the meter keeps
            from meter.e2e import E2E
            self.e2e = E2E(cfg["e2e"], sd, self.log)
        self.meter_id = cfg["meter_id"]
        self.interval_s = cfg["interval_s"]
        dp = cfg["dp"]
        self.eps, self.clamp, self.m = dp["epsilon_milli"], dp["clamp_wh"], dp["m"]
        if hasattr(privacy, "configure"):  # the first Meter of this process (board_check builds two)
            privacy.configure(dp, self.interval_s)  # the share variance: provisioned, else the fallback
            del privacy.configure, privacy.fallback_share_variance  # boot-only code, freed for the heap
        self.keys = frame.derive_keys(binascii.unhexlify(cfg["master_key"]))
        meter.drop("protocol.hmac_sha256")  # HKDF is needed once; sealing inlines its HMAC
        self.cal = getattr(hal, "cal", None) or sensing.Calibration(cfg["calibration"])
        self.boot_count = persist.bump_boot_count(sd + "/boots")
        self.counter = persist.FrameCounter(sd + "/counter")
        ob = cfg["outbox"]
        self.outbox = Outbox(sd + "/outbox", ob["segment_bytes"], ob["max_bytes"], self.log, bufs[0],
                             hal.wdt_feed)
        st = persist.read_ints(sd + "/state", _ST_FIELDS) or (-1, 0, 0, 0)
        self.state_path = sd + "/state"
        self.cp_path = sd + "/partial"
        self.spend = privacy.DailySpend(st[_ST_DAY], st[_ST_SPEND], st[_ST_READINGS])
        # A reading appended just before a power cut may be newer than the state file says.
        self.last_interval = max(st[_ST_LAST], self.outbox.newest_reading)
        self.pub = Publisher(hal, cfg, self.outbox, self._will_frame, self.log, bufs[1])
        self.buf = array.array("H", bytes(2 * hal.block_samples))
        # sensing: clipped samples of the block, over-rated blocks; longest gap between two ADC blocks (us)
        self.stats = [0, 0, 0]
        self.truth = cfg["run"]["truth"] and hasattr(hal, "true_energy_mwh")
        self.readings = 0          # sealed by this boot
        self.statuses = 0
        self.boot_ms = hal.now_ms()
        # IVs and noise: a DRBG seeded once from the hardware source plus values this meter never
        # repeats (its id, the boot count), so a weak source cannot repeat an IV across boots.
        # Loaded and seeded last: the boot peak (outbox scan, publisher) comes before.
        from meter import rng
        rng.seed(bytes(hal.unique_id()) + self.boot_count.to_bytes(4, "big"))
        self.rand = rng.take
        if self.e2e:
            self.e2e.rand = self.rand
        gc.collect()
        self.min_free = hal.free_heap()  # lowest free heap after a collection (HEAP line)
        self.log("meter %s boot %d: outbox depth %d, overflow %d, torn %d, next counter %d"
                 % (self.meter_id, self.boot_count, self.outbox.depth, self.outbox.overflow,
                    self.outbox.torn, self.counter.peek()))

    # -- frames -------------------------------------------------------------------------
    def _header(self, kind, start_s, length):
        # A replacement board (new key, empty flash) starts counting at 1, below what the old board
        # used: the gateway would take its frames for counter reuse. With a set clock, a counter far
        # behind the seconds since 2020 jumps to them once; frames are far rarer than one a second,
        # so a board never catches up with that floor, and every later jump only moves forward.
        if self.hal.clock_synced():
            floor = self.hal.now_ms() // 1000 - _COUNTER_EPOCH_S
            if self.counter.peek() < floor // 2:
                self.counter.raise_to(floor)
        return {"kind": kind, "meter_id": self.meter_id, "counter": self.counter.take(),
                "interval_start": start_s, "interval_len": length,
                "epsilon_milli": self.eps, "clamp_wh": self.clamp, "m": self.m}

    def _status_fields(self, now_s):
        spend, today = self.spend.today(now_s)
        return {"uptime_s": (self.hal.now_ms() - self.boot_ms) // 1000,
                "free_heap": self.hal.free_heap(), "outbox_depth": self.outbox.depth,
                "outbox_overflow": self.outbox.overflow, "reconnects": self.pub.reconnects,
                "publish_retries": self.pub.retries, "dp_spend_milli": spend,
                "readings_today": _cap16(today), "boot_count": _cap16(self.boot_count),
                "fw_version": FW_VERSION}

    def _will_frame(self):
        # Last will: a sealed status snapshot the broker publishes if this meter drops off
        # without DISCONNECT. Sealed once per boot (one counter), never stored in the outbox.
        now_s = self.hal.now_ms() // 1000
        return frame.seal(self.keys, self._header(frame.KIND_STATUS, now_s, 0),
                          self._status_fields(now_s), self.rand(frame.IV_LEN))

    def _status(self):
        now_s = self.hal.now_ms() // 1000
        fields = self._status_fields(now_s)
        hdr = self._header(frame.KIND_STATUS, now_s, 0)
        self.outbox.append(frame.seal(self.keys, hdr, fields, self.rand(frame.IV_LEN)))
        self.statuses += 1
        self.out("STATUS " + json.dumps({"meter_id": self.meter_id, "counter": hdr["counter"],
                                          "outbox_depth": fields["outbox_depth"],
                                          "free_heap": fields["free_heap"]}))
        self.pub.kick()

    def _seal_reading(self, start_ms, acc, covered_ms, samples, clipped, partial):
        start_s = start_ms // 1000
        if start_s <= self.last_interval:
            # Already reported before a reboot (clock behind the last sealed interval).
            self.log("skip interval %d: already sealed" % start_s)
            acc.take_wh()
            return
        iv_ms = self.interval_s * 1000
        energy = acc.take_wh()
        noise = privacy.noise_share(self.eps, self.clamp, self.m, self.rand)
        analytics = privacy.analytics_value(energy, self.clamp, noise)
        missing = (iv_ms - covered_ms) // 1000
        if missing < 0:
            missing = 0
        flags = 0
        if partial or missing:
            flags |= frame.FLAG_PARTIAL_INTERVAL
        if not self.hal.clock_synced():
            flags |= frame.FLAG_CLOCK_UNSYNCED
        if privacy.is_clamped(energy, self.clamp):
            flags |= frame.FLAG_CLAMPED
        if clipped:
            flags |= frame.FLAG_ADC_CLIPPED
            if clipped > 0xFFFF:
                flags |= frame.FLAG_CLIPPED_SATURATED
        if self.stats[1]:  # blocks above rated current since the last reading (sensing counts)
            flags |= frame.FLAG_OVER_RATED
            self.stats[1] = 0
        fields = {"billing_wh": energy, "analytics_wh": analytics, "flags": flags,
                  "samples": samples, "clipped": _cap16(clipped), "missing_s": _cap16(missing)}
        hdr = self._header(frame.KIND_READING, start_s, self.interval_s)
        iv = self.rand(frame.IV_LEN)
        blob = self.e2e.seal(self.keys, hdr, fields, iv) if self.e2e else frame.seal(self.keys, hdr, fields, iv)
        # Durable before anything is sent or reported. A power cut before this line leaves the
        # last checkpoint to resume from; after it, the boot scan of the outbox knows the interval
        # is sealed (no await until the checkpoint moves, so the frame cannot be acked before).
        self.outbox.append(blob)
        self.spend.record(start_s, self.eps)
        self.last_interval = start_s
        persist.write_ints(self.state_path, (self.spend.day, self.spend.spend_milli,
                                             self.spend.readings, start_s))
        if self.hal.clock_synced():  # the next interval starts with this one's sub-Wh remainder
            persist.write_ints(self.cp_path, (start_s + self.interval_s, acc.mwh, acc.rem, 0, 0, 0))
        self.readings += 1
        if self.truth:
            self.out("TRUTH " + json.dumps({
                "meter_id": self.meter_id, "counter": hdr["counter"], "interval_start": start_s,
                "interval_len": self.interval_s, "energy_wh": energy, "analytics_wh": analytics,
                "flags": flags, "missing_s": fields["missing_s"],
                "true_mwh": self.hal.true_energy_mwh(start_ms, start_ms + iv_ms)}))
        self.pub.kick()
        gc.collect()
        free = self.hal.free_heap()
        if free < self.min_free:
            self.min_free = free

    # -- loop ---------------------------------------------------------------------------
    async def measure(self, intervals=0):
        # Sample until `intervals` readings are sealed (0: forever).
        hal = self.hal
        buf = self.buf
        cal = self.cal
        stats = self.stats
        nbuf = len(buf)
        iv_ms = self.interval_s * 1000
        every = self.status_every
        acc = sensing.EnergyAccumulator()
        now = hal.now_ms()
        start = now - now % iv_ms
        partial = now != start      # the first interval after boot misses its beginning
        covered = samples = clipped = 0
        # Until the clock is trusted (a board's NTP sync) nothing is sealed and last_interval stays
        # put: energy accumulates unsealed and goes into the first trusted interval (flagged
        # partial), and a checkpoint from before a reset can still be applied.
        waiting = not hal.clock_synced()
        # Energy measured before a reset, applied once the clock can place it.
        cp = persist.read_ints(self.cp_path, _CP_FIELDS)
        next_cp = now + _CHECKPOINT_MS
        e2e = self.e2e
        ticks_us, ticks_diff = time.ticks_us, time.ticks_diff
        b_end = None
        while True:
            t0 = hal.now_ms()
            if b_end is not None:
                g = ticks_diff(ticks_us(), b_end)  # nothing is sampled between two blocks
                if g > stats[2]:
                    stats[2] = g
            n, _fs, cov = hal.read_block(buf, nbuf)
            b_end = ticks_us()
            t1 = hal.now_ms()
            stats[0] = 0
            p = sensing.block_power_mw(buf, n, cal, stats)
            hal.wdt_feed()
            if e2e is not None:
                e2e.step()  # a bounded slice of the next obfuscator
            if waiting:
                acc.add(p, cov)
                samples += n
                clipped += stats[0]
                if not hal.clock_synced():
                    await hal.sleep_ms(0)
                    continue
                waiting = False
                start = t1 - t1 % iv_ms
                partial = True
                covered = t1 - start
                continue
            if t1 < t0 or t1 - start > (_MAX_GAP_INTERVALS + 1) * iv_ms:
                # Clock stepped: what was accumulated cannot be placed in time. Start over.
                self.log("clock step %d -> %d ms: interval restarted" % (t0, t1))
                acc.take_wh()
                start = t1 - t1 % iv_ms
                partial = True
                covered = samples = clipped = 0
                continue
            if cp is not None and hal.clock_synced():
                if cp[_CP_START] > self.last_interval and cp[_CP_START] * 1000 <= start:
                    # Resume this interval, or seal the one the reset cut short (flagged partial;
                    # missing_s counts the time nobody measured).
                    old = sensing.EnergyAccumulator(cp[_CP_MWH], cp[_CP_REM])
                    if cp[_CP_START] * 1000 == start:
                        covered += cp[_CP_COVERED]
                        samples += cp[_CP_SAMPLES]
                        clipped += cp[_CP_CLIPPED]
                        self.log("resumed interval %d from checkpoint (%d mWh)" % (cp[_CP_START], cp[_CP_MWH]))
                    elif cp[_CP_COVERED]:  # something was measured in it (else only the sub-Wh remainder carries)
                        self._seal_reading(cp[_CP_START] * 1000, old, cp[_CP_COVERED], cp[_CP_SAMPLES], cp[_CP_CLIPPED], True)
                    acc.mwh += old.mwh
                    acc.rem += old.rem
                    acc.add(0, 0)
                cp = None
            b0 = t1 - cov  # the block stands for [t1 - cov, t1)
            samples += n
            clipped += stats[0]
            while t1 >= start + iv_ms:
                end = start + iv_ms
                if end > b0:
                    acc.add(p, end - b0)
                    covered += end - b0
                    b0 = end
                self._seal_reading(start, acc, covered, samples, clipped, partial)
                start = end
                partial = False
                covered = samples = clipped = 0
                if self.readings and self.readings % every == 0:
                    self._status()
                if intervals and self.readings >= intervals:
                    return
            if t1 > b0:
                acc.add(p, t1 - b0)
                covered += t1 - b0
            if t1 >= next_cp or t1 < next_cp - _CHECKPOINT_MS:
                # Only a clock that is set and past the last sealed interval may place energy in
                # time: a board whose RTC restarted at 2000 must not overwrite a real checkpoint.
                if hal.clock_synced() and start // 1000 > self.last_interval:
                    persist.write_ints(self.cp_path, (start // 1000, acc.mwh, acc.rem, covered, samples, clipped))
                next_cp = t1 + _CHECKPOINT_MS
            await hal.sleep_ms(0)  # let the publisher run; paces the simulated clock

    async def run(self, intervals=0, drain_timeout_s=0):
        # Run the loop; with `intervals`, stop after that many readings once the outbox is
        # drained (returns True) or the drain timeout passed (False).
        task = asyncio.create_task(self.pub.run())
        await self.measure(intervals)
        ok = await self.pub.stop_when_drained(int(drain_timeout_s * 1000))
        await asyncio.sleep_ms(0)
        if not task.done():
            task.cancel()
        gc.collect()
        self.out("HEAP " + json.dumps(self.heap_report()))
        self.log("done: %d readings, %d status, outbox depth %d, drained %s"
                 % (self.readings, self.statuses, self.outbox.depth, ok))
        return ok

    def heap_report(self):
        r = {"min_free_after_gc": self.min_free, "free_now": self.hal.free_heap(),
             "code_from": __file__.rsplit("/", 2)[0],  # "/rom": bytecode runs in place from ROMFS
             "max_block_gap_ms": self.stats[2] // 1000}
        if self.e2e:
            self.e2e.heap_report(r)
        try:
            import micropython
            r["mem_peak"] = micropython.mem_peak()
            # prints "qstr pool: n_pool=.., n_qstr=.." (the interned names; the host reads it)
            micropython.qstr_info()
        except (ImportError, AttributeError):
            pass
        return r
