# Boot-only half of the CT simulator (ctsim.py): profile parsing, the simulated parts, parameter
# checks and the noise table. SimADC.__init__ runs setup() once, then the module is unloaded (meter.drop): the
# meter's 64 KB heap keeps only the sampling path. MicroPython and CPython.
import array
import gc
import math


class ProfileError(ValueError):
    reason = "bad_profile"


def _milli(s):
    # "12.345" -> 12345 exactly, without floats (watts -> mW, seconds -> ms).
    s = s.strip()
    neg = s.startswith("-")
    if neg or s.startswith("+"):
        s = s[1:]
    if "." in s:
        ip, fp = s.split(".", 1)
    else:
        ip, fp = s, ""
    fp = fp[:3]
    if not ip:
        ip = "0"
    if not (ip.isdigit() and (fp.isdigit() or not fp)):
        raise ValueError(s)
    v = int(ip) * 1000 + (int(fp) * 10 ** (3 - len(fp)) if fp else 0)
    return -v if neg else v


def load_profile(path):
    # -> (array of ms, array of mW). Rows must be strictly increasing in time, watts >= 0.
    ts = array.array("i")
    ws = array.array("i")
    with open(path) as f:
        lineno = 0
        header_ok = True
        for line in f:
            lineno += 1
            line = line.strip()
            if not line or line[0] == "#":
                continue
            parts = line.split(",")
            try:
                t = _milli(parts[0])
                w = _milli(parts[1])
            except (ValueError, IndexError):
                if header_ok:
                    header_ok = False
                    continue  # first non-comment line may be a header
                raise ProfileError("%s:%d: expected 'seconds,watts'" % (path, lineno))
            header_ok = False
            err = None
            if w < 0:
                err = "negative watts"
            elif len(ts) and t <= ts[-1]:
                err = "time not increasing"
            elif t > 0x7FFFFFFF:
                err = "profile longer than 24 days"
            if err:
                raise ProfileError("%s:%d: %s" % (path, lineno, err))
            ts.append(t)
            ws.append(w)
    if not len(ts):
        raise ProfileError("%s: empty profile" % path)
    return ts, ws


def true_parts(parts, tolerance, seed):
    # The parts as built: nominal values (the reference design below, overridden by those keys of
    # `parts`; a config's calibration section may be passed as it is), each of CT ratio, burden
    # and reference voltage off by a uniform draw in +-tolerance (relative), from the seed.
    # The reference hardware (docs/SENSING.md): a 2000:1 CT clamp, a 33 ohm burden, a 12-bit ADC
    # with a 3.3 V reference, 230 V mains. The simulator's own numbers: the meter's calibration is
    # never read. A literal, not a module constant: each module-level name stays interned in the
    # heap (docs/FIRMWARE.md "Memory"); true_parts(None, 0, seed) returns it.
    out = {"ct_turns": 2000, "burden_ohm": 33.0, "vref_mv": 3300, "adc_bits": 12, "volts": 230.0}
    if parts:
        for k in out:
            if k in parts:
                out[k] = parts[k]
    r = (seed * 2246822519 + 7) & 0xFFFFFFFF or 1
    for k in ("ct_turns", "burden_ohm", "vref_mv"):
        r ^= (r << 13) & 0xFFFFFFFF  # xorshift32, as for the noise table
        r ^= r >> 17
        r ^= (r << 5) & 0xFFFFFFFF
        out[k] = out[k] * (1.0 + tolerance * ((r & 0xFFFF) / 32767.5 - 1.0))
    return out


