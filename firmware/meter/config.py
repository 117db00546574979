# Meter configuration: load config.json, fill defaults, validate every field and name each bad
# one. Provisioning runs this same code on the unix port (main.py --check), so the meter and the
# tool can never disagree about what a valid config is. Runs on MicroPython and CPython.
import binascii
import json

try:  # imported while the heap is still unfragmented (frame.py may compile from source here)
    from protocol import frame
except ImportError:  # CPython tools and tests import this module with only firmware/ on the path
    from meterveil.protocol import frame
try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

from meter.mqtt import parse_url

# Why the tables below are text: on a meter every identifier and every short string literal of a
# loaded module stays interned (a qstr in RAM) after the module is unloaded, and the fifth qstr
# pool ends at 620 names (docs/FIRMWARE.md "Memory"). Field names parsed or split from one long
# string at run time are ordinary strings that go away with the parsed config.

# Optional sections and their defaults (applied before validation), as they appear in config.json.
_DEFAULTS = const("""{"interval_s": 900, "status_every": 4,
 "broker": {"username": null, "password": null, "ca_der_path": null, "keepalive_s": 60,
            "backoff_min_ms": 500, "backoff_max_ms": 60000, "ack_timeout_ms": 10000,
            "inflight": 4, "client_id": null},
 "outbox": {"segment_bytes": 16384, "max_bytes": 524288},
 "wifi": {"ssid": null, "password": null},
 "board": {"adc_pin": null, "adc_width": null},
 "sim": {"profile": null, "speed": 1, "mains_hz": 50, "mode": "sparse", "seed": 1,
         "start_time": null, "block_s": 1, "fs_hz": null, "period_s": 0, "adc": null},
 "run": {"intervals": 0, "drain_timeout_s": 0, "truth": true}}""")
# board: null adc_pin/adc_width mean the chip's default (hal_board.CHIPS).

# One line per checked field: section ("-" the top level), field, type (i integer, n number, s string
# or null, h hex digits: low and high count digits), low, high, and when it is checked: always, or "present" (only when in the section) or
# "set" (only when not null). Unknown fields are refused per section: a section's fields are its
# defaults plus the ones named here.
_RANGES = const("""
dp epsilon_milli i 1 65535
dp clamp_wh i 1 1000000
dp m i 1 65535
dp noise_var i 1 281474976710656 present
calibration ct_turns i 1 100000
calibration burden_ohm n 0.1 100000
calibration adc_bits i 8 16
calibration vref_mv n 500 10000
calibration volts n 50 500
calibration power_factor n 0.05 1.0
calibration rated_amps n 0.1 1000
calibration noise_rms_codes n 0 64 present
calibration creep_ma n 0 10000 present
calibration gain n 0.5 2.0 present
calibration linear_max_code i 1 65535 present
broker username s
broker password s
broker ca_der_path s
broker client_id s
broker keepalive_s i 5 65535
broker backoff_min_ms i 10 3600000
broker backoff_max_ms i 10 3600000
broker ack_timeout_ms i 100 600000
broker inflight i 1 32
broker url s
outbox segment_bytes i 256 1048576
outbox max_bytes i 1024 67108864
wifi ssid s
wifi password s
board adc_pin i 0 48 set
board adc_width i 9 13 set
- interval_s i 60 86400
- status_every i 1 10000
sim seed i 0 2147483647
sim start_time i 946684800 4294880895 set
sim block_s i 1 3600
sim period_s i 0 2147483
sim fs_hz i 500 50000 set
sim speed n 0.001 10000000
run intervals i 0 2147483647
run drain_timeout_s n 0 1e9
e2e n h 256 768
e2e hs h 1 1536
e2e household_key h 64 64
e2e exp_bits i 224 4096
e2e step_ms i 1 100 present
""")
# Top-level fields (besides the sections above); the first six are required.
_TOP = const("meter_id master_key feeder dp calibration broker interval_s status_every outbox wifi board sim run e2e")
# CONNECT must fit the 384-byte MQTT buffer with the will (a 120-byte status frame on a topic of up
# to 36 bytes) and the fixed parts: what is left for client id + username + password.
_CREDS_MAX = const(200)


class ConfigError(ValueError):
    # errors: list of (field, message); the message names every bad field.
    reason = "bad_config"

    def __init__(self, errors):
        self.errors = errors
        super().__init__("; ".join(f + ": " + m for f, m in errors))


def with_defaults(cfg):
    out = dict(cfg)
    for k, v in json.loads(_DEFAULTS).items():
        if isinstance(v, dict):
            sec = out.get(k)
            if sec is None:
                sec = {}
            if isinstance(sec, dict):
                v.update(sec)
                out[k] = v
        elif k not in out:
            out[k] = v
    return out


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _check(errs, d, key, name, kind, lo=None, hi=None):
    # One field of the _RANGES table: kind "i" integer, "n" number, "s" string or null, "h" hex.
    v = d.get(key)
    if kind == "s":
        if v is not None and not isinstance(v, str):
            errs.append((name, "must be a string or null"))
    elif kind == "h":
        ok = isinstance(v, str) and lo <= len(v) <= hi
        if ok:
            try:
                int(v, 16)
            except ValueError:
                ok = False
        if not ok:
            errs.append((name, "must be %d-%d hex digits" % (lo, hi)))
    elif not (_is_int(v) or (kind == "n" and isinstance(v, float))):
        errs.append((name, "must be %s, got %r" % ("an integer" if kind == "i" else "a number", v)))
    elif v < lo or v > hi:
        errs.append((name, "must be in [%s, %s], got %s" % (lo, hi, v)))


