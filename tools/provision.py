"""`meterveil provision`: give a meter its identity: master key, registry entry, broker login, config.

Why one command: the four must agree (the gateway opens frames with the registry key, the broker
admits the meter by its password and ACL, the meter has all of it in config.json); done by hand
they drift, and keys end up in chat logs. Order: validate everything (incl. the config with the
firmware's own check) before touching any store; then registry -> broker password + ACL -> config.

Key rotation (--rotate-key) replaces the master key and the broker password, keeps the old key as
the registry's previous_key (frames still in the meter's outbox open), and appends a line without
key material to DIR/rotation.log. For an end-to-end meter the gateway's key file gets only the MAC and
status-frame keys the master derives (host/gateway/meter_keys.py); the master stays in the meter's config
(flashed to the meter, and the workspace's copy under meters/<id>/, which must not live on the gateway's host).

Household attributes (--attr home_type=flat --attr occupants=3 --attr tariff_type=tou
--attr region=north, or the same columns in a batch CSV) go into the registry entry's attributes;
`meterveil export households` reads them as the quasi-identifiers of its anonymised tables. Only
the keys and values the export's generalisation hierarchies know are accepted (ATTRIBUTE_KEYS).
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from meterveil.host.backoffice.dp import share_variance
from meterveil.host.common.pubkey import KeyFileError, ensure_e2e
from meterveil.host.common.registry import METER_ID_RE, MODE_E2E, MODE_PROXY, MODES, REGISTRY_NAME
from meterveil.host.gateway.meter_keys import MASTER_KEY_BYTES, E2EKeys, KeyedRegistry, Secret
from meterveil.host.household.card import HouseholdCard, new_key, write_card

from . import meter_config, mqtt_auth
from .device import Step, check_port, maintenance_steps, mpremote, restart_steps, run_step
from .fileio import ToolError, write_secret
from .flash import HASH, PROBE
from .workspace import Workspace


@dataclass(frozen=True)
class MeterSpec:
    """What an operator chooses per meter (one CSV row in batch mode)."""

    meter_id: str
    feeder: str
    epsilon_milli: int = 1000
    clamp_wh: int = 1000
    m: int = 10
    interval_s: int = 900
    wifi_ssid: str | None = None
    wifi_password: str | None = field(default=None, repr=False)
    volts: float = 230.0
    rated_amps: float = 30.0
    sim_profile: str | None = None
    sim_speed: float = 1.0
    sim_start: int | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)  # household attributes (ATTRIBUTE_KEYS)
    mode: str = MODE_PROXY  # e2e: the meter encrypts for the utility and seals a copy for the household


SPEC_FIELDS = {f.name: f for f in fields(MeterSpec) if f.name != "attributes"}
INT_FIELDS = {"epsilon_milli", "clamp_wh", "m", "interval_s", "sim_start"}
FLOAT_FIELDS = {"volts", "rated_amps", "sim_speed"}
# Household attributes the export uses as quasi-identifiers (host/anonymize.py QUASI_IDENTIFIERS).
ATTRIBUTE_KEYS = ("home_type", "occupants", "tariff_type", "region")


def check_attribute(key: str, value: Any) -> Any:
    """Normalised value of one household attribute (occupants -> int, names -> lower case), or ToolError.

    Why a closed set: the export generalises these values by fixed hierarchies (flat / house,
    north+central / south+coast, ...); an unknown value would land in "other" and stand out.
    """
    from meterveil.host.backoffice.anonymize import ATTRIBUTE_VALUES, OCCUPANTS_RANGE

    if key not in ATTRIBUTE_KEYS:
        raise ToolError(f"unknown attribute {key!r}: allowed {', '.join(ATTRIBUTE_KEYS)}")
    text = str(value).strip()
    if key == "occupants":
        lo, hi = OCCUPANTS_RANGE
        try:
            n = int(text)
        except ValueError:
            raise ToolError(f"occupants={text!r}: must be a whole number {lo}-{hi}") from None
        if not lo <= n <= hi:
            raise ToolError(f"occupants={n}: must be {lo}-{hi}")
        return n
    allowed = ATTRIBUTE_VALUES[key]
    if text.lower() not in allowed:
        raise ToolError(f"{key}={text!r}: must be one of {', '.join(allowed)}")
    return text.lower()


def parse_attr_options(pairs: Iterable[str]) -> dict[str, Any]:
    """--attr KEY=VALUE options (repeatable) -> normalised attributes; a key given twice is an error."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise ToolError(f"--attr {pair!r}: expected KEY=VALUE, e.g. --attr home_type=flat "
                            f"(keys: {', '.join(ATTRIBUTE_KEYS)})")
        if key in out:
            raise ToolError(f"--attr {key} given twice")
        out[key] = check_attribute(key, value)
    return out