def setup(sim, profile_path, mains_hz, seed, parts, tolerance, harmonics, power_factor,
          noise_rms_codes, bias_offset_codes, drift_codes, drift_period_s, epoch_ms, period_s, gain):
    # Fills in a SimADC (ctsim.py documents the parameters).
    if not (40 <= mains_hz <= 70):
        raise ValueError("mains_hz out of range")
    if not (0 <= noise_rms_codes <= 20):
        raise ValueError("noise_rms_codes out of range [0, 20]")
    if not (0 <= tolerance < 0.5):
        raise ValueError("tolerance out of range [0, 0.5)")
    if power_factor is None:
        power_factor = 1.0
    if not (0 < power_factor <= 1):
        raise ValueError("power_factor out of range (0, 1]")
    hw = true_parts(parts, tolerance, seed)  # not kept: the heap holds only the sampling path
    bits = hw["adc_bits"]
    sim.ts, sim.ws = load_profile(profile_path)
    gc.collect()  # the parse's garbage goes before the long-lived tables are placed
    sim.mains_mhz = int(mains_hz * 1000 + 0.5)
    sim.epoch_ms = epoch_ms
    sim.period_ms = int(period_s * 1000)
    sim.top = (1 << bits) - 1
    sim.bias_q = int(((1 << (bits - 1)) + bias_offset_codes) * 256)   # codes * 2**8, mid-rail
    sim.drift_q = drift_codes * 256
    sim.drift_period_ms = drift_period_s * 1000
    # The physical chain, step by step: W -> primary A rms (true mains voltage, the load's pf) ->
    # secondary A (true turns) -> volts across the true burden -> codes (true reference).
    # gain: any further CT error the meter does not know about (1.0 = none).
    amps_per_watt = 1.0 / (hw["volts"] * power_factor)
    pin_volts_per_amp = hw["burden_ohm"] / hw["ct_turns"]
    codes_per_volt = (1 << bits) / (hw["vref_mv"] / 1000.0)
    sim.q_per_watt = gain * 256 * amps_per_watt * pin_volts_per_amp * codes_per_volt
    # Harmonics as (order, amp, phase rad); the current shape is scaled so that its rms,
    # fundamental and harmonics together, is exactly 1.
    ms = 1.0
    for order, amp, _ph in harmonics:
        if not (2 <= order < 128):
            raise ValueError("harmonic order out of range")
        ms += amp * amp
    sim._harm = tuple((o, a, p * math.pi / 180.0) for o, a, p in harmonics)
    sim._norm = math.sqrt(2.0 / ms)
    # Long-lived tables first, then the boot-only work: what stays is not stranded among garbage.
    sim._tab = array.array("i", bytes(4 * 257))  # one cycle + wrap entry for interpolation
    # xorshift32 state: identical streams on MicroPython and CPython for a given seed.
    r = (seed * 2654435761 + 1) & 0xFFFFFFFF or 1
    # Gaussian-ish (Irwin-Hall, 12 uniforms) noise in codes * 2**8, int16 to spare the heap. The
    # table is normalised to zero mean and exactly noise_rms_codes: the noise power is a property
    # of the board, the same for every seed (a no-load calibration with another seed measures it).
    tab = array.array("h", bytes(2048))   # 1024 entries (ctsim._NLEN)
    s1 = s2 = 0
    for i in range(1024):
        acc = 0
        for _ in range(12):
            r ^= (r << 13) & 0xFFFFFFFF
            r ^= r >> 17
            r ^= (r << 5) & 0xFFFFFFFF
            acc += r & 0xFFFF
        v = (acc - 393216) >> 4   # sigma = 4096: |v| <= 24576 fits int16
        tab[i] = v
        s1 += v
        s2 += v * v
    # Integer rescaling (no float per entry): c = 1024 * (v - mean), out = c * kq / 2**24.
    sd = math.sqrt(s2 / 1024.0 - (s1 / 1024.0) ** 2)
    kq = int(noise_rms_codes * 256 / (sd * 1024) * (1 << 24) + 0.5)
    for i in range(1024):
        tab[i] = ((tab[i] * 1024 - s1) * kq + (1 << 23)) >> 24
    sim._noise = tab
    sim._rng = r
    sim._lvl_mw = -1
    sim._cur = 0  # profile row cursor (blocks arrive in time order)
    gc.collect()
