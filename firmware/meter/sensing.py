# Sensing maths: raw ADC blocks -> calibrated power -> integer energy. Pure functions over sample
# buffers (array('H') on the meter, plain lists in tests); runs on MicroPython and CPython.
#
# Interface (docs/CONTRACTS.md, refined; docs/SENSING.md has the model and the maths):
#   cal = Calibration(cfg)          cfg = config "calibration" section; required keys
#       ct_turns, burden_ohm, adc_bits, vref_mv, volts, power_factor, rated_amps;
#       optional: noise_rms_codes (ADC noise floor measured with no load, removed in quadrature;
#       default calboot.DEFAULTS), creep_ma (starting current: rms below it reads 0;
#       default calboot.DEFAULTS), gain (trim from a reference-meter calibration; default 1.0).
#       Bad values raise CalibrationError(field).
#   block_power_mw(buf, n, cal, stats=None) -> int mW
#       stats: [clipped, over_rated] list: stats[0] += samples at the ADC rails, stats[1] += 1 when
#       the block's rms current exceeds rated_amps. Creep suppression: 0 unless the noise-corrected
#       mean square exceeds creep_threshold_q(cal, n).
#   block_rms_q(buf, n, cal) -> int                      rms current in codes * 2**12 (calibration)
#   cycle_samples(fs_hz, mains_hz, cycles) -> int        whole-cycle block length (sparse mode)
#   EnergyAccumulator(): .add(power_mw, duration_ms), .take_wh() -> int, .peek_mwh() -> int
#   interval_start(t, interval_s) -> t - t % interval_s
#
# Integer discipline: boards have single-precision floats and 31-bit small ints. The per-sample
# loop keeps every value below 2**30 (sample pivot at mid-rail, squares carried out at 2**29) and
# allocates nothing; floats appear only once, in Calibration.__init__.
try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

_CARRY = const(0x20000000)  # 2**29: sum of squares is carried out before small ints overflow
_FRAC = const(12)           # rms is kept as codes * 2**12 (1/4096 code resolution)
_KBITS = const(24)          # power scale factor: mW per code * 2**(_KBITS - _FRAC)
_MAX_BLOCK = const(65535)   # keeps the plain sum below 2**30 on 32-bit boards
# A block whose noise-corrected mean square is within _CREEP_Z standard deviations of what noise
# alone gives (noise^2 * sqrt(2/n)) reads 0: no creep from a random excess of noise.
_CREEP_Z = const(6)


def __getattr__(name):
    # sensing.CalibrationError resolves to the boot module (calboot.py), loaded on demand.
    if name == "CalibrationError":
        from meter import calboot
        return calboot.CalibrationError
    raise AttributeError(name)


class Calibration:
    # Converts ADC codes to amps and watts. All derived constants are integers so that the
    # per-block maths is identical on every runtime. Validation and the derivation run once, in
    # calboot.py (unloaded afterwards: the 64 KB heap keeps only the numbers).
    def __init__(self, cfg):
        import meter
        from meter import calboot
        calboot.setup(self, cfg)
        meter.drop("meter.calboot")


def _isqrt(v):
    # floor(sqrt(v)) for v >= 0 with ints only (no float boxing, exact on both runtimes).
    if v <= 0:
        return 0
    b = 0
    t = v
    while t:
        t >>= 1
        b += 1
    x = 1 << ((b + 1) >> 1)  # >= sqrt(v): Newton then decreases monotonically to the floor
    while True:
        y = (x + v // x) >> 1
        if y >= x:
            return x
        x = y


def block_rms_q(buf, n, cal, stats=None):
    # rms of the AC part of n samples, in codes * 2**12, before noise-floor removal.
    # DC offset removal: the exact block mean (caller passes whole mains cycles), computed from
    # the plain sum and the sum of squares: n^2 * var = n*S2 - S1^2, exact in integers.
    if n <= 0:
        return 0
    if n > _MAX_BLOCK:
        raise ValueError("block longer than %d samples" % _MAX_BLOCK)
    mid = cal.mid
    clip_thr = cal.clip_thr
    s1 = 0
    s2 = 0
    hi = 0
    clipped = 0
    for i in range(n):
        x = buf[i] - mid
        s1 += x
        xx = x * x
        if xx + x >= clip_thr:
            clipped += 1
        s2 += xx
        if s2 >= _CARRY:
            s2 -= _CARRY
            hi += 1
    if stats is not None:
        stats[0] += clipped
    nn = n * n
    var_n2 = n * (hi * _CARRY + s2) - s1 * s1
    # ms_q = var * 2**24 without a 2**24-times-larger intermediate (stays < 2**62 on unix).
    q = var_n2 // nn  # (no divmod: its tuple would allocate)
    return (q << (2 * _FRAC)) + (((var_n2 - q * nn) << (2 * _FRAC)) // nn)


def creep_threshold_q(cal, n):
    # Mean-square threshold (codes^2 * 2**24) for n-sample blocks: the starting current, or
    # _CREEP_Z standard deviations of the noise-only variance estimate (noise^2 * sqrt(2/n)),
    # whichever is larger. Integers only and recomputed per block: a cache would cost attribute
    # names, interned for good (docs/FIRMWARE.md "Memory"), for ~20 integer steps per block.
    # sqrt(n/2) to 1/16 and the division before the product: no long int on 32-bit boards.
    t = ((cal.noise_q // _isqrt(n << 7)) * _CREEP_Z) << 4
    return t if t > cal.creep_ms_q else cal.creep_ms_q


def block_power_mw(buf, n, cal, stats=None):
    # Mean power of the block: volts * pf * I_rms (the CT-only model; docs/SENSING.md).
    if n <= 0:
        return 0
    ms_q = block_rms_q(buf, n, cal, stats) - cal.noise_q
    if ms_q <= creep_threshold_q(cal, n):
        return 0
    rms_q = _isqrt(ms_q)
    if stats is not None and rms_q > cal.rated_q:
        stats[1] += 1
    return (rms_q * cal.k_mw + (1 << (_KBITS - 1))) >> _KBITS


def block_rms_codes_q(buf, n, cal):
    # rms in codes * 2**12 after mean removal, no noise floor: what a no-load calibration measures.
    return _isqrt(block_rms_q(buf, n, cal))


def cycle_samples(fs_hz, mains_hz, cycles):
    # Samples in `cycles` whole mains cycles at fs_hz (rounded): block length for sparse mode and
    # for dense blocks, so that the block mean is a clean DC estimate.
    return (2 * cycles * fs_hz + mains_hz) // (2 * mains_hz)


class EnergyAccumulator:
    # Integer energy: whole mWh plus a remainder in mW*ms (< 3.6e6, a small int on every board).
    # No float accumulator anywhere: a float32 sum would stall after ~2**24 increments.
    def __init__(self, mwh=0, rem_mwms=0):
        self.mwh = mwh
        self.rem = rem_mwms

    def add(self, power_mw, duration_ms):
        if power_mw < 0 or duration_ms < 0:
            raise ValueError("negative power or duration")
        r = self.rem + power_mw * duration_ms
        q = r // 3600000
        self.rem = r - q * 3600000
        self.mwh += q

    def peek_mwh(self):
        return self.mwh

    def take_wh(self):
        # Whole Wh since the last take; the sub-Wh part stays for the next interval, so nothing
        # is lost at interval boundaries.
        wh = self.mwh // 1000
        self.mwh -= wh * 1000
        return wh


def interval_start(t, interval_s):
    return t - t % interval_s
