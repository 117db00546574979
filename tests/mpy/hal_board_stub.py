# Imports the board HAL on the unix port with a stub `machine` (RP2040 path) and samples a block.
import array
import sys


class _ADC:
    def __init__(self, pin):
        self.v = 0

    def read_u16(self):
        self.v = (self.v + 4099) & 0xFFFF
        return self.v


class _Stub:
    ADC = _ADC

    class RTC:
        pass

    class WDT:
        def __init__(self, timeout):
            self.fed = 0

        def feed(self):
            self.fed += 1

    @staticmethod
    def unique_id():
        return b"\x01\x02\x03\x04"


sys.modules["machine"] = _Stub
from meter.hal_board import BoardHAL  # noqa: E402

hal = BoardHAL({"wifi": {"ssid": "x", "password": "y"}}, sys.argv[1] + "/data")
buf = array.array("H", bytes(2 * hal.block_samples))
n, fs, cov = hal.read_block(buf, len(buf))
hal.wdt_feed()
# the meter clock never runs backwards and keeps wall time (RTC seconds + ticks would step back
# by up to a second once a second, which the app treats as a clock step)
import time  # noqa: E402

t_first = prev = hal.now_ms()
backwards = 0
t_end = time.ticks_add(time.ticks_ms(), 1500)
while time.ticks_diff(t_end, time.ticks_ms()) > 0:
    t = hal.now_ms()
    if t < prev:
        backwards += 1
    prev = t
wall_ok = abs(prev - int(time.time()) * 1000) < 2000 and 1400 <= prev - t_first <= 1700
print("BOARD", n, fs, cov >= 200, max(buf) <= 4095, hal.wdt.fed, hal.unique_id().hex(), backwards, wall_ok)
