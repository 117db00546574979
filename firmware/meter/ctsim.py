# Simulated CT clamp + biased 12-bit ADC for the unix HAL: replays a household load profile so
# the real sensing code runs in CI. MicroPython and CPython, no numpy.
#
# Interface (docs/CONTRACTS.md, refined):
#   sim = SimADC(profile_path, mains_hz, seed=1, parts=None, tolerance=0.0, harmonics=(),
#                power_factor=1.0, noise_rms_codes=0.8, bias_offset_codes=0.0, drift_codes=0.0,
#                drift_period_s=3600, epoch_ms=0, period_s=0, gain=1.0)
#     parts: the simulated hardware, {"ct_turns", "burden_ohm", "vref_mv", "adc_bits", "volts"}
#       (true mains voltage); missing keys take the reference design's (true_parts(None, 0, seed)). tolerance:
#       CT ratio, burden and reference each off by a seeded uniform draw in +-tolerance (the values
#       as built: ctsim.true_parts(parts, tolerance, seed)). The meter's Calibration is never consulted: the simulator and the
#       meter reach codes <-> watts by separate arithmetic, so an error in either shows.
#     profile: CSV "seconds,watts" (header line optional), piecewise constant from each row to
#       the next; before the first row the first value, after the last the last value, unless
#       period_s > 0 (then profile time wraps: (t_ms - epoch_ms) mod period_s).
#     harmonics: ((order, amplitude relative to the fundamental, phase_deg), ...), e.g.
#       ((3, 0.3, 0), (5, 0.15, 180)).  mains_hz may be fractional (49.95).
#     power_factor: the load's pf (1.0: resistive).
#   sim.read_block(buf, t_ms, n, fs_hz) -> n     raw codes for samples at t_ms + k*1000/fs_hz
#   sim.true_energy_mwms(t0_ms, t1_ms) -> int    exact integral of the profile (mW*ms)
#   sim.true_energy_mwh(t0_ms, t1_ms) -> int     the same, rounded to mWh
#   sim.watts_at(t_ms) -> float
#
# Model (docs/SENSING.md): "true energy" is the integral of the profile's watts. The CT-only
# meter computes P = volts * pf * I_rms, so the simulator turns P into a current whose total rms
# (fundamental and harmonics) is P / (volts_true * pf_load). With nominal parts, the provisioned
# voltage and pf, the meter model is exact and what remains is the sensing chain and the meter's
# arithmetic: sampling, offset removal, noise, quantisation, clipping, calibration maths. A board
# with a voltage channel would measure real power instead.
import math

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

# Boot-only parts (profile parsing, parameter checks, noise table) live in simboot.py, unloaded
# once the simulator is set up: the meter's heap keeps only the sampling path.
_TBITS = const(8)              # 256-entry waveform table per cycle (+ linear interpolation)
_TLEN = const(256)
_PBITS = const(30)             # phase accumulator: one cycle = 2**30
_PMASK = const(0x3FFFFFFF)
_PSHIFT = const(22)            # _PBITS - _TBITS
_FMASK = const(0x3FFFFF)
_Q = const(8)                  # analog values are codes * 2**8 before quantisation
_NLEN = const(1024)            # Gaussian noise table (int16), read at a random offset per chunk


def __getattr__(name):
    # ctsim.load_profile / ProfileError / true_parts (tests, tools) resolve to the boot module.
    if name in ("load_profile", "ProfileError", "true_parts"):
        from meter import simboot
        return getattr(simboot, name)
    raise AttributeError(name)


class SimADC:
    def __init__(self, profile_path, mains_hz, seed=1, parts=None, tolerance=0.0, harmonics=(),
                 power_factor=1.0, noise_rms_codes=0.8, bias_offset_codes=0.0, drift_codes=0.0,
                 drift_period_s=3600, epoch_ms=0, period_s=0, gain=1.0):
        import meter
        from meter import simboot
        simboot.setup(self, profile_path, mains_hz, seed, parts, tolerance, harmonics,
                      power_factor, noise_rms_codes, bias_offset_codes, drift_codes,
                      drift_period_s, epoch_ms, period_s, gain)
        meter.drop("meter.simboot")

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

    def read_block(self, buf, t_ms, n, fs_hz):
        # Fill buf[0:n] with the codes sampled at t_ms + k*1000/fs_hz, k = 0..n-1.
        ph = ((t_ms * self.mains_mhz) % 1000000) * (1 << _PBITS) // 1000000
        dph = self.mains_mhz * (1 << _PBITS) // (fs_hz * 1000)
        # Mid-rail bias + fixed offset + slow (thermal) drift, held constant within a block;
        # + half a code: round-to-nearest quantisation.
        b = self.bias_q + 128  # 1 << (_Q - 1)
        if self.drift_q:
            b += int(self.drift_q * math.sin(2.0 * math.pi * (t_ms % self.drift_period_ms)
                                             / self.drift_period_ms))
        top = self.top
        noise = self._noise
        tab = self._tab
        # Noise: the table read from a random offset per block, wrapping at its end (every entry
        # equally often: the noise power is the table's, whatever the block length).
        r = self._rng  # xorshift32 (same stream on MicroPython and CPython)
        r ^= (r << 13) & 0xFFFFFFFF
        r ^= r >> 17
        r ^= (r << 5) & 0xFFFFFFFF
        self._rng = r
        j = r % _NLEN
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
            if j >= _NLEN:
                j = 0
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
