"""The meter registry: what every role may know about a meter, and no key.

Why apart from the keys: the back office and the decryption role need each meter's feeder, DP
parameters and household attributes; only the gateway may hold meter master keys
(`meterveil.host.gateway.meter_keys`). The two files are written together by provisioning and read
apart.

File ``meters.json`` (``{"version": 2, "meters": {meter_id: {...}}}``), per meter: ``feeder``,
``epsilon_milli``, ``clamp_wh``, ``m``, ``household`` (one identity per household: several meters of
one household count once towards a feeder's contributors) and ``attributes`` (``rated_amps``,
``volts``, ``phases`` used by range checks; quasi-identifiers used by exports), ``mode`` (``proxy``: the
gateway opens the frame and encrypts it; ``e2e``: the meter encrypts, the gateway only verifies; absent
means proxy) and, for E2E meters, ``household_fingerprint`` (of the household key, which no utility
file holds: the household's card is the only copy besides the meter).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meterveil.host.common.files import write_private_json
from meterveil.host.common.pubkey import KeyFileError, resolve

REGISTRY_NAME = "meters.json"
REGISTRY_VERSION = 2
METER_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
# The ranges the firmware's config validation enforces: epsilon_milli and m travel as u16 on the wire.
DP_LIMITS = {"epsilon_milli": 65535, "clamp_wh": 1_000_000, "m": 65535}
# What a meter can physically draw when its registry attributes do not say (single-phase household).
RATED_DEFAULTS = {"rated_amps": 100.0, "volts": 250.0, "phases": 1}
RANGE_MARGIN = 1.25  # CT and voltage tolerance on top of the rating
MODE_PROXY = "proxy"
MODE_E2E = "e2e"
MODES = (MODE_PROXY, MODE_E2E)


@dataclass(frozen=True)
class MeterRecord:
    """One meter as every role may see it (no key)."""

    meter_id: str
    feeder: str
    epsilon_milli: int
    clamp_wh: int
    m: int
    attributes: dict[str, Any] = field(default_factory=dict)
    household: str = ""  # defaults to the meter id: one meter per household
    mode: str = MODE_PROXY
    household_fingerprint: str = ""  # E2E: fingerprint of the household key (never the key)

    @property
    def household_id(self) -> str:
        return self.household or self.meter_id

    def to_json(self) -> dict[str, Any]:
        d = {"feeder": self.feeder, "epsilon_milli": self.epsilon_milli, "clamp_wh": self.clamp_wh,
             "m": self.m, "household": self.household_id, "attributes": dict(self.attributes)}
        if self.mode != MODE_PROXY:
            d["mode"] = self.mode
        if self.household_fingerprint:
            d["household_fingerprint"] = self.household_fingerprint
        return d

    @classmethod
    def from_json(cls, meter_id: str, d: dict[str, Any]) -> MeterRecord:
        if "key" in d or "previous_key" in d:
            raise KeyFileError(f"meter {meter_id}: the registry holds a master key; keys belong in the "
                               f"gateway's meter-keys.json (run `meterveil keys split-registry`)")
        try:
            rec = cls(meter_id=meter_id, feeder=str(d["feeder"]), epsilon_milli=int(d["epsilon_milli"]),
                      clamp_wh=int(d["clamp_wh"]), m=int(d["m"]), attributes=dict(d.get("attributes") or {}),
                      household=str(d.get("household") or ""), mode=str(d.get("mode") or MODE_PROXY),
                      household_fingerprint=str(d.get("household_fingerprint") or ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyFileError(f"meter {meter_id}: bad registry entry ({type(exc).__name__})") from None
        validate(rec)
        return rec


def rated_max_wh(attributes: dict[str, Any], interval_len: int, *, defaults: dict[str, Any] | None = None,
                 margin: float = RANGE_MARGIN) -> float:
    """Most energy a meter can measure in one interval: volts x rated amps x phases x time x margin.

    Why shared: the gateway checks it per reading in proxy mode; in end-to-end mode it cannot see a
    reading, so the decryption role checks sums against readings x this bound instead."""
    d = {**RATED_DEFAULTS, **(defaults or {})}
    return (float(attributes.get("volts", d["volts"])) * float(attributes.get("rated_amps", d["rated_amps"]))
            * int(attributes.get("phases", d["phases"])) * interval_len / 3600.0 * margin)


def validate(rec: MeterRecord) -> None:
    if not METER_ID_RE.match(rec.meter_id):
        raise ValueError(f"bad meter id {rec.meter_id!r}: 1-16 chars of A-Za-z0-9_-")
    for name, value in (("epsilon_milli", rec.epsilon_milli), ("clamp_wh", rec.clamp_wh), ("m", rec.m)):
        if not 1 <= value <= DP_LIMITS[name]:
            raise ValueError(f"meter {rec.meter_id}: {name} must be in 1..{DP_LIMITS[name]}, got {value}")
    if not rec.feeder:
        raise ValueError(f"meter {rec.meter_id}: feeder required")
    if rec.mode not in MODES:
        raise ValueError(f"meter {rec.meter_id}: mode must be one of {', '.join(MODES)}, got {rec.mode!r}")


def file_identity(path: Path) -> tuple[int, int, int] | None:
    """Identity of a file version: saves replace the file, so the inode changes even when the
    filesystem's timestamps are coarse."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class MeterRegistry:
    """meter_id -> MeterRecord, persisted in meters.json. Not thread-safe: one writer at a time."""

    def __init__(self, path: str | os.PathLike[str], meters: dict[str, MeterRecord] | None = None):
        self.path = Path(path)
        self._meters: dict[str, MeterRecord] = dict(meters or {})
        self._identity = file_identity(self.path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MeterRegistry:
        """Load the registry (``path`` may be its folder). A missing file is an empty registry."""
        reg = cls(resolve(path, REGISTRY_NAME))
        reg._read()
        return reg

    def _read(self) -> None:
        identity = file_identity(self.path)
        if identity is None:
            self._meters, self._identity = {}, None
            return
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            raise KeyFileError(f"{self.path}: not JSON ({exc.msg})") from None
        if not isinstance(data, dict) or not isinstance(data.get("meters"), dict):
            raise KeyFileError(f"{self.path}: expected a meter registry")
        if data.get("version") != REGISTRY_VERSION:
            raise KeyFileError(f"{self.path}: registry version {data.get('version')}, expected "
                               f"{REGISTRY_VERSION} (a version 1 registry holds master keys: run "
                               f"`meterveil keys split-registry`)")
        self._meters = {mid: MeterRecord.from_json(mid, d) for mid, d in data["meters"].items()}
        self._identity = identity

    def reload_if_changed(self) -> bool:
        """Re-read the file if provisioning changed it since we loaded (cheap stat); True if reloaded."""
        if file_identity(self.path) == self._identity:
            return False
        self._read()
        return True

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {"version": REGISTRY_VERSION,
                "meters": {mid: r.to_json() for mid, r in sorted(self._meters.items())}}
        write_private_json(self.path, data)
        self._identity = file_identity(self.path)

    def get(self, meter_id: str) -> MeterRecord | None:
        return self._meters.get(meter_id)

    def ids(self) -> list[str]:
        return sorted(self._meters)

    def feeders(self) -> dict[str, list[str]]:
        """feeder -> sorted meter ids."""
        out: dict[str, list[str]] = {}
        for rec in self:
            out.setdefault(rec.feeder, []).append(rec.meter_id)
        return out

    def __contains__(self, meter_id: object) -> bool:
        return meter_id in self._meters

    def __len__(self) -> int:
        return len(self._meters)

    def __iter__(self) -> Iterator[MeterRecord]:
        return iter([self._meters[k] for k in sorted(self._meters)])

    def put(self, rec: MeterRecord, *, replace_existing: bool = False, save: bool = True) -> MeterRecord:
        """Add or (with replace_existing) replace one record; saves unless told not to."""
        if rec.meter_id in self._meters and not replace_existing:
            raise KeyError(f"meter {rec.meter_id} already registered")
        validate(rec)
        self._meters[rec.meter_id] = rec
        if save:
            self.save()
        return rec
