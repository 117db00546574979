# Boot-only half of sensing.Calibration: validation and the derived integer constants. Run once
# per Calibration, then unloaded (meter.drop). MicroPython and CPython.
_FRAC = 12   # sensing._FRAC: rms is kept as codes * 2**12
_KBITS = 24  # sensing._KBITS: power scale factor mW per code * 2**(_KBITS - _FRAC)


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
    c.noise_rms_codes = _num(cfg, "noise_rms_codes", 0, 64, 0)
    c.creep_ma = _num(cfg, "creep_ma", 0, 10000, 0)
    c.gain = _num(cfg, "gain", 0.5, 2.0, 1.0)
    # A sample at either rail is "clipped": with x = code - mid, x*(x+1) reaches mid*(mid-1)
    # exactly at code 0 and at full scale (symmetric test, one add and one compare). A converter
    # that stops being linear before its rails (ESP32 at 11 dB: ~2.45 V of ~3.1 V) sets
    # linear_max_code: swings that far from mid-rail count as clipped too.
    lim = int(_num(cfg, "linear_max_code", c.mid + 1, c.full_scale, c.full_scale)) - c.mid
    c.clip_thr = lim * (lim + 1) if lim < c.mid - 1 else c.mid * (c.mid - 1)
    # amps at the primary per ADC code: code -> mV at the pin -> secondary A -> primary A.
    c.amps_per_code = c.vref_mv / 1000.0 / (1 << bits) / c.burden_ohm * c.ct_turns * c.gain
    mw_per_code = c.volts * c.power_factor * c.amps_per_code * 1000.0
    c.k_mw = int(mw_per_code * (1 << (_KBITS - _FRAC)) + 0.5)
    c.noise_q = int(c.noise_rms_codes * c.noise_rms_codes * (1 << (2 * _FRAC)) + 0.5)
    c.creep_q = int(c.creep_ma / 1000.0 / c.amps_per_code * (1 << _FRAC) + 0.5)
    # Peak code swing at rated current for a pure sine; ctsim and tools check headroom with it.
    c.rated_rms_codes = c.rated_amps / c.amps_per_code
