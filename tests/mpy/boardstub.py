# Board stub for the MicroPython unix port: stand-ins for `machine`, `network`, `ntptime`, `time`,
# `os` and `sys` that behave like the ESP32 and rp2 ports per chip profile, so the board HAL runs
# in CI against the limits a real board enforces (docs/BOARDS.md lists the port sources each
# limit comes from). install(profile, world) must run before anything imports those modules.
#
# Time is real ticks plus a virtual offset (World.advance), so a test can jump minutes or hours.
# The watchdog expires on virtual time too: any stub clock read after the deadline raises
# WatchdogReset (a BaseException, like a reset nothing can catch).
import os as _os
import sys
import time as _t

_EPOCH_2000 = 946684800
_RP2_RTC_BOOT = 1609459200  # 2021-01-01: the rp2 port starts its RTC there at every boot

PROFILES = {
    # sysname, machine string, WDT max ms (None: no limit), epoch year, ADC GPIOs the port
    # accepts, settable widths (None: read_u16 only), full-scale mV, end of the linear range mV
    # (0: linear to full scale), urandom source
    "esp32": ("esp32", "Generic ESP32 module with ESP32", None, 2000,
              (36, 37, 38, 39, 32, 33, 34, 35, 4, 0, 2, 15, 13, 12, 14, 27, 25, 26), (9, 10, 11, 12),
              3100, 2450, "hw"),
    "esp32s2": ("esp32", "ESP32S2 module with ESP32S2", None, 2000, tuple(range(1, 21)), (13,),
                3100, 2500, "hw"),
    "esp32s3": ("esp32", "ESP32S3 module with ESP32S3", None, 2000, tuple(range(1, 21)), (12,),
                3100, 2900, "hw"),
    "esp32c3": ("esp32", "ESP32C3 module with ESP32C3", None, 2000, (0, 1, 2, 3, 4, 5), (12,),
                3100, 2500, "hw"),
    "rp2040": ("rp2", "Raspberry Pi Pico W with RP2040", 8388, 1970, (26, 27, 28, 29), None,
               3300, 0, "rosc"),
    "rp2350": ("rp2", "Raspberry Pi Pico 2 W with RP2350", 8388, 1970, (26, 27, 28, 29), None,
               3300, 0, "trng"),
}


class WatchdogReset(BaseException):
    pass


class BoardHalt(BaseException):
    # Ends a stub session once the meter has run for its ADC budget (the board keeps running).
    pass


