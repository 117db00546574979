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


def amps_per_code(c):
    # Amps at the primary per ADC code: code -> mV at the pin -> secondary A -> primary A.
    return c.vref_mv / 1000.0 / (1 << c.adc_bits) / c.burden_ohm * c.ct_turns * c.gain


def setup(c, cfg):
    if not isinstance(cfg, dict):
        raise CalibrationError("*", "calibration section must be an object")
    c.ct_turns = _num(cfg, "ct_turns", 1, 100000)
    c.burden_ohm = _num(cfg, "burden_ohm", 0.1, 100000)
    bits = _num(cfg, "adc_bits", 8, 16)
    if not isinstance(bits, int):
        raise CalibrationError("adc_bits", "not an integer")
    c.adc_bits = bits
    c.full_scale = (1 << bits) - 1
    c.mid = 1 << (bits - 1)
    c.vref_mv = _num(cfg, "vref_mv", 500, 10000)
    c.volts = _num(cfg, "volts", 50, 500)
    c.power_factor = _num(cfg, "power_factor", 0.05, 1.0)
    c.rated_amps = _num(cfg, "rated_amps", 0.1, 1000)
    c.noise_rms_codes = _num(cfg, "noise_rms_codes", 0, 64, NOISE_RMS_CODES)
    c.creep_ma = _num(cfg, "creep_ma", 0, 10000, CREEP_MA)
    c.gain = _num(cfg, "gain", 0.5, 2.0, 1.0)
    # A sample at either rail is "clipped": with x = code - mid, x*(x+1) reaches mid*(mid-1)
    # exactly at code 0 and at full scale (symmetric test, one add and one compare). A converter
    # that stops being linear before its rails (ESP32 at 11 dB: ~2.45 V of ~3.1 V) sets
    # linear_max_code: swings that far from mid-rail count as clipped too.
    lim = int(_num(cfg, "linear_max_code", c.mid + 1, c.full_scale, c.full_scale)) - c.mid
    c.clip_thr = lim * (lim + 1) if lim < c.mid - 1 else c.mid * (c.mid - 1)
    c.amps_per_code = amps_per_code(c)
    mw_per_code = c.volts * c.power_factor * c.amps_per_code * 1000.0
    c.k_mw = int(mw_per_code * (1 << (_KBITS - _FRAC)) + 0.5)
    c.noise_q = int(c.noise_rms_codes * c.noise_rms_codes * (1 << (2 * _FRAC)) + 0.5)
    creep_q = int(c.creep_ma / 1000.0 / c.amps_per_code * (1 << _FRAC) + 0.5)
    c.creep_ms_q = creep_q * creep_q
    # noise^2 * CREEP_Z * sqrt(2); sensing divides by sqrt(n) once per block length (thr_n, thr_q).
    c.noise_z_q = int(c.noise_q * CREEP_Z * 1.4142135623730951 + 0.5)
    c.thr_n = 0
    c.thr_q = 0
    # rms current above rated_amps (codes * 2**12): the block counts as over-rated.
    c.rated_q = int(c.rated_amps / c.amps_per_code * (1 << _FRAC) + 0.5)
    # Peak code swing at rated current for a pure sine; ctsim and tools check headroom with it.
    c.rated_rms_codes = c.rated_amps / c.amps_per_code
