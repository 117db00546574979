"""32-bit firmware costs on the `make qemu` target (Cortex-M3, MicroPython 1.28, 64 KB heap, code frozen).

QEMU runs with ``-icount shift=0``: virtual time advances 1 ns per guest instruction, so a
time.ticks_us() delta times 1000 is a count of Cortex-M3 instructions (deterministic, independent of
the host's speed). Measured on the target in one run:

  per_sample   sensing.block_power_mw on a dense block (320 samples, 200 ms at 1600 Hz), and the
               baseline in the same run: an EmonLib-style float high-pass loop (float32, soft float)
  long_ints    which of the meter's values exceed the 31-bit small int (bytes allocated by v + 1) and
               the cost of the per-block timestamp arithmetic with epoch-ms (long) vs ms-since-boot
               (small) timestamps: instructions and heap bytes per block
  tail         one interval's tail: privacy.noise_share, frame.seal, Outbox.append (RAM littlefs)
  heap         the meter loop (unix HAL, network down, 3 intervals): lowest free heap after a
               collection, of the 64 KB
  e2e          one end-to-end encryption with a 2048-bit key (DJN obfuscator, 1024-bit exponent, then
               pack and encrypt) and its longest 1-bit step (what sampling can wait for), against the
               proxy-mode tail above; the ESP32 estimate assumes ESP32_CYCLES_PER_M3_INSTR

Time on an RP2040-class Cortex-M0+ at 133 MHz assumes M0_CYCLES_PER_M3_INSTR cycles per Cortex-M3
instruction: ARMv6-M needs more instructions for the same C (no IT blocks, no wide immediates,
no hardware divide) and the M0+ spends >1 cycle on taken branches and loads from XIP flash. It is an
assumption, not a measurement (range 1.2-2.5 for an interpreter loop).

    make qemu && .venv/bin/python bench/qemu32.py        # prints one JSON object
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "hil_tests"))
from target import QemuTarget  # noqa: E402

M0_HZ = 133_000_000
M0_CYCLES_PER_M3_INSTR = 1.6
# Xtensa LX6 runs the same C at roughly one instruction per cycle with similar code density (an
# assumption, range 0.8-1.5); the mpz digits are 16 bits on both 32-bit targets.
ESP32_HZ = 240_000_000
ESP32_CYCLES_PER_M3_INSTR = 1.0
INTERVAL_S = 900

E2E_DRIVER = r'''
import gc, time
from protocol import paillier
n = %(n)d
hs = %(hs)d
a = paillier.draw_exponent(%(bits)d)
gc.collect(); t0 = time.ticks_us()
o = paillier.Obfuscator(hs, n, %(bits)d, a)
worst = 0
while True:
    s0 = time.ticks_us()
    last = o.step(1)
    worst = max(worst, time.ticks_diff(time.ticks_us(), s0))
    if last:
        break
t1 = time.ticks_us()
c = paillier.encrypt(n, paillier.pack(1234, 567), o.value())
t2 = time.ticks_us()
print("E2E", time.ticks_diff(t1, t0) * 1000, time.ticks_diff(t2, t1) * 1000, worst * 1000, hex(c))
'''
FS, BLOCK_MS = 1600, 200

DRIVER = r'''
import array, gc, json, time, micropython
from meter import sensing, privacy, ctsim
from meter.outbox import Outbox
from protocol import frame
def instr(t0):
    return time.ticks_diff(time.ticks_us(), t0) * 1000
def alloc_of(f):
    gc.collect(); a = micropython.mem_total(); f(); return micropython.mem_total() - a
R = {}
CAL = {"ct_turns": 2000, "burden_ohm": 33.0, "adc_bits": 12, "vref_mv": 3300, "volts": 230.0,
       "power_factor": 1.0, "rated_amps": 30.0, "noise_rms_codes": 0.85}
cal = sensing.Calibration(CAL)
with open("/flash/p.csv", "w") as f:
    f.write("seconds,watts\n0,3000\n")
sim = ctsim.SimADC("/flash/p.csv", 50, 7, epoch_ms=0)
n = %(fs)d * %(block_ms)d // 1000
buf = array.array("H", bytes(2 * n))
sim.read_block(buf, 0, n, %(fs)d)
stats = [0, 0]
K = 10
gc.collect(); t0 = time.ticks_us()
for _ in range(K):
    p = sensing.block_power_mw(buf, n, cal, stats)
R["sensing_block"] = instr(t0) // K
R["sensing_alloc_bytes_per_block"] = alloc_of(lambda: sensing.block_power_mw(buf, n, cal, stats))
def emon_block(buf, n, st):
    offset = st[0]
    sumsq = 0.0
    for i in range(n):
        s = buf[i]
        offset = offset + (s - offset) / 1024.0
        f = s - offset
        sumsq += f * f
    st[0] = offset
    return 230.0 * cal.amps_per_code * (sumsq / n) ** 0.5
st = [2048.0]
gc.collect(); t0 = time.ticks_us()
for _ in range(K):
    emon_block(buf, n, st)
R["emonlib_block"] = instr(t0) // K
t0 = time.ticks_us()
for _ in range(K):
    sim.read_block(buf, 0, n, %(fs)d)
R["sim_adc_block"] = instr(t0) // K
R["block_samples"] = n
R["block_power_mw"] = p
# Values of the meter: does v + 1 allocate (a long int) on this 32-bit build?
vals = {"now_ms (epoch ms)": 1763856000123, "interval_start_s (epoch s)": 1763856000,
        "frame counter (s since 2020)": 186019261, "power_mw x block_ms, dense 6.9 kW": 6900000 * 200,
        "power_mw x block_ms, dense 3 kW": 3000000 * 200, "power_mw x block_ms, sparse 1 s": 3000000 * 1000,
        "sum of squares before carry": 0x1FFFFFFF, "ms since boot (a day)": 86400000}
R["long_int"] = {k: alloc_of(lambda: v + 1) > 0 for k, v in vals.items()}
acc = sensing.EnergyAccumulator()
def blocks(t, start, k):
    # measure()'s per-block timestamp and energy arithmetic (app.py), k blocks of 200 ms
    iv = 900000; cov = 200; covered = 0; next_cp = t + 300000
    for _ in range(k):
        t1 = t + cov
        b0 = t1 - cov
        if t1 >= start + iv:
            start += iv
        if t1 > b0:
            acc.add(3000000, t1 - b0)
            covered += t1 - b0
        if t1 >= next_cp or t1 < next_cp - 300000:
            next_cp = t1 + 300000
        t = t1
for name, t in (("epoch_ms", 1763856000000), ("boot_ms", 1000000)):
    gc.collect(); a = micropython.mem_total(); t0 = time.ticks_us()
    blocks(t, t, 200)
    R["block_arith_" + name] = instr(t0) // 200
    R["block_arith_alloc_" + name] = (micropython.mem_total() - a) // 200
keys = frame.derive_keys(bytes(range(32)))
ob = Outbox("/flash/bench-ob")
hdr = {"kind": frame.KIND_READING, "meter_id": "m0001", "counter": 186019261, "interval_start": 1763856000,
       "interval_len": 900, "epsilon_milli": 1000, "clamp_wh": 1000, "m": 10}
fields = {"billing_wh": 750, "analytics_wh": 0, "flags": 0, "samples": 720000, "clipped": 0, "missing_s": 0}
gc.collect(); t0 = time.ticks_us()
for _ in range(5):
    noise = privacy.noise_share(1000, 1000, 10)
R["noise_share"] = instr(t0) // 5
gc.collect(); t0 = time.ticks_us()
for _ in range(5):
    blob = frame.seal(keys, hdr, fields)
R["seal"] = instr(t0) // 5
gc.collect(); t0 = time.ticks_us()
for _ in range(5):
    ob.append(blob)
R["outbox_append"] = instr(t0) // 5
gc.collect(); t0 = time.ticks_us()
gc.collect()
R["gc_collect"] = instr(t0)
print("BENCH " + json.dumps(R))
'''

LOOP = r'''
import gc, asyncio, json
asyncio.open_connection, asyncio.wait_for_ms
bufs = (bytearray(1024), bytearray(384))
from meter import persist, startup
with open("/flash/loop.json", "w") as f:
    f.write(%(cfg)r)
rc, o, cfg = startup.from_argv(["main.py", "/flash/loop.json", "--storage", "/flash/loop"], False)
import meter
meter.drop("meter.startup"); meter.drop("meter.config"); del startup
persist.makedirs("/flash/loop"); open("/flash/loop/netcut", "w").close()
from meter.hal_unix import UnixHAL
hal = UnixHAL(cfg, o["storage"])
from meter.app import Meter
m = Meter(hal, cfg, bufs=bufs)
del cfg, o, bufs
gc.collect()
boot_free = gc.mem_free()
asyncio.run(m.run(3, 1))
gc.collect()
print("LOOP " + json.dumps({"heap_total": gc.mem_free() + gc.mem_alloc(), "free_after_boot": boot_free}))
'''


def loop_config() -> str:
    cfg = json.loads((REPO / "firmware" / "config.example.json").read_text())
    cfg.pop("wifi")
    cfg["status_every"] = 2
    cfg["sim"] = {"profile": "/remote/tests/data/profiles/stepped.csv", "period_s": 300, "speed": 100000,
                  "mains_hz": 50, "mode": "sparse", "block_s": 5, "seed": 1, "start_time": 1763856000}
    return json.dumps(cfg)


def m0_us(instructions: float) -> float:
    return round(instructions * M0_CYCLES_PER_M3_INSTR / M0_HZ * 1e6, 1)


def main() -> int:
    t = QemuTarget(icount=True)
    try:
        res = t.run("import ramblock\nramblock.mount('/flash', fresh=True)\n"
                    + DRIVER % {"fs": FS, "block_ms": BLOCK_MS}, timeout=600)
        if res.returncode or not res.lines("BENCH"):
            print(res.output, file=sys.stderr)
            return 1
        r = json.loads(res.lines("BENCH")[0])
        loop = t.run("import ramblock\nramblock.mount('/flash', fresh=True)\n" + LOOP % {"cfg": loop_config()},
                     timeout=600)
        e2e = _e2e(t)
        heap = [json.loads(x) for x in loop.lines("HEAP")]
        extra = [json.loads(x) for x in loop.lines("LOOP")]
        if loop.returncode or not heap or not extra:
            print(loop.output, file=sys.stderr)
            return 1
    finally:
        t.close()
    n = r["block_samples"]
    per_s = FS / n  # blocks per second, dense
    tail = r["noise_share"] + r["seal"] + r["outbox_append"] + r["gc_collect"]
    sense_s = r["sensing_block"] * per_s
    out = {
        "target": "qemu mps2-an385 (Cortex-M3), MicroPython 1.28.0, 64 KB heap, meter+protocol frozen",
        "method": "qemu -icount shift=0: instructions = ticks_us delta x 1000",
        "assumption": {"m0plus_hz": M0_HZ, "m0plus_cycles_per_m3_instruction": M0_CYCLES_PER_M3_INSTR,
                       "note": "estimate, range 1.2-2.5: Thumb-1 expansion x M0+ CPI with XIP flash"},
        "per_sample_instructions": {
            "sensing": round(r["sensing_block"] / n, 1),
            "emonlib_float_baseline": round(r["emonlib_block"] / n, 1),
            "emonlib_over_sensing": round(r["emonlib_block"] / r["sensing_block"], 2),
            "sim_adc_not_on_a_board": round(r["sim_adc_block"] / n, 1),
        },
        "sensing_alloc_bytes_per_block": r["sensing_alloc_bytes_per_block"],
        "dense_1600hz": {
            "sensing_instructions_per_s": round(sense_s),
            "m0plus_cpu_share": round(sense_s * M0_CYCLES_PER_M3_INSTR / M0_HZ, 3),
            "m0plus_us_per_block": m0_us(r["sensing_block"]),
        },
        "long_ints_on_32bit": r["long_int"],
        "block_arithmetic": {
            "instructions_epoch_ms": r["block_arith_epoch_ms"],
            "instructions_boot_ms": r["block_arith_boot_ms"],
            "long_over_small": round(r["block_arith_epoch_ms"] / r["block_arith_boot_ms"], 2),
            "heap_bytes_per_block_epoch_ms": r["block_arith_alloc_epoch_ms"],
            "heap_bytes_per_block_boot_ms": r["block_arith_alloc_boot_ms"],
        },
        "interval_tail_instructions": {
            "noise_share": r["noise_share"], "seal": r["seal"], "outbox_append_ram_lfs": r["outbox_append"],
            "gc_collect": r["gc_collect"], "total": tail, "m0plus_ms": round(m0_us(tail) / 1000, 2),
        },
        "heap_64k": {"total": extra[0]["heap_total"], "free_after_boot": extra[0]["free_after_boot"],
                     "min_free_after_gc": heap[0]["min_free_after_gc"],
                     "low_point_used": extra[0]["heap_total"] - heap[0]["min_free_after_gc"]},
    }
    enc = e2e["obfuscator"] + e2e["encrypt"]
    out["e2e_2048"] = {
        "obfuscator_instructions": e2e["obfuscator"], "encrypt_instructions": e2e["encrypt"],
        "longest_1bit_step_instructions": e2e["worst_step"], "decrypts_with_phe": e2e["decrypts"],
        "over_proxy_tail": round(enc / tail, 1),
        "esp32_s": round(enc * ESP32_CYCLES_PER_M3_INSTR / ESP32_HZ, 2),
        "esp32_interval_share": round(enc * ESP32_CYCLES_PER_M3_INSTR / ESP32_HZ / INTERVAL_S, 4),
        "esp32_longest_step_ms": round(e2e["worst_step"] * ESP32_CYCLES_PER_M3_INSTR / ESP32_HZ * 1000, 1),
        "m0plus_s": round(m0_us(enc) / 1e6, 2),
        "m0plus_interval_share": round(m0_us(enc) / 1e6 / INTERVAL_S, 4),
        "m0plus_longest_step_ms": round(m0_us(e2e["worst_step"]) / 1000, 1),
        "assumption": {"esp32_hz": ESP32_HZ, "esp32_cycles_per_m3_instruction": ESP32_CYCLES_PER_M3_INSTR},
    }
    print(json.dumps(out, indent=1))
    return 0


def _e2e(t: QemuTarget) -> dict:
    """One meter-side encryption on the target with a fresh 2048-bit key; decrypted here with phe."""
    from phe import paillier as phe_paillier

    from meterveil.host.common import packing
    from meterveil.host.common.pubkey import make_hs

    pub, sk = phe_paillier.generate_paillier_keypair(n_length=2048)
    bits = pub.n.bit_length() // 2
    res = t.run(E2E_DRIVER % {"n": pub.n, "hs": make_hs(pub.n), "bits": bits}, timeout=1800)
    line = res.lines("E2E")
    if res.returncode or not line:
        raise RuntimeError(res.output)
    obf, enc, worst, c = line[0].split()
    return {"obfuscator": int(obf), "encrypt": int(enc), "worst_step": int(worst),
            "decrypts": packing.unpack_sum(sk.raw_decrypt(int(c, 16)), 1) == (1234, 567)}


if __name__ == "__main__":
    sys.exit(main())
