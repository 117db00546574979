# Imports the board HAL on the unix port under the board stub (RP2040 profile) and samples a block.
import array
import sys
import time as real_time

import boardstub

# RP2040 path; the RTC already set (as after an NTP sync), so wall time can be compared.
W = boardstub.install(boardstub.World("rp2040", rtc_unix=int(real_time.time())))
from meter.hal_board import BoardHAL  # noqa: E402

hal = BoardHAL({"wifi": {"ssid": "x", "password": "y"}, "calibration": {
    "ct_turns": 2000, "burden_ohm": 33.0, "adc_bits": 12, "vref_mv": 3300, "volts": 230.0,
    "power_factor": 1.0, "rated_amps": 30.0}}, sys.argv[1] + "/data")
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
print("BOARD", n, fs, cov >= 200, max(buf) <= 4095, W.feeds, hal.unique_id().hex(), backwards, wall_ok)