@dataclass(frozen=True)
class Provisioned:
    meter_id: str
    config: Path
    rotated: bool
    end_to_end: bool = False


def key_id(key: Secret) -> str:
    """A public fingerprint for logs: never the key, never a prefix of it (an E2E meter's key as the
    gateway keeps it: its MAC key stands for it)."""
    return hashlib.sha256(b"meterveil key id" + (key.mac_key if isinstance(key, E2EKeys) else key)).hexdigest()[:16]


def check_spec(spec: MeterSpec) -> None:
    if not METER_ID_RE.match(spec.meter_id):
        raise ToolError(f"meter id {spec.meter_id!r}: use 1-16 characters of A-Z a-z 0-9 _ - "
                        f"(it is also the MQTT user name)")
    if not spec.feeder:
        raise ToolError(f"{spec.meter_id}: --feeder is required")
    if spec.mode not in MODES:
        raise ToolError(f"{spec.meter_id}: mode must be one of {', '.join(MODES)}, got {spec.mode!r}")
    if spec.m < 1 or spec.epsilon_milli < 1 or spec.clamp_wh < 1:
        raise ToolError(f"{spec.meter_id}: --epsilon-milli, --clamp-wh and --m must be positive")
    if spec.sim_profile is not None and not Path(spec.sim_profile).is_file():
        raise ToolError(f"{spec.meter_id}: --sim-profile {spec.sim_profile} not found (a seconds,watts CSV)")
    for key, value in spec.attributes.items():
        try:
            check_attribute(key, value)
        except ToolError as e:
            raise ToolError(f"{spec.meter_id}: {e}") from None


def _broker_url(ws: Workspace, override: str | None) -> tuple[str, bool]:
    info = ws.load_broker_info()
    if override:
        return override, override.startswith("mqtts://")
    return f"mqtts://{info['host']}:{info['port']}", True


def open_registry(ws: Workspace, registry: Path | None) -> KeyedRegistry:
    """The shared registry (metadata) together with the gateway's meter keys: provisioning writes both."""
    path = Path(registry or ws.registry)
    if path.is_dir():
        path = path / REGISTRY_NAME
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    ws.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        return KeyedRegistry.load(ws.keys_dir, path)
    except (KeyFileError, ValueError) as e:
        raise ToolError(f"cannot read the meter registry: {e}") from None


def _dp_section(spec: MeterSpec) -> dict[str, int]:
    """The meter's DP parameters and the share variance calibrated for them (host/backoffice/dp.py);
    an interval that does not divide a day is left to the firmware's validation to report."""
    dp = {"epsilon_milli": spec.epsilon_milli, "clamp_wh": spec.clamp_wh, "m": spec.m}
    if spec.interval_s > 0 and 86400 % spec.interval_s == 0:
        dp["noise_var"] = share_variance(spec.epsilon_milli / 1000, spec.clamp_wh, spec.m, spec.interval_s)
    return dp


def _sim_section(spec: MeterSpec) -> dict[str, Any] | None:
    if spec.sim_profile is None:
        return None
    sim: dict[str, Any] = {"profile": str(Path(spec.sim_profile).resolve()), "speed": spec.sim_speed,
                           "mains_hz": 50, "mode": "sparse", "block_s": 60, "seed": 1}
    if spec.sim_start is not None:
        sim["start_time"] = spec.sim_start
    return sim


