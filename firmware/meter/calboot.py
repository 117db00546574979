# Boot-only half of sensing.Calibration: validation and the derived integer constants. Run once
# per Calibration, then unloaded (meter.drop). MicroPython and CPython.
_FRAC = 12   # sensing._FRAC: rms is kept as codes * 2**12
_KBITS = 24  # sensing._KBITS: power scale factor mW per code * 2**(_KBITS - _FRAC)
# Defaults for a meter whose board was never measured (provisioning writes them too; one source),
# keyed by their config field (one dict: every module-level name is an interned string that stays
# in the heap after this module is unloaded; docs/FIRMWARE.md "Memory").
# noise_rms_codes: a deliberately high guess of the ADC noise floor (the reference design measures
# ~0.85 codes): over-estimating it hides small loads, under-estimating it bills an empty flat.
# `meterveil calibrate --zero` replaces it with the board's measured floor.
# creep_ma: starting current. IEC 62053-21 class 1 (direct connected) requires a meter to start
# at 0.004 Ib: 20 mA for Ib = 5 A, the smallest common basic current (docs/SENSING.md).
DEFAULTS = {"noise_rms_codes": 1.5, "creep_ma": 20}


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


def amps_per_code(vref_mv, adc_bits, burden_ohm, ct_turns, gain):
    # Amps at the primary per ADC code: code -> mV at the pin -> secondary A -> primary A.
    return vref_mv / 1000.0 / (1 << adc_bits) / burden_ohm * ct_turns * gain


def setup(cal, cfg):
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
    cal.rated_amps = _num(cfg, "rated_amps", 0.1, 1000)
    cal.noise_rms_codes = _num(cfg, "noise_rms_codes", 0, 64, DEFAULTS["noise_rms_codes"])
    cal.creep_ma = _num(cfg, "creep_ma", 0, 10000, DEFAULTS["creep_ma"])
    gain = _num(cfg, "gain", 0.5, 2.0, 1.0)
    full = (1 << bits) - 1
    mid = cal.mid = 1 << (bits - 1)
    # A sample at either rail is "clipped": with x = code - mid, x*(x+1) reaches mid*(mid-1)
    # exactly at code 0 and at full scale (symmetric test, one add and one compare). A converter
    # that stops being linear before its rails (ESP32 at 11 dB: ~2.45 V of ~3.1 V) sets
    # linear_max_code: swings that far from mid-rail count as clipped too.
    lim = int(_num(cfg, "linear_max_code", mid + 1, full, full)) - mid
    cal.clip_thr = lim * (lim + 1) if lim < mid - 1 else mid * (mid - 1)
    apc = cal.amps_per_code = amps_per_code(vref, bits, burden, turns, gain)
    cal.k_mw = int(volts * pf * apc * 1000.0 * (1 << (_KBITS - _FRAC)) + 0.5)
    cal.noise_q = int(cal.noise_rms_codes * cal.noise_rms_codes * (1 << (2 * _FRAC)) + 0.5)
    creep_q = int(cal.creep_ma / 1000.0 / apc * (1 << _FRAC) + 0.5)
    cal.creep_ms_q = creep_q * creep_q
    # rms current at rated_amps in codes * 2**12: a block above it counts as over-rated (tools
    # check a reference load against it too).
    cal.rated_q = int(cal.rated_amps / apc * (1 << _FRAC) + 0.5)
