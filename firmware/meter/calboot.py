# Boot-only half of sensing.Calibration: validation and the derived integer constants. Run once
# per Calibration, then unloaded (meter.drop). MicroPython and CPython.
_FRAC = 12   # sensing._FRAC: rms is kept as codes * 2**12
_KBITS = 24  # sensing._KBITS: power scale factor mW per code * 2**(_KBITS - _FRAC)
# Defaults for a meter whose board was never measured (provisioning writes them too; one source).
# NOISE_RMS_CODES: a deliberately high guess of the ADC noise floor (the reference design measures
# ~0.85 codes): over-estimating it hides small loads, under-estimating it bills an empty flat.
# `meterveil calibrate --zero` replaces it with the board's measured floor.
NOISE_RMS_CODES = 1.5
# CREEP_MA: starting current. IEC 62053-21 class 1 (direct connected) requires a meter to start
# at 0.004 Ib: 20 mA for Ib = 5 A, the smallest common basic current (docs/SENSING.md).
CREEP_MA = 20
# A block whose noise-corrected mean square is within CREEP_Z standard deviations of what noise
# alone gives (noise^2 * sqrt(2/n)) reads 0: no creep from a random excess of noise.
CREEP_Z = 6


class CalibrationError(ValueError):
    # Typed error so config validation can name the bad field; reason is the counted code.
    reason = "bad_calibration"

    def __init__(self, field, msg):
        super().__init__("calibration." + field + ": " + msg)
        self.field = field


def _num(cfg, key, lo, hi, default=None):
    v = cfg.get(key, default)
    if v is None:
        raise CalibrationError(key, "missing")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise CalibrationError(key, "not a number")
    if not (lo <= v <= hi):
        raise CalibrationError(key, "out of range [%s, %s]" % (lo, hi))
    return v


def amps_per_code(vref_mv, bits, burden_ohm, ct_turns, gain):
    # Amps at the primary per ADC code: code -> mV at the pin -> secondary A -> primary A.
    return vref_mv / 1000.0 / (1 << bits) / burden_ohm * ct_turns * gain


def setup(c, cfg):
    # Only what sampling, the tools and the tests read stays on the object (the 64 KB heap).
    if not isinstance(cfg, dict):
        raise CalibrationError("*", "calibration section must be an object")
    turns = _num(cfg, "ct_turns", 1, 100000)
    burden = _num(cfg, "burden_ohm", 0.1, 100000)
    bits = _num(cfg, "adc_bits", 8, 16)
    if not isinstance(bits, int):
        raise CalibrationError("adc_bits", "not an integer")
    vref = _num(cfg, "vref_mv", 500, 10000)
    volts = _num(cfg, "volts", 50, 500)
    pf = _num(cfg, "power_factor", 0.05, 1.0)
    c.rated_amps = _num(cfg, "rated_amps", 0.1, 1000)
    c.noise_rms_codes = _num(cfg, "noise_rms_codes", 0, 64, NOISE_RMS_CODES)
    c.creep_ma = _num(cfg, "creep_ma", 0, 10000, CREEP_MA)
    gain = _num(cfg, "gain", 0.5, 2.0, 1.0)
    full = (1 << bits) - 1
    mid = c.mid = 1 << (bits - 1)
    # A sample at either rail is "clipped": with x = code - mid, x*(x+1) reaches mid*(mid-1)
    # exactly at code 0 and at full scale (symmetric test, one add and one compare). A converter
    # that stops being linear before its rails (ESP32 at 11 dB: ~2.45 V of ~3.1 V) sets
    # linear_max_code: swings that far from mid-rail count as clipped too.
    lim = int(_num(cfg, "linear_max_code", mid + 1, full, full)) - mid
    c.clip_thr = lim * (lim + 1) if lim < mid - 1 else mid * (mid - 1)
    apc = c.amps_per_code = amps_per_code(vref, bits, burden, turns, gain)
    c.k_mw = int(volts * pf * apc * 1000.0 * (1 << (_KBITS - _FRAC)) + 0.5)
    c.noise_q = int(c.noise_rms_codes * c.noise_rms_codes * (1 << (2 * _FRAC)) + 0.5)
    creep_q = int(c.creep_ma / 1000.0 / apc * (1 << _FRAC) + 0.5)
    c.creep_ms_q = creep_q * creep_q
    # noise^2 * CREEP_Z * sqrt(2); sensing divides by sqrt(n) once per block length (thr_n, thr_q).
    c.noise_z_q = int(c.noise_q * CREEP_Z * 1.4142135623730951 + 0.5)
    c.thr_n = 0
    c.thr_q = 0
    # rms current at rated_amps in codes (tools check a reference load against it) and in
    # codes * 2**12 (a block above it counts as over-rated).
    c.rated_rms_codes = c.rated_amps / apc
    c.rated_q = int(c.rated_rms_codes * (1 << _FRAC) + 0.5)