class World:
    # What the board's surroundings look like: the true UTC time, the RTC, NTP answers, the
    # current through the CT, the watchdog.
    def __init__(self, profile, rtc_unix=None, true_unix=None, ntp=None, amps_rms=0.0,
                 ct_turns=2000, burden_ohm=33.0, bias_mv=1650, mains_hz=50, rosc_bias=0.97):
        self.p = PROFILES[profile]
        self.name = profile
        self.skew_ms = 0
        now = int(_t.time())
        self.true_unix = true_unix if true_unix is not None else now
        rtc = rtc_unix if rtc_unix is not None else (_RP2_RTC_BOOT if self.p[0] == "rp2" else _EPOCH_2000)
        self._rtc_at = (rtc, self.ticks_ms())   # RTC unix seconds at a ticks_ms reading
        self._true_at = (self.true_unix, self.ticks_ms())
        self.ntp = list(ntp or [])            # outcomes in order: "ok", "timeout"; empty: "ok"
        self.ntp_log = []                     # ticks_ms of every attempt
        self.amps_rms = amps_rms
        self.ct_turns, self.burden_ohm, self.bias_mv, self.mains_hz = ct_turns, burden_ohm, bias_mv, mains_hz
        self.wdt_timeout = None
        self.wdt_fed = None
        self.feeds = 0
        self.rosc_bias = rosc_bias
        self.adc_reads = 0
        self.fs_mounted = False  # a stub board's filesystem is mounted at "/" (board_run.py)
        self.adc_budget = 0   # > 0: BoardHalt after that many ADC reads
        self._lfsr = 0
        self._bits = 0x12345678

    # -- clocks ------------------------------------------------------------------------
    def ticks_ms(self):
        return (_t.ticks_ms() + self.skew_ms) & 0x3FFFFFFF

    def advance(self, ms, feeding=True):
        # Time passes; feeding: the meter loop fed the watchdog meanwhile (it does every block).
        self.skew_ms += ms
        if feeding and self.wdt_timeout is not None:
            self.wdt_fed = self.ticks_ms()
        self.check_wdt()

    def rtc_unix(self):
        base, at = self._rtc_at
        return base + _t.ticks_diff(self.ticks_ms(), at) // 1000

    def set_rtc(self, unix_s):
        self._rtc_at = (unix_s, self.ticks_ms())

    def utc(self):
        base, at = self._true_at
        return base + _t.ticks_diff(self.ticks_ms(), at) // 1000

    def drift(self, seconds):
        # The true time moves away from the board's clock (crystal drift since the last sync).
        base, at = self._true_at
        self._true_at = (base + seconds, at)

    # -- watchdog ----------------------------------------------------------------------
    def check_wdt(self):
        if self.wdt_timeout is not None and _t.ticks_diff(self.ticks_ms(), self.wdt_fed) > self.wdt_timeout:
            self.wdt_timeout = None
            raise WatchdogReset("watchdog expired")

    # -- ADC signal: CT secondary across the burden, biased at mid-rail ----------------------
    def pin_mv(self, t_us):
        import math
        peak = self.amps_rms * 1.41421356 / self.ct_turns * self.burden_ohm * 1000.0
        return self.bias_mv + peak * math.sin(2 * math.pi * self.mains_hz * t_us / 1e6)

    def urandom(self, n):
        if self.p[8] != "rosc":
            return _os.urandom(n)
        # rp2 before MicroPython 1.28: each byte is 8 ring-oscillator bits shifted through an
        # 8-bit LFSR (poly 0xD5); the bit itself is modelled as biased towards 1.
        out = bytearray(n)
        for i in range(n):
            for _ in range(8):
                self._bits ^= (self._bits << 13) & 0xFFFFFFFF
                self._bits ^= self._bits >> 17
                self._bits ^= (self._bits << 5) & 0xFFFFFFFF
                bit = 1 if (self._bits & 0xFFFF) < int(self.rosc_bias * 65536) else 0
                r = self._lfsr
                r = (((r << 1) | bit) ^ (0xD5 if r & 0x80 else 0)) & 0xFF
                self._lfsr = r
            out[i] = self._lfsr
        return bytes(out)


W = None  # the installed World


class _Time:
    # The port's `time`: ticks with the virtual offset, time() in the port's epoch.
    @staticmethod
    def ticks_ms():
        W.check_wdt()
        return W.ticks_ms()

    @staticmethod
    def ticks_us():
        W.check_wdt()
        return (_t.ticks_us() + W.skew_ms * 1000) & 0x3FFFFFFF

    ticks_diff = staticmethod(_t.ticks_diff)
    ticks_add = staticmethod(_t.ticks_add)
    sleep_ms = staticmethod(_t.sleep_ms)
    sleep_us = staticmethod(_t.sleep_us)
    sleep = staticmethod(_t.sleep)
    time_ns = staticmethod(_t.time_ns)

    @staticmethod
    def time():
        return W.rtc_unix() - (_EPOCH_2000 if W.p[3] == 2000 else 0)

    @staticmethod
    def gmtime(s=None):
        s = _Time.time() if s is None else s
        return _t.gmtime(s + (_EPOCH_2000 if W.p[3] == 2000 else 0))

    localtime = gmtime


class _OS:
    # Delegates to the unix port's os; uname and urandom as the board has them.
    def __getattr__(self, name):
        return getattr(_os, name)

    def uname(self):
        return _Uname(W.p[0], W.p[1])

    def urandom(self, n):
        return W.urandom(n)

    def rename(self, a, b):
        # The unix port's VfsPosix joins its root onto both paths in one shared buffer, so an
        # absolute rename inside a VfsPosix mounted at "/" (a stub board's filesystem) loses its
        # first path; relative paths (the cwd is then "/") avoid that.
        if not W.fs_mounted:
            return _os.rename(a, b)
        cwd = _os.getcwd()
        _os.chdir("/")
        try:
            return _os.rename(a.lstrip("/") or "/", b.lstrip("/") or "/")
        finally:
            _os.chdir(cwd)


class _Uname:
    def __init__(self, sysname, machine):
        self.sysname = sysname
        self.machine = machine


