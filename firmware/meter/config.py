# Meter configuration: load config.json, fill defaults, validate every field and name each bad
# one. Provisioning runs this same code on the unix port (main.py --check), so the meter and the
# tool can never disagree about what a valid config is. Runs on MicroPython and CPython.
import json

try:  # imported while the heap is still unfragmented (frame.py may compile from source here)
    from protocol.frame import valid_meter_id as _valid_id
except ImportError:  # CPython tools and tests import this module with only firmware/ on the path
    from meterveil.protocol.frame import valid_meter_id as _valid_id

from meter.mqtt import parse_url

INTERVALS_PER_DAY_MAX = 1440  # interval_s >= 60


class ConfigError(ValueError):
    # errors: list of (field, message); the message names every bad field.
    reason = "bad_config"

    def __init__(self, errors):
        self.errors = errors
        super().__init__("; ".join(f + ": " + m for f, m in errors))


# Optional sections and their defaults (applied before validation).
DEFAULTS = {
    "interval_s": 900,
    "status_every": 4,
    "broker": {"username": None, "password": None, "ca_der_path": None, "keepalive_s": 60,
               "backoff_min_ms": 500, "backoff_max_ms": 60000, "ack_timeout_ms": 10000,
               "inflight": 4, "client_id": None},
    "outbox": {"segment_bytes": 16384, "max_bytes": 524288},
    "wifi": {"ssid": None, "password": None},
    "board": {"adc_pin": None, "adc_width": None},  # None: the chip's default (hal_board.CHIPS)
    "sim": {"profile": None, "speed": 1, "mains_hz": 50, "mode": "sparse", "seed": 1,
            "start_time": None, "block_s": 1, "fs_hz": None, "period_s": 0, "adc": None},
    "run": {"intervals": 0, "drain_timeout_s": 0, "truth": True},
}
REQUIRED = ("meter_id", "master_key", "feeder", "dp", "calibration", "broker")
# CONNECT must fit the 384-byte MQTT buffer with the will (a 120-byte status frame on a topic of up
# to 36 bytes) and the fixed parts: what is left for client id + username + password.
_CREDS_MAX = 200
CALIBRATION_KEYS = ("ct_turns", "burden_ohm", "adc_bits", "vref_mv", "volts", "power_factor",
                    "rated_amps")
CALIBRATION_OPTIONAL = ("noise_rms_codes", "creep_ma", "gain", "linear_max_code")
KNOWN = {
    "": REQUIRED + ("interval_s", "status_every", "outbox", "wifi", "board", "sim", "run", "e2e"),
    "dp": ("epsilon_milli", "clamp_wh", "m", "noise_var"),
    "calibration": CALIBRATION_KEYS + CALIBRATION_OPTIONAL,
    "broker": ("url",) + tuple(DEFAULTS["broker"]),
    "outbox": tuple(DEFAULTS["outbox"]),
    "wifi": tuple(DEFAULTS["wifi"]),
    "board": tuple(DEFAULTS["board"]),
    "sim": tuple(DEFAULTS["sim"]),
    "run": tuple(DEFAULTS["run"]),
}


def with_defaults(cfg):
    out = {}
    for k, v in cfg.items():
        out[k] = v
    for k, v in DEFAULTS.items():
        if isinstance(v, dict):
            sec = out.get(k)
            if sec is None:
                sec = {}
            if isinstance(sec, dict):
                merged = dict(v)
                for sk, sv in sec.items():
                    merged[sk] = sv
                out[k] = merged
        elif k not in out:
            out[k] = v
    return out


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return (isinstance(v, int) or isinstance(v, float)) and not isinstance(v, bool)


def _int(errs, sec, key, name, lo, hi):
    v = sec.get(key)
    if not _is_int(v):
        errs.append((name, "must be an integer, got " + repr(v)))
    elif v < lo or v > hi:
        errs.append((name, "must be in [%d, %d], got %d" % (lo, hi, v)))


def _num(errs, sec, key, name, lo, hi):
    v = sec.get(key)
    if not _is_num(v):
        errs.append((name, "must be a number, got " + repr(v)))
    elif v < lo or v > hi:
        errs.append((name, "must be in [%s, %s], got %s" % (lo, hi, v)))


def _opt_str(errs, sec, key, name):
    v = sec.get(key)
    if v is not None and not isinstance(v, str):
        errs.append((name, "must be a string or null"))


def valid_meter_id(s):
    # The protocol's rule (the id is also the MQTT username and topic segment).
    return isinstance(s, str) and _valid_id(s)


def _unknown(errs, cfg):
    for sec, keys in KNOWN.items():
        d = cfg if sec == "" else cfg.get(sec)
        if not isinstance(d, dict):
            continue
        for k in d:
            if k not in keys and not k.startswith("_"):  # "_comment" keys are allowed
                errs.append(((sec + "." if sec else "") + k, "unknown field"))


