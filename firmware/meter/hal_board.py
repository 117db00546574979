# Board HAL (ESP32, RP2040 Pico W): ADC, RTC + NTP, watchdog, Wi-Fi, flash filesystem.
# Only ever imported on a board (main.py picks the backend); board modules are imported inside
# this file, so the unix port never loads them. Not testable in CI beyond import with stubs:
# kept small on purpose.
import asyncio
import gc
import sys
import time

import machine

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_FS_HZ = const(2000)          # 40 samples per 50 Hz cycle; ~33 at 60 Hz
_BLOCK_MS = const(200)        # 10 (50 Hz) / 12 (60 Hz) whole cycles per block
_WDT_MS = const(30000)        # longest a healthy loop may go without feeding
_NTP_RETRY_MS = const(3600000)
_ADC_PIN = const(34)          # ESP32 default; RP2040 uses ADC0 (GP26)
_EPOCH_2000 = const(946684800)  # MicroPython board epoch is 2000-01-01 on older ports
_ESP32 = sys.platform == "esp32"


class BoardHAL:
    board = True

    def __init__(self, cfg, storage_dir="/data", adc_pin=None):
        from meter import persist
        self.storage_dir = storage_dir
        persist.makedirs(storage_dir)
        self._cfg = cfg
        self.fs_hz = _FS_HZ
        mains = 60 if cfg.get("sim", {}).get("mains_hz") == 60 else 50
        cycles = mains * _BLOCK_MS // 1000
        self.block_samples = (2 * cycles * _FS_HZ + mains) // (2 * mains)
        if _ESP32:
            self.adc = machine.ADC(machine.Pin(adc_pin or _ADC_PIN))
            # 11 dB: full scale ~3.1 V, so a CT biased at mid-rail (1.65 V) swings both ways.
            self.adc.atten(machine.ADC.ATTN_11DB)
            self.adc.width(machine.ADC.WIDTH_12BIT)
            self._read = self.adc.read
        else:
            self.adc = machine.ADC(adc_pin if adc_pin is not None else 0)
            u16 = self.adc.read_u16
            self._read = lambda: u16() >> 4  # 12-bit converter reported as 16-bit
        self.rtc = machine.RTC()
        self._pin()
        self._synced = False
        self._ntp_at = None
        self._last_block = None
        self.wdt = machine.WDT(timeout=_WDT_MS)
        self._wlan = None

    # -- clock: RTC, set by NTP; readings are flagged until the first sync ---------------
    def _pin(self):
        # Wall time read once from the RTC, then advanced by ticks_ms: one monotonic source.
        # (RTC seconds + ticks_ms() % 1000 mixes two clocks out of phase: it runs backwards by
        # up to a second once a second, which the app must treat as a clock step.)
        t = time.time()
        if t < 1000000000:  # 2000-based epoch port
            t += _EPOCH_2000
        self._base_ms = int(t) * 1000
        self._base_ticks = time.ticks_ms()

    def now_ms(self):
        d = time.ticks_diff(time.ticks_ms(), self._base_ticks)
        if d > 86400000:  # re-base daily: ticks_diff is only valid within half the ticks period
            self._base_ms += d
            self._base_ticks = time.ticks_add(self._base_ticks, d)
            d = 0
        return self._base_ms + d

    def clock_synced(self):
        return self._synced

    def _sync_ntp(self):
        try:
            import ntptime
            ntptime.settime()
            self._synced = True
            self._pin()  # a clock step the app sees once (it restarts the running interval)
        except (OSError, ImportError):  # no network yet: retry later, readings stay flagged
            pass
        self._ntp_at = time.ticks_ms()

    async def sleep_ms(self, ms):
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
            self._wlan.connect(w["ssid"], w["password"])
            raise OSError(113, "wifi connecting")  # the publisher backs off and retries
        if not self._synced and (self._ntp_at is None
                                 or time.ticks_diff(time.ticks_ms(), self._ntp_at) > _NTP_RETRY_MS):
            self._sync_ntp()

    async def open_connection(self, host, port, tls=None):
        self._wifi()
        if tls is not None:
            return await asyncio.open_connection(host, port, ssl=tls, server_hostname=host)
        return await asyncio.open_connection(host, port)

    # -- misc ---------------------------------------------------------------------------
    def wdt_feed(self):
        self.wdt.feed()

    def unique_id(self):
        return machine.unique_id()

    def free_heap(self):
        return gc.mem_free()

    def reset(self):
        machine.reset()
