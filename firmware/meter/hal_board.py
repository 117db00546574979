# Board HAL (ESP32 family, RP2040/RP2350 Pico W): ADC, RTC + NTP, watchdog, Wi-Fi, flash filesystem.
# Only ever imported on a board (main.py picks the backend), or on the unix port under the test
# board stub (tests/mpy/boardstub.py), which enforces each port's documented limits per chip.
# Chip facts and the limits they come from are tabled in docs/BOARDS.md.
import asyncio
import gc
import os
import time

import machine

from meter import sensing

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_FS_HZ = const(2000)          # 40 samples per 50 Hz cycle; ~33 at 60 Hz
_BLOCK_MS = const(200)        # 10 (50 Hz) / 12 (60 Hz) whole cycles per block
# Within every port's limit: rp2 refuses timeouts above 8388 ms (24-bit counter at 2 ticks/us).
# The loop feeds every block (200 ms); boot scan and network steps feed around each step.
WDT_MS = const(8000)
_NTP_FIRST_MS = const(15000)   # first retry after a failed sync; doubles up to _NTP_MAX_MS
_NTP_MAX_MS = const(300000)
_RESYNC_MS = const(21600000)   # re-sync every 6 h: 30 ppm crystal drift is ~0.65 s per 6 h
_STEP_MS = const(60000)        # a re-sync off by more than this steps the clock, smaller ones slew
_SLEW_DIV = const(100)         # slew at most 1 ms per 100 ms of elapsed time (1 %)
_EPOCH_2000 = const(946684800)
MAINTENANCE_FLAG = "/maintenance"

