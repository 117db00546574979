# Simulated CT clamp + biased 12-bit ADC for the unix HAL: replays a household load profile so
# the real sensing code runs in CI. MicroPython and CPython, no numpy.
#
# Interface (docs/CONTRACTS.md, refined):
#   sim = SimADC(profile_path, mains_hz, cal, seed=1, harmonics=(), power_factor=None,
#                noise_rms_codes=0.8, bias_offset_codes=0.0, drift_codes=0.0, drift_period_s=3600,
#                epoch_ms=0, period_s=0, gain=1.0)
#     profile: CSV "seconds,watts" (header line optional), piecewise constant from each row to
#       the next; before the first row the first value, after the last the last value, unless
#       period_s > 0 (then profile time wraps: (t_ms - epoch_ms) mod period_s).
#     harmonics: ((order, amplitude relative to the fundamental, phase_deg), ...), e.g.
#       ((3, 0.3, 0), (5, 0.15, 180)).  mains_hz may be fractional (49.95).
#     power_factor: the load's pf (default: the meter's configured cal.power_factor).
#   sim.read_block(buf, t_ms, n, fs_hz) -> n     raw codes for samples at t_ms + k*1000/fs_hz
#   sim.true_energy_mwms(t0_ms, t1_ms) -> int    exact integral of the profile (mW*ms)
#   sim.true_energy_mwh(t0_ms, t1_ms) -> int     the same, rounded to mWh
#   sim.watts_at(t_ms) -> float
#
# Model (docs/SENSING.md): "true energy" is the integral of the profile's watts. The CT-only
# meter computes P = volts * pf * I_rms, so the simulator turns P into a current whose total rms
# (fundamental and harmonics) is P / (volts * pf_load). With pf_load == cal.power_factor the meter
# model is exact and what remains is the sensing chain: sampling, offset removal, noise,
# quantisation, clipping. A board with a voltage channel would measure real power instead.
import array
import math

_TBITS = 8                     # 256-entry waveform table per cycle (+ linear interpolation)
_TLEN = 1 << _TBITS
_PBITS = 30                    # phase accumulator: one cycle = 2**30
_PMASK = (1 << _PBITS) - 1
_PSHIFT = _PBITS - _TBITS
_FMASK = (1 << _PSHIFT) - 1
_Q = 8                         # analog values are codes * 2**8 before quantisation
_NLEN = 1024                   # Gaussian noise table (int16), read at a random offset per chunk


class ProfileError(ValueError):
    reason = "bad_profile"


def _parse_decimal_milli(s):
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
                t = _parse_decimal_milli(parts[0])
                w = _parse_decimal_milli(parts[1])
            except (ValueError, IndexError):
                if header_ok:
                    header_ok = False
                    continue  # first non-comment line may be a header
                raise ProfileError("%s:%d: expected 'seconds,watts'" % (path, lineno))
            header_ok = False
            if w < 0:
                raise ProfileError("%s:%d: negative watts" % (path, lineno))
            if len(ts) and t <= ts[-1]:
                raise ProfileError("%s:%d: time not increasing" % (path, lineno))
            if t > 0x7FFFFFFF:
                raise ProfileError("%s:%d: profile longer than 24 days" % (path, lineno))
            ts.append(t)
            ws.append(w)
    if not len(ts):
        raise ProfileError("%s: empty profile" % path)
    return ts, ws


class _Rng:
    # xorshift32: identical streams on MicroPython and CPython for a given seed.
    def __init__(self, seed):
        self.s = (seed * 2654435761 + 1) & 0xFFFFFFFF or 1

    def next(self):
        s = self.s
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        self.s = s
        return s

    def below(self, n):
        return self.next() % n