def _write_config(ws: Workspace, spec: MeterSpec, cfg: dict[str, Any]) -> Path:
    """Validate in a staging dir with the firmware, then move into DIR/meters/<id>/."""
    final_dir = ws.meter_dir(spec.meter_id)
    stage = final_dir.with_name(f".{spec.meter_id}.staging")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True, mode=0o700)
    try:
        if cfg["broker"]["ca_der_path"]:
            shutil.copyfile(ws.pki.ca_der, stage / meter_config.CA_NAME)
        write_secret(stage / "config.json", meter_config.dumps(cfg))
        meter_config.validate_file(stage / "config.json", board=spec.sim_profile is None,
                                   label=spec.meter_id)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return stage


def _commit_config(ws: Workspace, meter_id: str, stage: Path) -> Path:
    final_dir = ws.meter_dir(meter_id)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    stage.rename(final_dir)
    return final_dir / "config.json"


def _log_rotation(ws: Workspace, meter_id: str, old: Secret, new: Secret) -> None:
    entry = {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "meter_id": meter_id,
             "old_key_id": key_id(old), "new_key_id": key_id(new), "broker_password": "rotated",
             "by": getpass.getuser()}
    ws.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(ws.rotation_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")


def _outside(ws: Workspace, path: Path, what: str) -> Path:
    p = Path(path).resolve()
    root = ws.root.resolve()
    if p == root or root in p.parents:
        raise ToolError(f"{what} {path} is inside the utility's workspace: the household key must not stay "
                        f"with the utility; choose a folder outside {ws.root}")
    return p


def e2e_outputs(ws: Workspace, card_dir: Path | None, meter_out: Path | None) -> tuple[Path, Path]:
    """Where an end-to-end meter's household card and complete config go: given, and outside the workspace."""
    if card_dir is None or meter_out is None:
        raise ToolError("an end-to-end meter needs --card-dir (the household card) and --meter-out (the "
                        "complete config for the meter), both outside the workspace")
    return _outside(ws, card_dir, "--card-dir"), _outside(ws, meter_out, "--meter-out")


def _redact_household_key(config: Path, fingerprint: str) -> None:
    """The workspace's copy of an E2E meter's config keeps no household key (only its fingerprint)."""
    cfg = json.loads(config.read_text())
    cfg["e2e"].pop("household_key")
    cfg["e2e"]["_household_key"] = (f"on the household card and in the meter only (fingerprint {fingerprint}); "
                                    f"re-provisioning issues a new card")
    write_secret(config, meter_config.dumps(cfg), overwrite=True)


def provision_one(workspace: Path, spec: MeterSpec, *, broker_url: str | None = None,
                  registry: Path | None = None, rotate_key: bool = False, card_dir: Path | None = None,
                  meter_out: Path | None = None) -> Provisioned:
    """Provision (or with rotate_key: re-key) one meter in `workspace`.

    End-to-end meters (spec.mode e2e) also get a new household key: written into the complete config in
    `meter_out` (what is flashed to the meter) and onto the household card in `card_dir/<meter_id>/`, both
    outside the workspace; the workspace keeps the config without it and the registry its fingerprint.
    """
    ws = Workspace(Path(workspace))
    url, tls = _broker_url(ws, broker_url)
    reg = open_registry(ws, registry)
    existing = reg.get(spec.meter_id)
    users = mqtt_auth.read_passwd(ws.passwd)
    if rotate_key:
        if existing is None:
            raise ToolError(f"meter {spec.meter_id} is not provisioned, nothing to rotate: run provision "
                            f"without --rotate-key")
        if spec.attributes:
            raise ToolError(f"meter {spec.meter_id}: --rotate-key keeps the registered attributes; "
                            f"drop --attr")
        # Keep what was chosen last time (feeder, DP, Wi-Fi, calibration): only the secrets change.
        spec = replace(spec, feeder=existing.feeder, epsilon_milli=existing.epsilon_milli,
                       clamp_wh=existing.clamp_wh, m=existing.m, mode=existing.mode)
        if ws.meter_config(spec.meter_id).exists():
            spec = _spec_from_config(json.loads(ws.meter_config(spec.meter_id).read_text()), spec)
    else:
        where = [what for what, hit in (("the meter registry", existing is not None),
                                        ("the broker password file", spec.meter_id in users),
                                        ("the workspace", ws.meter_config(spec.meter_id).exists())) if hit]
        if where:
            raise ToolError(f"meter {spec.meter_id} already exists in {', '.join(where)}; use --rotate-key to "
                            f"replace its key, or choose another id")
    check_spec(spec)
    if spec.mode == MODE_E2E:
        card_dir, meter_out = e2e_outputs(ws, card_dir, meter_out)
    key = os.urandom(MASTER_KEY_BYTES)
    password = mqtt_auth.new_password()
    calibration = dict(meter_config.DEFAULT_CALIBRATION, volts=spec.volts, rated_amps=spec.rated_amps)
    if rotate_key and ws.meter_config(spec.meter_id).exists():
        calibration = dict(json.loads(ws.meter_config(spec.meter_id).read_text())["calibration"])
    cfg = meter_config.render(
        meter_id=spec.meter_id, master_key=key, feeder=spec.feeder,
        dp=_dp_section(spec),
        broker_url=url, username=spec.meter_id, password=password, ca_der=tls,
        wifi_ssid=spec.wifi_ssid, wifi_password=spec.wifi_password, calibration=calibration,
        interval_s=spec.interval_s, sim=_sim_section(spec))
    card = None
    if spec.mode == MODE_E2E:
        try:
            e2e = ensure_e2e(ws.keys_dir)
        except (KeyFileError, FileNotFoundError) as exc:
            raise ToolError(f"end-to-end meters need the utility public key in {ws.keys_dir} (meterveil keys "
                            f"init): {exc}") from None
        card = HouseholdCard(spec.meter_id, new_key())
        cfg["e2e"] = {"n": f"{e2e.n:x}", "hs": f"{e2e.hs:x}", "exp_bits": e2e.exp_bits,
                      "household_key": card.key.hex()}
    stage = _write_config(ws, spec, cfg)
    try:
        if rotate_key:
            assert existing is not None
            reg.rotate(spec.meter_id, key)
            if card is not None:  # the utility cannot re-use the old household key: it never had it
                reg.registry.put(replace(existing.record, household_fingerprint=card.fingerprint),
                                 replace_existing=True)
            _log_rotation(ws, spec.meter_id, existing.key, reg.get(spec.meter_id).key)
        else:
            household = {k: check_attribute(k, v) for k, v in spec.attributes.items()}
            reg.add(spec.meter_id, feeder=spec.feeder, epsilon_milli=spec.epsilon_milli, clamp_wh=spec.clamp_wh,
                    m=spec.m, key=key, attributes={"volts": spec.volts, "rated_amps": spec.rated_amps, **household},
                    mode=spec.mode, household_fingerprint=card.fingerprint if card else "")
        mqtt_auth.set_password(ws.passwd, spec.meter_id, password)
        gateway = mqtt_auth.acl_gateway_user(ws.acl) or ws.load_broker_info().get("gateway_user", "gateway")
        mqtt_auth.write_acl(ws.acl, gateway, [*mqtt_auth.acl_meters(ws.acl), spec.meter_id])
        if card is not None:
            assert card_dir is not None and meter_out is not None
            write_card(card_dir / spec.meter_id, card)
            meter_out.mkdir(parents=True, exist_ok=True, mode=0o700)
            for f in stage.iterdir():  # config.json (+ ca.der): what goes onto the meter
                write_secret(meter_out / f.name, f.read_bytes(), overwrite=True)
            _redact_household_key(stage / "config.json", card.fingerprint)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return Provisioned(spec.meter_id, _commit_config(ws, spec.meter_id, stage), rotate_key, card is not None)


def _spec_from_config(cfg: dict[str, Any], spec: MeterSpec) -> MeterSpec:
    wifi = cfg.get("wifi") or {}
    sim = cfg.get("sim")
    return replace(spec, interval_s=cfg.get("interval_s", 900),
                   wifi_ssid=wifi.get("ssid"), wifi_password=wifi.get("password"),
                   sim_profile=sim["profile"] if sim else None,
                   sim_speed=sim.get("speed", 1.0) if sim else 1.0,
                   sim_start=sim.get("start_time") if sim else None)


def push_to_board(config: Path, port: str, log: Callable[[str], None] = print, restart: bool = True) -> None:
    """Copy config.json (+ ca.der) to the board root and verify by hashing them on the device; in a
    maintenance boot (the meter's watchdog would otherwise reset the board between the calls), then
    a hard reset so the meter starts with the new config (restart=False: the caller does it)."""
    port = check_port(port)
    files = {"/config.json": config}
    ca = config.parent / meter_config.CA_NAME
    if ca.exists():
        files["/" + meter_config.CA_NAME] = ca
    steps = [Step("probe: is it MicroPython", mpremote(port, "exec", PROBE), probe=True)]
    steps += maintenance_steps(port)
    copies = [Step(f"copy {dev}", mpremote(port, "fs", "cp", str(local), ":" + dev)) for dev, local in files.items()]
    steps += [Step(copies[0].what, copies[0].argv, after_reset=True)] + copies[1:]
    steps.append(Step("read back", mpremote(port, "exec", HASH.format(paths=json.dumps(sorted(files))))))
    out = ""
    for step in steps:
        log(f"- {step.what}")
        out = run_step(step, port)
    got = {p.split()[1]: p.split()[2] for p in out.splitlines() if p.startswith("MVHASH") and len(p.split()) == 3}
    for dev, local in files.items():
        if got.get(dev) != hashlib.sha256(local.read_bytes()).hexdigest():
            raise ToolError(f"{dev} on the board on {port} differs from {local} after copying; re-run "
                            f"provision with --rotate-key --port {port}")
    if restart:
        for step in restart_steps(port):
            log(f"- {step.what}")
            run_step(step, port)


# ---- CLI --------------------------------------------------------------------------------------

def register(sub) -> None:
    p = sub.add_parser("provision", help="create a meter's key, registry entry, broker login and config.json",
                       description=__doc__.splitlines()[0])
    p.add_argument("meter_id", nargs="?", metavar="METER_ID", help="1-16 chars of A-Za-z0-9_- (omit with --batch)")
    p.add_argument("--workspace", required=True, type=Path, help="pilot workspace (after broker-config)")
    p.add_argument("--feeder", default=None, help="feeder / substation group of the meter")
    p.add_argument("--batch", type=Path, default=None, metavar="CSV", help="provision every row of a CSV")
    p.add_argument("--rotate-key", action="store_true", help="replace the key and broker password of a meter")
    p.add_argument("--port", default=None, help="push config.json to the board on this serial port and verify")
    p.add_argument("--push", action="store_true",
                   help="only push the existing config of METER_ID to --port (no new keys)")
    p.add_argument("--registry", type=Path, default=None,
                   help="meter registry, metadata only (default WORKSPACE/registry/meters.json); master keys go "
                        "to WORKSPACE/keys/meter-keys.json")
    p.add_argument("--broker-url", default=None, help="override the broker URL from broker-config")
    p.add_argument("--epsilon-milli", type=int, default=1000, help="DP epsilon per reading x 1000 (default 1000)")
    p.add_argument("--clamp-wh", type=int, default=1000, help="DP clamp per interval in Wh (default 1000)")
    p.add_argument("--m", type=int, default=10, help="provisioned minimum contributors of the feeder (default 10)")
    p.add_argument("--interval-s", type=int, default=900, help="reading interval in seconds (default 900)")
    p.add_argument("--wifi-ssid", default=None)
    p.add_argument("--wifi-password", default=os.environ.get("METERVEIL_WIFI_PASSWORD"),
                   help="default: $METERVEIL_WIFI_PASSWORD (keeps it out of shell history)")
    p.add_argument("--volts", type=float, default=230.0, help="nominal mains voltage")
    p.add_argument("--rated-amps", type=float, default=30.0, help="CT clamp rating")
    p.add_argument("--sim-profile", default=None,
                   help="unix-port meter: simulated load profile CSV instead of a real CT (no Wi-Fi needed)")
    p.add_argument("--sim-speed", type=float, default=1.0, help="unix-port meter: simulated seconds per second")
    p.add_argument("--sim-start", type=int, default=None, help="unix-port meter: simulated start (unix time)")
    p.add_argument("--mode", choices=MODES, default=MODE_PROXY,
                   help="proxy (the gateway encrypts) or e2e (the meter encrypts; needs --card-dir, --meter-out); "
                        "with --batch: the mode of rows without a mode column")
    p.add_argument("--card-dir", type=Path, default=None,
                   help="e2e: where the household card goes, CARD_DIR/<meter_id>/ (outside the workspace)")
    p.add_argument("--meter-out", type=Path, default=None,
                   help="e2e: where the meter's complete config goes (outside the workspace; with --batch "
                        "METER_OUT/<meter_id>/)")
    p.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE",
                   help="household attribute for `export households`, repeatable: home_type=flat|terraced|"
                        "semi-detached|detached, occupants=1-20, tariff_type=flat|tou|ev, "
                        "region=north|central|south|coast (with --batch: a default for rows without that column)")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    defaults = MeterSpec(meter_id=args.meter_id or "", feeder=args.feeder or "", epsilon_milli=args.epsilon_milli,
                         clamp_wh=args.clamp_wh, m=args.m, interval_s=args.interval_s, wifi_ssid=args.wifi_ssid,
                         wifi_password=args.wifi_password, volts=args.volts, rated_amps=args.rated_amps,
                         sim_profile=args.sim_profile, sim_speed=args.sim_speed, sim_start=args.sim_start,
                         attributes=parse_attr_options(args.attr), mode=args.mode)
    ws = Workspace(args.workspace)
    if args.push:
        if not args.meter_id or not args.port or args.rotate_key or args.batch:
            raise ToolError("--push needs METER_ID and --port (and no --rotate-key/--batch)")
        if not ws.meter_config(args.meter_id).is_file():
            raise ToolError(f"{ws.meter_config(args.meter_id)} not found: provision {args.meter_id} first")
        push_to_board(ws.meter_config(args.meter_id), args.port)
        print(f"config of {args.meter_id} pushed to {args.port} and verified")
        return 0
    if args.batch:
        if args.meter_id or args.port or args.rotate_key:
            raise ToolError("--batch provisions from the CSV only: drop METER_ID, --port and --rotate-key")
        from .batch import provision_batch

        done = provision_batch(args.workspace, args.batch, defaults, broker_url=args.broker_url,
                               registry=args.registry, card_dir=args.card_dir, meter_out=args.meter_out)
        print(f"provisioned {len(done)} meters; configs in {ws.root / 'meters'}")
        if any(d.end_to_end for d in done):
            print(f"end to end: each such meter's config is in {args.meter_out}/<meter_id>/, its household card "
                  f"in {args.card_dir}/<meter_id>/ (the workspace keeps the card's fingerprint only)")
    else:
        if not args.meter_id:
            raise ToolError("give a METER_ID (or --batch CSV)")
        if args.port:
            check_port(args.port)  # before creating anything
        res = provision_one(args.workspace, defaults, broker_url=args.broker_url, registry=args.registry,
                            rotate_key=args.rotate_key, card_dir=args.card_dir, meter_out=args.meter_out)
        print(f"{'re-keyed' if res.rotated else 'provisioned'} {res.meter_id}: {res.config} (0600)")
        full = res.config
        if args.meter_out and (args.meter_out / "config.json").exists():
            full = args.meter_out / "config.json"
            print(f"end to end: the meter's config is {full}; the household card is in "
                  f"{args.card_dir / res.meter_id} (give it to the household; the workspace keeps its "
                  f"fingerprint only)")
        if args.port:
            push_to_board(full, args.port)
            print(f"config pushed to {args.port} and verified")
        elif res.rotated:
            print("push the new config to the board now (provision --rotate-key --port PORT): until then the "
                  "broker refuses the meter's old password")
    print(f"reload the broker so it sees the new login: kill -HUP $(pidof mosquitto)  "
          f"(files in {ws.broker_dir})")
    return 0
