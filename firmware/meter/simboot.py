# Boot-only half of the CT simulator (ctsim.py): profile parsing, parameter checks and the noise
# table. SimADC.__init__ runs setup() once, then the module is unloaded (meter.drop): the
# meter's 64 KB heap keeps only the sampling path. MicroPython and CPython.
import array
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
    fp = (fp + "000")[:3]
    if not ip:
        ip = "0"
    if not (ip.isdigit() and fp.isdigit()):
        raise ValueError(s)
    v = int(ip) * 1000 + int(fp)
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


def setup(sim, profile_path, mains_hz, cal, seed, harmonics, power_factor, noise_rms_codes,
          bias_offset_codes, drift_codes, drift_period_s, epoch_ms, period_s, gain):
    # Fills in a SimADC (ctsim.py documents the parameters).
    if not (40 <= mains_hz <= 70):
        raise ValueError("mains_hz out of range")
    if not (0 <= noise_rms_codes <= 20):
        raise ValueError("noise_rms_codes out of range [0, 20]")
    sim.ts, sim.ws = load_profile(profile_path)
    sim.mains_mhz = int(mains_hz * 1000 + 0.5)
    pf = cal.power_factor if power_factor is None else power_factor
    sim.epoch_ms = epoch_ms
    sim.period_ms = int(period_s * 1000)
    sim.top = cal.full_scale
    sim.bias_q = int((cal.mid + bias_offset_codes) * 256)   # codes * 2**8
    sim.drift_q = drift_codes * 256
    sim.drift_period_ms = drift_period_s * 1000
    # amps rms -> codes rms (Q8); gain models a CT ratio / burden tolerance the meter does
    # not know about (calibration error), 1.0 = ideal parts.
    sim.q_per_watt = gain * 256 / (cal.volts * pf * cal.amps_per_code)
    # Harmonics as (order, amp, phase rad); the current shape is scaled so that its rms,
    # fundamental and harmonics together, is exactly 1.
    ms = 1.0
    for order, amp, _ph in harmonics:
        if not (2 <= order < 128):
            raise ValueError("harmonic order out of range")
        ms += amp * amp
    sim._harm = tuple((o, a, p * math.pi / 180.0) for o, a, p in harmonics)
    sim._norm = math.sqrt(2.0 / ms)
    # xorshift32 state: identical streams on MicroPython and CPython for a given seed.
    r = (seed * 2654435761 + 1) & 0xFFFFFFFF or 1
    # Gaussian-ish (Irwin-Hall, 12 uniforms) noise in codes * 2**8, int16 to spare the heap.
    tab = array.array("h", bytes(2048))   # 1024 entries (ctsim._NLEN)
    sig = noise_rms_codes * 256
    for i in range(1024):
        acc = 0
        for _ in range(12):
            r ^= (r << 13) & 0xFFFFFFFF
            r ^= r >> 17
            r ^= (r << 5) & 0xFFFFFFFF
            acc += r & 0xFFFF
        v = int((acc / 65536.0 - 6.0) * sig)
        tab[i] = -32767 if v < -32767 else (32767 if v > 32767 else v)
    sim._noise = tab
    sim._rng = r
    sim._lvl_mw = -1
    sim._tab = array.array("i", bytes(4 * 257))  # one cycle + wrap entry for interpolation
    sim._cur = 0  # profile row cursor (blocks arrive in time order)
