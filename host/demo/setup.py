"""Demo workspace: utility keys, meter registry, per-meter config.json and household profiles.

Why one module: provisioning is where the DP parameters are chosen, and the gateway registry and the
meters' configs must carry exactly the same values (the gateway rejects `dp_mismatch`).

DP defaults (explained to the reader in report.html):
- epsilon 1.0 per reading (event-level);
- clamp_wh = max household load (2 kW) x interval length: 500 Wh per 15 minutes. Higher clamps
  bound fewer readings but scale the noise up; 2 kW sustained over 15 minutes covers all but
  EV charging and stacked cooking+heating intervals (clamped in the analytics copy only);
- m = meters on the feeder minus a 10% dropout margin (at least one), never below k_min (5).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from meterveil.host.audit import signing
from meterveil.host.backoffice.dp import DEFAULT_GAMMA, honest_m, share_variance
from meterveil.host.backoffice.tariff import DEFAULT_TARIFF, Tariff, TariffError, load_tariff
from meterveil.host.common.files import write_private
from meterveil.host.common.pubkey import E2EPublic, load_e2e, write_public
from meterveil.host.common.registry import MODE_E2E, MODE_PROXY, MODES, REGISTRY_NAME
from meterveil.host.decryption import secret_key
from meterveil.host.demo import firmware_runner, profiles
from meterveil.host.gateway.meter_keys import MASTER_KEY_BYTES, KeyedRegistry
from meterveil.host.household.card import HouseholdCard, new_key, write_card

REPO = Path(__file__).resolve().parents[2]
MARKER = ".meterveil-demo"  # only directories carrying it are ever wiped
GATEWAY_USER = "gateway"
# The same heap the firmware tests use (docs/FIRMWARE.md, Memory): one number for both.
DEFAULT_HEAPSIZE = firmware_runner.DEFAULT_HEAPSIZE
# An end-to-end meter on the 64-bit unix port, bytecode loaded into the heap, also holds Paillier
# bignums and its obfuscator pipeline: 128k fragments within a day (a ~1 KB block goes missing while
# ~30 KB are free); 192k leaves ~96 KB free at the low point. The board target is tracked by
# tests/test_fw_heap.py.
E2E_HEAPSIZE = "192k"


def meter_heapsize(cfg) -> str:
    return cfg.heapsize or (E2E_HEAPSIZE if cfg.mode == MODE_E2E else DEFAULT_HEAPSIZE)

# A 100 A single-phase supply on a 2000:1 CT into 15 ohm: 1.06 V peak at rated current, inside
# the 12-bit ADC's +-1.65 V around mid-rail with headroom for harmonics.
CALIBRATION = {"ct_turns": 2000, "burden_ohm": 15.0, "adc_bits": 12, "vref_mv": 3300,
               "volts": 230.0, "power_factor": 1.0, "rated_amps": 100.0}


class DemoError(RuntimeError):
    """A demo run cannot proceed; the message says what to change."""


@dataclass
class DemoConfig:
    meters: int = 24
    feeders: int = 2
    days: float = 2.0  # from a Sunday: a weekend day and a weekday
    interval_min: int = 15
    broker: str | None = None
    tariff: Path = DEFAULT_TARIFF
    out: Path = Path("demo-out")
    workspace: Path | None = None
    speed: float | None = None           # simulated seconds per wall second; None = auto
    epsilon: float = 1.0
    max_household_kw: float = 2.0
    k_min: int = 5
    min_band_readings: int | None = None  # the policy's floor per bill band (None: the policy's default)
    seed: int = 1
    start: date | None = None             # local date in the tariff's zone; None = auto
    start_hour: int = 0                   # local hour the simulation starts on that day
    key_bits: int = 2048
    timeout_s: float | None = None
    sim_mode: str = "sparse"
    block_s: int | None = None            # sparse block length; None = auto (demo.auto_block_s)
    heapsize: str | None = None            # MicroPython heap per meter (None: by mode, meter_heapsize)
    progress: bool = True
    mode: str = MODE_PROXY                  # proxy: the gateway encrypts; e2e: the meters do

    @property
    def interval_s(self) -> int:
        return self.interval_min * 60

    @property
    def intervals(self) -> int:
        return max(1, round(self.days * 86400 / self.interval_s))


@dataclass
class DpParams:
    epsilon_milli: int
    clamp_wh: int
    k_min: int
    m: dict[str, int] = field(default_factory=dict)  # per feeder


@dataclass
class MeterPlan:
    meter_id: str
    feeder: str
    dir: Path
    config: Path
    household: profiles.Household
    key: bytes = field(repr=False, default=b"")
    password: str | None = field(repr=False, default=None)
    # E2E: the household key, kept in memory until the meter's config is written; the only files
    # holding it are that config (the meter's flash) and the household's card (WORKSPACE/households/)
    household_key: bytes = field(repr=False, default=b"")


@dataclass
class Workspace:
    """The demo's folders, one per role: keys/ (gateway), registry/ (metadata), decryption/ (role)."""

    root: Path
    keys_dir: Path
    db: Path
    start: datetime
    tariff: Tariff
    dp: DpParams
    meters: list[MeterPlan]
    broker_users: dict[str, str]

    @property
    def registry(self) -> Path:
        return self.root / "registry" / REGISTRY_NAME

    @property
    def role_dir(self) -> Path:
        return self.root / "decryption"

    def feeders(self) -> list[str]:
        return sorted({m.feeder for m in self.meters})