# chip -> (ADC GPIOs usable while Wi-Fi is up, default GPIO, settable widths, linear limit in mV at
# the attenuation used, or 0 when the converter is linear to full scale). ESP32 ADC2 is taken by
# Wi-Fi; the Pico W's GP29 is the wireless chip's clock line.
CHIPS = {
    "esp32": ((32, 33, 34, 35, 36, 37, 38, 39), 34, (9, 10, 11, 12), 2450),
    "esp32s2": ((1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 1, (13,), 2500),
    "esp32s3": ((1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 1, (12,), 2900),
    "esp32c3": ((0, 1, 2, 3, 4), 3, (12,), 2500),
    "rp2040": ((26, 27, 28), 26, (12,), 0),
    "rp2350": ((26, 27, 28), 26, (12,), 0),
}


class BoardError(ValueError):
    # A board setting the chip cannot honour (names the config field).
    reason = "bad_board"

    def __init__(self, field, msg):
        super().__init__(field + ": " + msg)
        self.field = field


def chip_name():
    # "esp32" / "rp2" from sysname; the variant from the machine string ("... with ESP32S3").
    u = os.uname()
    m = u.machine.upper()
    for c in ("ESP32S2", "ESP32S3", "ESP32C3", "RP2350", "RP2040"):
        if c in m:
            return c.lower()
    return "esp32" if u.sysname == "esp32" else "rp2040"


def epoch_offset_s():
    # Seconds to add to time.time() for Unix time, detected the way ntptime does (gmtime(0)): ports
    # counting from 2000 (ESP32) need the offset whatever the date, so no threshold on the value.
    return _EPOCH_2000 if time.gmtime(0)[0] == 2000 else 0


def adc_settings(board, chip):
    # -> (gpio, width, linear max code or None); raises BoardError naming the bad field.
    pins, dpin, widths, lin_mv = CHIPS[chip]
    pin = board.get("adc_pin")
    pin = dpin if pin is None else pin
    if pin not in pins:
        raise BoardError("board.adc_pin", "GPIO%s is not an ADC input usable with Wi-Fi on %s (use one of %s)"
                         % (pin, chip, ",".join(str(p) for p in pins)))
    width = board.get("adc_width") or widths[-1]
    if width not in widths:
        raise BoardError("board.adc_width", "%s takes %s-bit samples" % (chip, "/".join(str(w) for w in widths)))
    return pin, width, lin_mv


def maintenance_requested(path=MAINTENANCE_FLAG):
    # The tools ask for one boot without the meter (and without the watchdog): the flag is consumed
    # here, so any later reset, or a power cycle, starts the meter again.
    try:
        os.remove(path)
        return True
    except OSError:
        return False


def boot(run):
    # main.py on a board: the meter under the watchdog (armed by BoardHAL), or nothing at all in a
    # maintenance boot, where the tools' many mpremote calls cannot be cut by a watchdog reset.
    if maintenance_requested():
        print("MAINTENANCE: meter not started this boot; reset to start it")
        return
    try:
        run()
    except BoardError as e:  # raised before the watchdog is armed: report, do not reset-loop
        print("CONFIG ERROR:", e)
    except Exception as e:  # noqa: BLE001 - last line of defence on a device nobody watches
        # Logged, then a reset: the outbox and counters on flash make a reset lose at most 5
        # minutes of energy (checkpoint, docs/FIRMWARE.md).
        import sys
        sys.print_exception(e)
        time.sleep(5)
        machine.reset()


class BoardHAL:
    board = True

    def __init__(self, cfg, storage_dir="/data", watchdog=True):
        from meter import persist
        self.storage_dir = storage_dir
        persist.makedirs(storage_dir)
        self._cfg = cfg
        self.fs_hz = _FS_HZ
        mains = 60 if cfg.get("sim", {}).get("mains_hz") == 60 else 50
        self.block_samples = sensing.cycle_samples(_FS_HZ, mains, mains * _BLOCK_MS // 1000)
        self.chip = chip_name()
        pin, width, lin_mv = adc_settings(cfg.get("board") or {}, self.chip)
        self.adc_pin = pin
        if self.chip.startswith("esp32"):
            self.adc = machine.ADC(machine.Pin(pin))
            # 11 dB: full scale ~3.1 V, so a CT biased at mid-rail (1.65 V) swings both ways.
            self.adc.atten(machine.ADC.ATTN_11DB)
            self.adc.width(width)
            self._read = self.adc.read
            shift = 0
        else:
            self.adc = machine.ADC(pin)
            u16 = self.adc.read_u16
            shift = 16 - width
            self._read = lambda: u16() >> shift  # 12-bit converter reported as 16-bit
        self.adc_width = width
        # Samples past the converter's linear region count as clipped (FLAG_ADC_CLIPPED), not only
        # the rails: above ~2.45 V an ESP32 compresses large currents without reaching 4095.
        cal = dict(cfg["calibration"])
        if lin_mv and "linear_max_code" not in cal:
            code = lin_mv * (1 << cal.get("adc_bits", 12)) // int(cal.get("vref_mv", 3300))
            if code < (1 << cal.get("adc_bits", 12)) - 1:
                cal["linear_max_code"] = code
        self.cal = sensing.Calibration(cal)
        self.rtc = machine.RTC()
        self._epoch = epoch_offset_s()
        self._synced = False
        self._ntp_due = None     # ticks_ms of the next sync attempt (None: as soon as Wi-Fi is up)
        self._ntp_wait = _NTP_FIRST_MS
        self._slew = 0           # correction still to apply (ms), signed
        self._slew_ticks = 0
        self._pin()
        self._last_block = None
        self._wlan = None
        self.wdt = machine.WDT(timeout=WDT_MS) if watchdog else None

    # -- clock: RTC, set by NTP; readings wait (unsealed) until the first sync -------------
    def _pin(self):
        # Wall time read once from the RTC, then advanced by ticks_ms: one monotonic source.
        # (RTC seconds + ticks_ms() % 1000 mixes two clocks out of phase: it runs backwards by
        # up to a second once a second, which the app must treat as a clock step.)
        self._base_ms = (int(time.time()) + self._epoch) * 1000
        self._base_ticks = time.ticks_ms()
        self._slew = 0

    def now_ms(self):
        d = time.ticks_diff(time.ticks_ms(), self._base_ticks)
        if self._slew:
            # A small re-sync correction is spread over time (1 %), so the clock never jumps.
            step = time.ticks_diff(time.ticks_ms(), self._slew_ticks) // _SLEW_DIV
            if step:
                if step > abs(self._slew):
                    step = abs(self._slew)
                step = step if self._slew > 0 else -step
                self._base_ms += step
                self._slew -= step
                self._slew_ticks = time.ticks_add(self._slew_ticks, abs(step) * _SLEW_DIV)
        if d > 86400000:  # re-base daily: ticks_diff is only valid within half the ticks period
            self._base_ms += d
            self._base_ticks = time.ticks_add(self._base_ticks, d)
            d = 0
        return self._base_ms + d

    def clock_synced(self):
        return self._synced

    def _sync_ntp(self):
        # One attempt; failures back off 15 s, 30 s, ... 5 min until the first success, then the
        # clock is re-synced every 6 h (small differences slewed, large ones stepped).
        try:
            import ntptime
            self.wdt_feed()
            if not self._synced:
                ntptime.settime()
                self._pin()  # a clock step the app sees once, when it starts trusting the clock
                self._synced = True
            else:
                off = (ntptime.time() + self._epoch) * 1000 - self.now_ms()
                if -_STEP_MS < off < _STEP_MS:
                    self._slew = off
                    self._slew_ticks = time.ticks_ms()
                else:
                    ntptime.settime()
                    self._pin()
            self._ntp_wait = _NTP_FIRST_MS
            self._ntp_due = time.ticks_add(time.ticks_ms(), _RESYNC_MS)
        except (OSError, ImportError, IndexError, ValueError):  # no answer, or a short reply
            self._ntp_due = time.ticks_add(time.ticks_ms(), self._ntp_wait)
            self._ntp_wait = min(self._ntp_wait * 2, _NTP_MAX_MS)
        self.wdt_feed()

    def service_clock(self):
        # Called from sleep_ms (every loop pass): cheap unless a sync is due and Wi-Fi is up.
        if self._ntp_due is not None and time.ticks_diff(time.ticks_ms(), self._ntp_due) < 0:
            return
        if self._wlan is not None and self._wlan.isconnected():
            self._sync_ntp()

    async def sleep_ms(self, ms):
        self.service_clock()
        await asyncio.sleep_ms(ms)

    # -- ADC: continuous blocks; a block stands for the time since the previous one ------
    def read_block(self, buf, n):
        read = self._read
        period_us = 1000000 // _FS_HZ
        t = time.ticks_us()
        for i in range(n):
            buf[i] = read()
            t = time.ticks_add(t, period_us)
            while time.ticks_diff(t, time.ticks_us()) > 0:
                pass
        now = time.ticks_ms()
        cov = n * 1000 // _FS_HZ
        if self._last_block is not None:
            gap = time.ticks_diff(now, self._last_block)
            if gap > cov:
                cov = gap  # the app's pause between blocks is extrapolated, not lost
        self._last_block = now
        return n, _FS_HZ, cov

    # -- network ------------------------------------------------------------------------
    def _wifi(self):
        import network
        if self._wlan is None:
            self._wlan = network.WLAN(network.STA_IF)
            self._wlan.active(True)
        if not self._wlan.isconnected():
            w = self._cfg["wifi"]
            self.wdt_feed()
            self._wlan.connect(w["ssid"], w["password"])
            self.wdt_feed()
            raise OSError(113, "wifi connecting")  # the publisher backs off and retries
        self.service_clock()

    async def open_connection(self, host, port, tls=None):
        self._wifi()
        if tls is not None and not self._synced:
            # Certificate dates cannot be checked before the clock is set (an rp2 RTC restarts at
            # 2021 on every boot): wait for NTP instead of failing a handshake.
            raise OSError(116, "clock not set for TLS")
        self.wdt_feed()  # the DNS lookup inside blocks
        try:
            if tls is not None:
                return await asyncio.open_connection(host, port, ssl=tls, server_hostname=host)
            return await asyncio.open_connection(host, port)
        finally:
            self.wdt_feed()

    # -- misc ---------------------------------------------------------------------------
    def wdt_feed(self):
        if self.wdt is not None:
            self.wdt.feed()

    def unique_id(self):
        return machine.unique_id()

    def free_heap(self):
        return gc.mem_free()

    def reset(self):
        machine.reset()