def validate(cfg, board=False):
    # Returns a list of (field, message); empty means valid. `cfg` should have defaults applied.
    errs = []
    if not isinstance(cfg, dict):
        return [("*", "config must be a JSON object")]
    for k in REQUIRED:
        if k not in cfg:
            errs.append((k, "missing"))
    _unknown(errs, cfg)
    if "meter_id" in cfg and not valid_meter_id(cfg["meter_id"]):
        errs.append(("meter_id", "must be 1-16 chars of A-Za-z0-9_-"))
    mk = cfg.get("master_key")
    if "master_key" in cfg:
        ok = isinstance(mk, str) and len(mk) == 64
        if ok:
            for c in mk:
                if c not in "0123456789abcdefABCDEF":
                    ok = False
        if not ok:
            errs.append(("master_key", "must be 64 hex digits (32 bytes)"))
    if "feeder" in cfg and (not isinstance(cfg["feeder"], str) or not cfg["feeder"]):
        errs.append(("feeder", "must be a non-empty string"))
    for name in ("dp", "calibration", "broker", "outbox", "wifi", "board", "sim", "run"):
        if name in cfg and not isinstance(cfg[name], dict):
            errs.append((name, "must be an object"))
    dp = cfg.get("dp")
    if isinstance(dp, dict):
        _int(errs, dp, "epsilon_milli", "dp.epsilon_milli", 1, 65535)
        _int(errs, dp, "clamp_wh", "dp.clamp_wh", 1, 1000000)
        _int(errs, dp, "m", "dp.m", 1, 65535)
        if "noise_var" in dp:  # share variance from provisioning (else a conservative fallback)
            _int(errs, dp, "noise_var", "dp.noise_var", 1, 1 << 48)
        try:  # noise scale clamp/epsilon: noisy values must fit the frame
            if dp["clamp_wh"] * 1000 // dp["epsilon_milli"] > 1000000:
                errs.append(("dp.clamp_wh", "clamp_wh/epsilon must be <= 1e6 Wh"))
        except Exception:  # noqa: BLE001 - bad types/zero are reported above
            pass
    cal = cfg.get("calibration")
    if isinstance(cal, dict):
        _int(errs, cal, "ct_turns", "calibration.ct_turns", 1, 100000)
        _num(errs, cal, "burden_ohm", "calibration.burden_ohm", 0.1, 100000)
        _int(errs, cal, "adc_bits", "calibration.adc_bits", 8, 16)
        _num(errs, cal, "vref_mv", "calibration.vref_mv", 500, 10000)
        _num(errs, cal, "volts", "calibration.volts", 50, 500)
        _num(errs, cal, "power_factor", "calibration.power_factor", 0.05, 1.0)
        _num(errs, cal, "rated_amps", "calibration.rated_amps", 0.1, 1000)
        for k, hi in (("noise_rms_codes", 64), ("creep_ma", 10000)):
            if k in cal:
                _num(errs, cal, k, "calibration." + k, 0, hi)
        if "gain" in cal:
            _num(errs, cal, "gain", "calibration.gain", 0.5, 2.0)
        if "linear_max_code" in cal:
            _int(errs, cal, "linear_max_code", "calibration.linear_max_code", 1, 65535)
    _broker(errs, cfg)
    ob = cfg.get("outbox")
    if isinstance(ob, dict):
        _int(errs, ob, "segment_bytes", "outbox.segment_bytes", 256, 1 << 20)
        _int(errs, ob, "max_bytes", "outbox.max_bytes", 1024, 1 << 26)
        if _is_int(ob.get("segment_bytes")) and _is_int(ob.get("max_bytes")) \
                and ob["max_bytes"] < 2 * ob["segment_bytes"]:
            errs.append(("outbox.max_bytes", "must be at least two segments"))
    wifi = cfg.get("wifi")
    if isinstance(wifi, dict):
        _opt_str(errs, wifi, "ssid", "wifi.ssid")
        _opt_str(errs, wifi, "password", "wifi.password")
        if board and not wifi.get("ssid"):
            errs.append(("wifi.ssid", "required on a board"))
    _board(errs, cfg)
    _sim(errs, cfg, board)
    if "e2e" in cfg:  # its checks live with the mode (meter/e2e.py): a proxy meter never loads them
        from meter.e2e import validate as check_e2e  # a name already interned: no new qstr
        check_e2e(errs, cfg["e2e"], _int)
    return errs


def _board(errs, cfg):
    # Types here; whether the chip has that ADC pin or width is checked on the board at boot
    # (hal_board.adc_settings), where the chip is known.
    b = cfg.get("board")
    if isinstance(b, dict):
        if b.get("adc_pin") is not None:
            _int(errs, b, "adc_pin", "board.adc_pin", 0, 48)
        if b.get("adc_width") is not None:
            _int(errs, b, "adc_width", "board.adc_width", 9, 13)