def valid_meter_id(s):
    # The protocol's rule (the id is also the MQTT username and topic segment).
    return isinstance(s, str) and frame.valid_meter_id(s)


def validate(cfg, board=False):
    # Returns a list of (field, message); empty means valid. `cfg` should have defaults applied.
    if not isinstance(cfg, dict):
        return [("*", "config must be a JSON object")]
    top = _TOP.split()
    errs = [(k, "missing") for k in top[:6] if k not in cfg]
    known = {}  # section -> its fields
    for k, v in json.loads(_DEFAULTS).items():
        if isinstance(v, dict):
            known[k] = list(v)
    for line in _RANGES.split("\n"):
        row = line.split()
        if row:
            known.setdefault(row[0], []).append(row[1])
    for k in top[3:]:
        if k in cfg and k in known and not isinstance(cfg[k], dict):
            errs.append((k, "must be an object"))
    for k in list(cfg) + ["-"]:  # "-": the top level
        d = cfg if k == "-" else cfg.get(k)
        if isinstance(d, dict) and (k == "-" or k in known):
            for f in d:
                if f not in (top if k == "-" else known[k]) and not f.startswith("_"):  # "_comment" keys are allowed
                    errs.append(((f if k == "-" else k + "." + f), "unknown field"))
    if "meter_id" in cfg and not valid_meter_id(cfg["meter_id"]):
        errs.append(("meter_id", "must be 1-16 chars of A-Za-z0-9_-"))
    if "master_key" in cfg:
        v = cfg["master_key"]
        ok = isinstance(v, str) and len(v) == 64
        if ok:
            try:  # not a loop over the characters: on MicroPython each one would be interned
                binascii.unhexlify(v)
            except ValueError:
                ok = False
        if not ok:
            errs.append(("master_key", "must be 64 hex digits (32 bytes)"))
    if "feeder" in cfg and (not isinstance(cfg["feeder"], str) or not cfg["feeder"]):
        errs.append(("feeder", "must be a non-empty string"))
    sim_checked = isinstance(cfg.get("sim"), dict) and not board
    for line in _RANGES.split("\n"):
        row = line.split()
        if not row:
            continue
        d = cfg if row[0] == "-" else cfg.get(row[0])
        if not isinstance(d, dict) or (row[0] == "sim" and not sim_checked):
            continue
        if (row[-1] == "present" and row[1] not in d) or (row[-1] == "set" and d.get(row[1]) is None):
            continue
        name = row[1] if row[0] == "-" else row[0] + "." + row[1]
        if row[2] != "s":
            _check(errs, d, row[1], name, row[2], json.loads(row[3]), json.loads(row[4]))
        elif row[1] != "url":  # broker.url: parse_url, below
            _check(errs, d, row[1], name, "s")
    _cross(errs, cfg, board)
    return errs


def _cross(errs, cfg, board):
    # Checks that involve more than one field, or values the tables cannot say.
    dp = cfg.get("dp")
    if isinstance(dp, dict):
        try:  # noise scale clamp/epsilon: noisy values must fit the frame
            if dp["clamp_wh"] * 1000 // dp["epsilon_milli"] > 1000000:
                errs.append(("dp.clamp_wh", "clamp_wh/epsilon must be <= 1e6 Wh"))
        except Exception:  # noqa: BLE001 - bad types/zero are reported by the table
            pass
    br = cfg.get("broker")
    if isinstance(br, dict):
        if parse_url(br.get("url")) is None:
            errs.append(("broker.url", "must be mqtt://host:port or mqtts://host:port, got "
                         + repr(br.get("url"))))
        if (br.get("password") is not None) and br.get("username") is None:
            errs.append(("broker.password", "given without broker.username"))
        # client id defaults to the meter id
        n = len(str(br.get("username") or "") + str(br.get("password") or "")
                + str(br.get("client_id") or cfg.get("meter_id") or ""))
        if n > _CREDS_MAX:
            errs.append(("broker.username", "username+password+client_id over %d bytes" % _CREDS_MAX))
        if _is_int(br.get("backoff_min_ms")) and _is_int(br.get("backoff_max_ms")) \
                and br["backoff_max_ms"] < br["backoff_min_ms"]:
            errs.append(("broker.backoff_max_ms", "must be >= broker.backoff_min_ms"))
    iv = cfg.get("interval_s")
    if _is_int(iv) and iv > 0 and 86400 % iv:
        errs.append(("interval_s", "must divide a day (86400 s) so intervals align to midnight"))
    ob = cfg.get("outbox")
    if isinstance(ob, dict) and _is_int(ob.get("segment_bytes")) and _is_int(ob.get("max_bytes")) \
            and ob["max_bytes"] < 2 * ob["segment_bytes"]:
        errs.append(("outbox.max_bytes", "must be at least two segments"))
    if board and isinstance(cfg.get("wifi"), dict) and not cfg["wifi"].get("ssid"):
        errs.append(("wifi.ssid", "required on a board"))
    sim = cfg.get("sim")
    if isinstance(sim, dict) and not board:
        if not isinstance(sim.get("profile"), str) or not sim["profile"]:
            errs.append(("sim.profile", "required on the unix port: path of a seconds,watts CSV"))
        if sim.get("mains_hz") not in (50, 60):
            errs.append(("sim.mains_hz", "must be 50 or 60"))
        if sim.get("mode") not in ("dense", "sparse"):
            errs.append(("sim.mode", "must be dense or sparse"))
        if sim.get("adc") is not None and not isinstance(sim["adc"], dict):
            errs.append(("sim.adc", "must be an object of SimADC options or null"))
        if _is_int(sim.get("block_s")) and _is_int(iv) and iv % sim["block_s"]:
            errs.append(("sim.block_s", "must divide interval_s"))


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