def choose_start(tz: ZoneInfo, days: float, now: datetime | None = None, start_hour: int = 0) -> datetime:
    """Local midnight on the first Sunday of the latest month that has ended and whose run ends
    before now (on its 1st if the run would not fit otherwise): a run of two days or more then holds a
    weekend day and a weekday.

    Why: bills cover whole calendar months from their first day, the gateway rejects readings from
    the future, and a month that has ended can be billed and exported as a whole (an export covers
    only ended months); the previous month's 1st is at most 62 days back, inside the gateway's
    staleness limit, without a fixed date that would age past it.
    """
    now = now or datetime.now(tz)
    y, mo = now.year, now.month
    for _ in range(24):
        start = datetime(y, mo, 1, tzinfo=tz)
        month_end = datetime(y + mo // 12, mo % 12 + 1, 1, tzinfo=tz)
        if start + timedelta(seconds=days * 86400 + start_hour * 3600) <= now and month_end <= now:
            sunday = start + timedelta(days=(6 - start.weekday()) % 7)
            if sunday + timedelta(seconds=days * 86400 + start_hour * 3600) <= month_end:
                return sunday
            return start
        y, mo = (y, mo - 1) if mo > 1 else (y - 1, 12)
    raise DemoError(f"--days {days} is too long")


def dp_params(cfg: DemoConfig, feeder_sizes: dict[str, int]) -> DpParams:
    clamp = round(cfg.max_household_kw * 1000 * cfg.interval_s / 3600)
    out = DpParams(epsilon_milli=round(cfg.epsilon * 1000), clamp_wh=max(1, clamp), k_min=cfg.k_min)
    for feeder, n in feeder_sizes.items():
        if n < cfg.k_min:
            raise DemoError(f"feeder {feeder} has {n} meters < k_min={cfg.k_min}: its loads could never be "
                            f"decrypted; use more --meters or fewer --feeders")
        out.m[feeder] = max(cfg.k_min, honest_m(n, DEFAULT_GAMMA))  # gamma of the feeder may collude
    return out


def _prepare_dir(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise DemoError(f"workspace {root} exists and is not a directory; choose another")
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).exists():
            raise DemoError(f"workspace {root} is not empty and was not made by the demo; choose another")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    write_private(root / MARKER, "made by `meterveil demo`; wiped by the next run\n")


def meter_config(plan: MeterPlan, dp: DpParams, cfg: DemoConfig, start: datetime,
                 broker_url: str, speed: float, e2e: E2EPublic | None = None) -> dict[str, Any]:
    password = plan.password
    conf = {
        "meter_id": plan.meter_id,
        "master_key": plan.key.hex(),
        "feeder": plan.feeder,
        "interval_s": cfg.interval_s,
        "dp": {"epsilon_milli": dp.epsilon_milli, "clamp_wh": dp.clamp_wh, "m": dp.m[plan.feeder],
               "noise_var": share_variance(dp.epsilon_milli / 1000, dp.clamp_wh, dp.m[plan.feeder], cfg.interval_s)},
        "calibration": dict(CALIBRATION),
        "broker": {"url": broker_url, "username": plan.meter_id if password else None,
                   "password": password, "client_id": plan.meter_id},
        "sim": {"profile": "profile.csv", "speed": speed, "mains_hz": 50, "mode": cfg.sim_mode,
                "seed": plan.household.seed, "start_time": int(start.timestamp()),
                "block_s": cfg.block_s or 1},
        "run": {"intervals": cfg.intervals, "drain_timeout_s": 120, "truth": True},
    }
    if plan.household_key:
        if e2e is None:
            raise DemoError("an end-to-end meter needs the public key's hs")
        conf["e2e"] = {"n": f"{e2e.n:x}", "hs": f"{e2e.hs:x}", "exp_bits": e2e.exp_bits,
                       "household_key": plan.household_key.hex()}
    return conf


def provision(cfg: DemoConfig, root: Path, *, with_passwords: bool, now: datetime | None = None) -> Workspace:
    """Create the workspace from scratch: keys, registry, profiles (configs follow once the broker runs)."""
    try:
        tariff = load_tariff(cfg.tariff)
    except TariffError as e:
        raise DemoError(f"--tariff: {e}") from None
    tz = tariff.tz
    if not 0 <= cfg.start_hour < 24:
        raise DemoError("start hour must be in 0..23")
    midnight = (datetime(cfg.start.year, cfg.start.month, cfg.start.day, tzinfo=tz) if cfg.start
                else choose_start(tz, cfg.days, now, cfg.start_hour))
    start = midnight + timedelta(hours=cfg.start_hour)
    if (int(start.timestamp()) % cfg.interval_s) != 0:
        raise DemoError(f"start {start.isoformat()} is not aligned to the {cfg.interval_min}-minute grid (UTC)")
    if cfg.feeders < 1 or cfg.meters < cfg.feeders:
        raise DemoError("need at least one meter per feeder")
    if cfg.mode not in MODES:
        raise DemoError(f"mode must be one of {', '.join(MODES)}")
    feeder_names = [f"F{i + 1:02d}" for i in range(cfg.feeders)]
    assign = [feeder_names[i % cfg.feeders] for i in range(cfg.meters)]
    dp = dp_params(cfg, {f: assign.count(f) for f in feeder_names})
    _prepare_dir(root)
    keys_dir = root / "keys"
    keys_dir.mkdir()
    pub, priv = secret_key.generate_keypair(cfg.key_bits)
    write_public(keys_dir, pub)
    secret_key.write_secret(root / "decryption", priv)
    signing.generate(root / "decryption")
    registry = KeyedRegistry.load(keys_dir, root / "registry" / REGISTRY_NAME)
    users: dict[str, str] = {}
    if with_passwords:
        users[GATEWAY_USER] = secrets.token_urlsafe(16)
    plans: list[MeterPlan] = []
    days = math.ceil(cfg.days + cfg.start_hour / 24)
    for i in range(cfg.meters):
        hh = profiles.make_household(i, cfg.seed)
        mid = f"m{i + 1:04d}"
        mdir = root / "meters" / mid
        mdir.mkdir(parents=True)
        key = secrets.token_bytes(MASTER_KEY_BYTES)
        password = secrets.token_urlsafe(12) if with_passwords else None
        hkey = new_key() if cfg.mode == MODE_E2E else b""
        plan = MeterPlan(mid, assign[i], mdir, mdir / "config.json", hh, key, password, hkey)
        attrs = {**hh.attributes(), "household_id": hh.household_id,
                 "rated_amps": CALIBRATION["rated_amps"], "volts": CALIBRATION["volts"], "phases": 1}
        fingerprint = ""
        if hkey:
            card = HouseholdCard(mid, hkey)
            write_card(root / "households" / mid, card)
            fingerprint = card.fingerprint
        registry.add(mid, feeder=plan.feeder, epsilon_milli=dp.epsilon_milli, clamp_wh=dp.clamp_wh,
                     m=dp.m[plan.feeder], key=key, attributes=attrs, household=hh.household_id, save=False,
                     mode=cfg.mode, household_fingerprint=fingerprint)
        if password:
            users[mid] = password
        profiles.simulate(hh, midnight, days).to_csv(mdir / "profile.csv", offset_s=cfg.start_hour * 3600)
        plans.append(plan)
    registry.save()
    write_private(root / "demo.json", json.dumps(
        {"config": {k: str(v) for k, v in asdict(cfg).items()}, "start": start.isoformat(),
         "dp": asdict(dp)}, indent=1))
    return Workspace(root, keys_dir, root / "store.sqlite", start, tariff, dp, plans, users)


def write_meter_configs(ws: Workspace, cfg: DemoConfig, broker_url: str, speed: float) -> None:
    """One config.json per meter (0600: it holds the master key, and in E2E mode the household key)."""
    e2e = load_e2e(ws.keys_dir) if cfg.mode == MODE_E2E else None
    for plan in ws.meters:
        conf = meter_config(plan, ws.dp, cfg, ws.start, broker_url, speed, e2e)
        fd = os.open(plan.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(conf, f, indent=1)