# Sections in their own functions: compiling one big function from source needs one big block
# of heap, and config.py must compile on a 64 KB board (provisioning checks, HIL).
def _broker(errs, cfg):
    br = cfg.get("broker")
    if isinstance(br, dict):
        if parse_url(br.get("url")) is None:
            errs.append(("broker.url", "must be mqtt://host:port or mqtts://host:port, got "
                         + repr(br.get("url"))))
        for k in ("username", "password", "ca_der_path", "client_id"):
            _opt_str(errs, br, k, "broker." + k)
        if (br.get("password") is not None) and br.get("username") is None:
            errs.append(("broker.password", "given without broker.username"))
        # client id defaults to the meter id
        n = len(str(br.get("username") or "") + str(br.get("password") or "")
                + str(br.get("client_id") or cfg.get("meter_id") or ""))
        if n > _CREDS_MAX:
            errs.append(("broker.username", "username+password+client_id over %d bytes" % _CREDS_MAX))
        _int(errs, br, "keepalive_s", "broker.keepalive_s", 5, 65535)
        _int(errs, br, "backoff_min_ms", "broker.backoff_min_ms", 10, 3600000)
        _int(errs, br, "backoff_max_ms", "broker.backoff_max_ms", 10, 3600000)
        _int(errs, br, "ack_timeout_ms", "broker.ack_timeout_ms", 100, 600000)
        _int(errs, br, "inflight", "broker.inflight", 1, 32)
        if _is_int(br.get("backoff_min_ms")) and _is_int(br.get("backoff_max_ms")) \
                and br["backoff_max_ms"] < br["backoff_min_ms"]:
            errs.append(("broker.backoff_max_ms", "must be >= broker.backoff_min_ms"))
    if "interval_s" in cfg:
        _int(errs, cfg, "interval_s", "interval_s", 60, 86400)
        iv = cfg["interval_s"]
        if _is_int(iv) and iv > 0 and 86400 % iv:
            errs.append(("interval_s", "must divide a day (86400 s) so intervals align to midnight"))
    if "status_every" in cfg:
        _int(errs, cfg, "status_every", "status_every", 1, 10000)


def _sim(errs, cfg, board):
    sim = cfg.get("sim")
    if isinstance(sim, dict) and not board:
        if not isinstance(sim.get("profile"), str) or not sim["profile"]:
            errs.append(("sim.profile", "required on the unix port: path of a seconds,watts CSV"))
        _num(errs, sim, "speed", "sim.speed", 0.001, 10000000)
        if sim.get("mains_hz") not in (50, 60):
            errs.append(("sim.mains_hz", "must be 50 or 60"))
        if sim.get("mode") not in ("dense", "sparse"):
            errs.append(("sim.mode", "must be dense or sparse"))
        _int(errs, sim, "seed", "sim.seed", 0, 0x7FFFFFFF)
        if sim.get("start_time") is not None:
            _int(errs, sim, "start_time", "sim.start_time", 946684800, 0xFFFFFFFF - 86400)
        _int(errs, sim, "block_s", "sim.block_s", 1, 3600)
        _int(errs, sim, "period_s", "sim.period_s", 0, 0x7FFFFFFF // 1000)
        if sim.get("adc") is not None and not isinstance(sim["adc"], dict):
            errs.append(("sim.adc", "must be an object of SimADC options or null"))
        if sim.get("fs_hz") is not None:
            _int(errs, sim, "fs_hz", "sim.fs_hz", 500, 50000)
        if _is_int(sim.get("block_s")) and _is_int(cfg.get("interval_s")) \
                and cfg["interval_s"] % sim["block_s"]:
            errs.append(("sim.block_s", "must divide interval_s"))
    run = cfg.get("run")
    if isinstance(run, dict):
        _int(errs, run, "intervals", "run.intervals", 0, 0x7FFFFFFF)
        _num(errs, run, "drain_timeout_s", "run.drain_timeout_s", 0, 1e9)


def _exists(path):
    try:
        import os
        os.stat(path)
        return True
    except OSError:
        return False


def resolve(base_dir, path):
    # Relative paths in a config are relative to the config file's folder.
    if path is None or path.startswith("/") or not base_dir:
        return path
    return base_dir + "/" + path


def load(path, board=False):
    # Parse, default, validate, check referenced files; raises ConfigError naming every bad field.
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError([("*", "cannot read %s: %s" % (path, e))])
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ConfigError([("*", "not valid JSON: %s" % e)])
    if not isinstance(raw, dict):
        raise ConfigError([("*", "config must be a JSON object")])
    cfg = with_defaults(raw)
    errs = validate(cfg, board)
    base = path.rsplit("/", 1)[0] if "/" in path else ""
    br = cfg.get("broker")
    if isinstance(br, dict) and isinstance(br.get("ca_der_path"), str):
        br["ca_der_path"] = resolve(base, br["ca_der_path"])
        if not _exists(br["ca_der_path"]):
            errs.append(("broker.ca_der_path", "file not found: " + br["ca_der_path"]))
    sim = cfg.get("sim")
    if not board and isinstance(sim, dict) and isinstance(sim.get("profile"), str):
        sim["profile"] = resolve(base, sim["profile"])
        if not _exists(sim["profile"]):
            errs.append(("sim.profile", "file not found: " + sim["profile"]))
    if errs:
        raise ConfigError(errs)
    return cfg