class _Sys:
    def __getattr__(self, name):
        return getattr(sys, name)

    @property
    def platform(self):
        return W.p[0]


class _Pin:
    def __init__(self, n, *a, **k):
        self.n = n


class _ADC:
    ATTN_0DB = 0
    ATTN_11DB = 3

    def __init__(self, pin, **kw):
        n = pin.n if isinstance(pin, _Pin) else pin
        if W.p[0] == "rp2" and 0 <= n <= 4:
            n = 26 + n  # ADC channel number
        if n not in W.p[4]:
            raise ValueError("invalid pin")
        self.gpio = n
        self.bits = W.p[5][-1] if W.p[5] else 12
        self.attn = 3

    def atten(self, a):
        self.attn = a

    def width(self, w):
        if W.p[5] is None:
            raise AttributeError("width")
        if w not in W.p[5]:
            raise ValueError("invalid bit-width")
        self.bits = w

    def _code(self, bits):
        W.adc_reads += 1
        if W.adc_budget and W.adc_reads > W.adc_budget:
            raise BoardHalt()
        # The waveform at the nominal sample instant (the HAL samples at 2 kHz): on a loaded CI
        # machine the busy-wait slips, a board's timer-paced loop much less.
        mv = W.pin_mv(W.adc_reads * 500)
        lin = W.p[7]
        if lin and mv > lin:
            mv = lin + (mv - lin) * 0.25  # ESP32 at 11 dB: the response flattens past ~2.45 V
        full = W.p[6]
        mv = 0 if mv < 0 else (full if mv > full else mv)
        return int(mv * ((1 << bits) - 1) / full + 0.5)

    def read(self):
        if W.p[0] != "esp32":
            raise AttributeError("read")
        return self._code(self.bits)

    def read_u16(self):
        c = self._code(12)
        return (c << 4) | (c >> 8)


class _WDT:
    def __init__(self, id=0, timeout=5000):
        mx = W.p[2]
        if mx is not None and timeout > mx:
            raise ValueError("timeout exceeds %d" % mx)
        if timeout <= 0:
            raise ValueError("WDT timeout too short")
        W.wdt_timeout = timeout
        W.wdt_fed = W.ticks_ms()

    def feed(self):
        W.check_wdt()
        W.wdt_fed = W.ticks_ms()
        W.feeds += 1


class _RTC:
    def datetime(self, dt=None):
        if dt is None:
            return _t.gmtime(W.rtc_unix())
        y, mo, d, _wd, h, mi, s = dt[:7]
        W.set_rtc(_t.mktime((y, mo, d, h, mi, s, 0, 0)))


class _Machine:
    Pin = _Pin
    ADC = _ADC
    WDT = _WDT
    RTC = _RTC

    @staticmethod
    def unique_id():
        return b"\xde\xad\xbe\xef\x00\x01"

    @staticmethod
    def reset():
        raise WatchdogReset("machine.reset")


class _WLAN:
    def __init__(self, iface):
        self._on = False
        self._conn = False

    def active(self, v=None):
        if v is not None:
            self._on = v
        return self._on

    def connect(self, ssid, password):
        self._conn = True  # associates by the next check

    def isconnected(self):
        return self._conn


class _Network:
    STA_IF = 0
    WLAN = _WLAN


class _Ntptime:
    host = "pool.ntp.org"
    timeout = 1

    @staticmethod
    def _ask():
        W.ntp_log.append(W.ticks_ms())
        outcome = W.ntp.pop(0) if W.ntp else "ok"
        if outcome == "timeout":
            W.advance(1000 * _Ntptime.timeout, feeding=False)
            raise OSError(110, "ETIMEDOUT")
        return W.utc()

    @staticmethod
    def time():
        return _Ntptime._ask() - (_EPOCH_2000 if W.p[3] == 2000 else 0)

    @staticmethod
    def settime():
        W.set_rtc(_Ntptime._ask())


def install(world):
    global W
    W = world
    for w in W.p[5] or ():
        setattr(_ADC, "WIDTH_%dBIT" % w, w)  # the ESP32 port defines only the widths the chip has
    sys.modules["machine"] = _Machine
    sys.modules["network"] = _Network
    sys.modules["ntptime"] = _Ntptime
    sys.modules["time"] = _Time
    sys.modules["os"] = _OS()
    sys.modules["sys"] = _Sys()
    return world