class SimADC:
    def __init__(self, profile_path, mains_hz, cal, seed=1, harmonics=(), power_factor=None,
                 noise_rms_codes=0.8, bias_offset_codes=0.0, drift_codes=0.0, drift_period_s=3600,
                 epoch_ms=0, period_s=0, gain=1.0):
        if not (40 <= mains_hz <= 70):
            raise ValueError("mains_hz out of range")
        if not (0 <= noise_rms_codes <= 20):
            raise ValueError("noise_rms_codes out of range [0, 20]")
        self.ts, self.ws = load_profile(profile_path)
        self.cal = cal
        self.mains_mhz = int(mains_hz * 1000 + 0.5)
        self.pf = cal.power_factor if power_factor is None else power_factor
        self.epoch_ms = epoch_ms
        self.period_ms = int(period_s * 1000)
        self.top = cal.full_scale
        self.bias_q = int((cal.mid + bias_offset_codes) * (1 << _Q))
        self.drift_q = drift_codes * (1 << _Q)
        self.drift_period_ms = drift_period_s * 1000
        self.rng = _Rng(seed)
        # amps rms -> codes rms (Q8); gain models a CT ratio / burden tolerance the meter does
        # not know about (calibration error), 1.0 = ideal parts.
        self.q_per_watt = gain * (1 << _Q) / (cal.volts * self.pf * cal.amps_per_code)
        self._harm, self._norm = self._check_harmonics(harmonics)
        self._noise = self._make_noise(noise_rms_codes)
        self._lvl_mw = -1
        self._tab = array.array("i", bytes(4 * (_TLEN + 1)))  # + wrap entry for interpolation
        self._cur = 0  # profile row cursor (blocks arrive in time order)

    @staticmethod
    def _check_harmonics(harmonics):
        # -> (harmonics as a tuple, 1/rms of sin(th) + sum h_k sin(k th + phi_k)): the current
        # shape is scaled so that its rms, fundamental and harmonics together, is exactly 1.
        ms = 1.0
        for order, amp, _ph in harmonics:
            if not (2 <= order < _TLEN // 2):
                raise ValueError("harmonic order out of range")
            ms += amp * amp
        return tuple((o, a, p * math.pi / 180.0) for o, a, p in harmonics), math.sqrt(2.0 / ms)

    def _make_noise(self, sigma_codes):
        # Gaussian-ish (Irwin-Hall, 12 uniforms) noise in codes * 2**8, int16 to spare the heap
        # (the whole app runs under -X heapsize=64k with this simulator inside).
        tab = array.array("h", bytes(2 * _NLEN))
        sig = sigma_codes * (1 << _Q)
        rng = self.rng
        for i in range(_NLEN):
            acc = 0
            for _ in range(12):
                acc += rng.next() & 0xFFFF
            v = int((acc / 65536.0 - 6.0) * sig)
            tab[i] = -32767 if v < -32767 else (32767 if v > 32767 else v)
        return tab

    def _level(self, t_ms):
        # -> (mW at t_ms, absolute time in ms of the next change, or None).
        ts = self.ts
        pt = t_ms - self.epoch_ms
        base = 0
        if self.period_ms:
            base = pt - pt % self.period_ms
            pt -= base
        i = self._cur
        nrow = len(ts)
        if i >= nrow or ts[i] > pt:
            i = 0  # went back in time (or wrapped): rescan
        while i + 1 < nrow and ts[i + 1] <= pt:
            i += 1
        self._cur = i
        if pt < ts[0]:
            return self.ws[0], ts[0] + base + self.epoch_ms
        if i + 1 < nrow:
            return self.ws[i], ts[i + 1] + base + self.epoch_ms
        if self.period_ms:
            return self.ws[i], base + self.period_ms + self.epoch_ms
        return self.ws[i], None

    def watts_at(self, t_ms):
        return self._level(t_ms)[0] / 1000.0

    def _set_level(self, mw):
        # Precompute one mains cycle in codes*2**8 for this load: per-sample work is then a
        # table lookup, not a sum of sines. Computed from the sines on every load change rather
        # than kept as a float shape table: 4 KB less heap, a few ms per change.
        if mw == self._lvl_mw:
            return
        amp = mw / 1000.0 * self.q_per_watt * self._norm
        tab = self._tab
        harm = self._harm
        w = 2.0 * math.pi / _TLEN
        sin = math.sin
        for i in range(_TLEN):
            v = sin(w * i)
            for order, a, ph in harm:
                v += a * sin(order * w * i + ph)
            v *= amp
            tab[i] = int(v + (0.5 if v >= 0 else -0.5))
        tab[_TLEN] = tab[0]
        self._lvl_mw = mw

    def _bias_q(self, t_ms):
        # Mid-rail bias + fixed offset + slow (thermal) drift, held constant within a block.
        b = self.bias_q + (1 << (_Q - 1))  # + half a code: round-to-nearest quantisation
        if self.drift_q:
            b += int(self.drift_q * math.sin(2.0 * math.pi * (t_ms % self.drift_period_ms)
                                             / self.drift_period_ms))
        return b

    def read_block(self, buf, t_ms, n, fs_hz):
        # Fill buf[0:n] with the codes sampled at t_ms + k*1000/fs_hz, k = 0..n-1.
        ph = ((t_ms * self.mains_mhz) % 1000000) * (1 << _PBITS) // 1000000
        dph = self.mains_mhz * (1 << _PBITS) // (fs_hz * 1000)
        b = self._bias_q(t_ms)
        top = self.top
        noise = self._noise
        tab = self._tab
        k = 0
        while k < n:
            mw, t_next = self._level(t_ms + k * 1000 // fs_hz)
            self._set_level(mw)
            k_end = n
            if t_next is not None:
                # first sample index at or after the next change
                ke = -((-(t_next - t_ms) * fs_hz) // 1000)
                if ke < k_end:
                    k_end = ke
            if k_end <= k:
                k_end = k + 1
            j = self.rng.below(_NLEN - 1)
            stop = k_end if k_end - k <= _NLEN - j else k + _NLEN - j
            for kk in range(k, stop):
                # Linear interpolation in the cycle table: plain nearest-entry lookup biases
                # the rms by ~0.05% when sampling is synchronous with mains (2000 Hz / 60 Hz).
                i = ph >> _PSHIFT
                v = tab[i]
                v = (v + (((tab[i + 1] - v) * (ph & _FMASK)) >> _PSHIFT) + noise[j] + b) >> _Q
                j += 1
                if v < 0:
                    v = 0
                elif v > top:
                    v = top
                buf[kk] = v
                ph = (ph + dph) & _PMASK
            k = stop
        return n

    def true_energy_mwms(self, t0_ms, t1_ms):
        # Exact integral of the piecewise-constant profile over [t0_ms, t1_ms), in mW*ms.
        acc = 0
        t = t0_ms
        while t < t1_ms:
            mw, t_next = self._level(t)
            te = t1_ms if t_next is None or t_next > t1_ms else t_next
            acc += mw * (te - t)
            t = te
        return acc

    def true_energy_mwh(self, t0_ms, t1_ms):
        return (self.true_energy_mwms(t0_ms, t1_ms) + 1800000) // 3600000
