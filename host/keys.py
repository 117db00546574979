"""Utility Paillier key files and the gateway's meter registry.

Why one module: both are secrets on disk with the same rules (0600 from creation, atomic
replace, never logged), and every host role needs one or the other.

Files in a keys directory (`meterveil keys init --dir KEYS`):
- ``utility.pub.json``  Paillier public key ``{"kind": "paillier-public", "version": 1, "n": "<hex>"}``.
  The gateway and the aggregator need only this.
- ``utility.key.json``  Paillier secret key ``{"kind": "paillier-secret", "version": 1, "n", "p", "q"}``
  (hex). Only the decryption role holds it: move it off the gateway machine in production.
- ``meters.json``       meter registry ``{"version": 1, "meters": {meter_id: {...}}}`` with per meter
  ``key`` (hex of the 32-byte master key), ``feeder``, ``epsilon_milli``, ``clamp_wh``, ``m``,
  ``attributes`` (free dict, e.g. ``rated_amps``, ``volts``, ``phases`` used by range checks) and
  ``previous_key`` (hex or null; kept after a rotation so frames sealed before it still open).

Interface (stable, used by ingest, provisioning and the back office):
- ``generate_keypair(bits=2048) -> (PaillierPublicKey, PaillierPrivateKey)``
- ``write_keypair(dir, pub, priv, force=False)``; raises ``FileExistsError`` without ``force``.
- ``load_public(path) -> PaillierPublicKey``; ``load_private(path) -> PaillierPrivateKey``
  (``path`` may be the file or the keys directory).
- ``MeterRegistry.load(path)`` (missing file = empty registry), ``.get(id) -> MeterRecord | None``,
  ``.add(meter_id, feeder=..., epsilon_milli=..., clamp_wh=..., m=..., key=None, attributes=None,
  replace=False) -> MeterRecord`` (saves), ``.rotate(meter_id, new_key=None) -> MeterRecord`` (saves),
  ``.ids()``, ``.reload_if_changed() -> bool``, ``len()``, ``in``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from phe import paillier

PUBLIC_NAME = "utility.pub.json"
SECRET_NAME = "utility.key.json"
REGISTRY_NAME = "meters.json"
DEFAULT_BITS = 2048
MASTER_KEY_BYTES = 32
METER_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,16}$")


class KeyFileError(ValueError):
    """A key or registry file is malformed (wrong kind, version or field)."""


def write_secret_file(path: Path, data: dict[str, Any], *, force: bool = False) -> None:
    """Write JSON readable only by the owner: created 0600 (never chmod-ed later), atomically replaced.

    Why a temp file created with O_EXCL and mode 0600: there is no moment where the secret is on disk
    with wider permissions, and a crash never leaves a half-written key file.
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; use --force to overwrite")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def generate_keypair(bits: int = DEFAULT_BITS) -> tuple[paillier.PaillierPublicKey, paillier.PaillierPrivateKey]:
    """New utility Paillier key pair (g = n + 1, as phe does)."""
    if bits < 512 or bits % 8:
        raise ValueError("bits must be a multiple of 8 and >= 512")
    return paillier.generate_paillier_keypair(n_length=bits)


def write_keypair(directory: str | os.PathLike[str], pub: paillier.PaillierPublicKey,
                  priv: paillier.PaillierPrivateKey, *, force: bool = False) -> tuple[Path, Path]:
    """Write public and secret key files (both 0600); refuse to overwrite either without force."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    pub_path, sec_path = d / PUBLIC_NAME, d / SECRET_NAME
    if not force:
        for p in (pub_path, sec_path):
            if p.exists():
                raise FileExistsError(f"{p} exists; use --force to overwrite")
    write_secret_file(sec_path, {"kind": "paillier-secret", "version": 1, "n": f"{pub.n:x}",
                                 "p": f"{priv.p:x}", "q": f"{priv.q:x}"}, force=force)
    write_secret_file(pub_path, {"kind": "paillier-public", "version": 1, "n": f"{pub.n:x}"}, force=force)
    return pub_path, sec_path


def _read_json(path: Path, *kinds: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise KeyFileError(f"{path}: not JSON ({exc.msg})") from None
    if not isinstance(data, dict) or data.get("kind") not in kinds or data.get("version") != 1:
        raise KeyFileError(f"{path}: expected kind {' or '.join(kinds)} version 1")
    return data


def _resolve(path: str | os.PathLike[str], name: str) -> Path:
    p = Path(path)
    return p / name if p.is_dir() else p


def load_public(path: str | os.PathLike[str]) -> paillier.PaillierPublicKey:
    """Public key from ``utility.pub.json`` (or from the secret file, which also carries n)."""
    data = _read_json(_resolve(path, PUBLIC_NAME), "paillier-public", "paillier-secret")
    return paillier.PaillierPublicKey(int(data["n"], 16))


def load_private(path: str | os.PathLike[str]) -> paillier.PaillierPrivateKey:
    """Secret key (with its public key) from ``utility.key.json``; checks p*q == n."""
    p = _resolve(path, SECRET_NAME)
    data = _read_json(p, "paillier-secret")
    n, pp, qq = (int(data[k], 16) for k in ("n", "p", "q"))
    if pp * qq != n:
        raise KeyFileError(f"{p}: p*q != n")
    return paillier.PaillierPrivateKey(paillier.PaillierPublicKey(n), pp, qq)


@dataclass(frozen=True)
class MeterRecord:
    """What the gateway knows about one meter. ``key`` is the 32-byte master key (secret)."""

    meter_id: str
    key: bytes = field(repr=False)
    feeder: str
    epsilon_milli: int
    clamp_wh: int
    m: int
    attributes: dict[str, Any] = field(default_factory=dict)
    previous_key: bytes | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key.hex(), "feeder": self.feeder, "epsilon_milli": self.epsilon_milli,
                "clamp_wh": self.clamp_wh, "m": self.m, "attributes": dict(self.attributes),
                "previous_key": self.previous_key.hex() if self.previous_key else None}

    @classmethod
    def from_json(cls, meter_id: str, d: dict[str, Any]) -> MeterRecord:
        try:
            rec = cls(meter_id=meter_id, key=bytes.fromhex(d["key"]), feeder=str(d["feeder"]),
                      epsilon_milli=int(d["epsilon_milli"]), clamp_wh=int(d["clamp_wh"]), m=int(d["m"]),
                      attributes=dict(d.get("attributes") or {}),
                      previous_key=bytes.fromhex(d["previous_key"]) if d.get("previous_key") else None)
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyFileError(f"meter {meter_id}: bad registry entry ({type(exc).__name__})") from None
        _validate(rec)
        return rec


DP_LIMITS = {"epsilon_milli": 65535, "clamp_wh": 1_000_000, "m": 65535}


def _validate(rec: MeterRecord) -> None:
    if not METER_ID_RE.match(rec.meter_id):
        raise ValueError(f"bad meter id {rec.meter_id!r}: 1-16 chars of A-Za-z0-9_-")
    if len(rec.key) != MASTER_KEY_BYTES or (rec.previous_key is not None and len(rec.previous_key) != MASTER_KEY_BYTES):
        raise ValueError(f"meter {rec.meter_id}: master key must be {MASTER_KEY_BYTES} bytes")
    # the same ranges the firmware's config validation enforces (firmware/meter/config.py)
    for name, value, hi in (("epsilon_milli", rec.epsilon_milli, DP_LIMITS["epsilon_milli"]),
                            ("clamp_wh", rec.clamp_wh, DP_LIMITS["clamp_wh"]), ("m", rec.m, DP_LIMITS["m"])):
        if not 1 <= value <= hi:
            raise ValueError(f"meter {rec.meter_id}: {name} must be in 1..{hi}, got {value}")
    if not rec.feeder:
        raise ValueError(f"meter {rec.meter_id}: feeder required")


class MeterRegistry:
    """meter_id -> MeterRecord, persisted in meters.json (0600). Not thread-safe: one writer at a time."""

    def __init__(self, path: str | os.PathLike[str], meters: dict[str, MeterRecord] | None = None):
        self.path = Path(path)
        self._meters: dict[str, MeterRecord] = dict(meters or {})
        self._mtime_ns = self._stat_mtime()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MeterRegistry:
        """Load the registry; ``path`` may be the keys directory. A missing file is an empty registry."""
        p = _resolve(path, REGISTRY_NAME)
        reg = cls(p)
        reg._read()
        return reg

    def _stat_mtime(self) -> tuple[int, int, int] | None:
        """Identity of the file version: saves replace the file, so the inode changes even when the
        filesystem's timestamps are coarse."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self) -> None:
        mtime = self._stat_mtime()
        if mtime is None:
            self._meters, self._mtime_ns = {}, None
            return
        data = json.loads(self.path.read_text())
        if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("meters"), dict):
            raise KeyFileError(f"{self.path}: expected a version 1 meter registry")
        self._meters = {mid: MeterRecord.from_json(mid, d) for mid, d in data["meters"].items()}
        self._mtime_ns = mtime

    def reload_if_changed(self) -> bool:
        """Re-read the file if provisioning changed it since we loaded (cheap stat); True if reloaded."""
        if self._stat_mtime() == self._mtime_ns:
            return False
        self._read()
        return True

    def save(self) -> None:
        data = {"version": 1, "meters": {mid: r.to_json() for mid, r in sorted(self._meters.items())}}
        write_secret_file(self.path, data, force=True)
        self._mtime_ns = self._stat_mtime()

    def get(self, meter_id: str) -> MeterRecord | None:
        return self._meters.get(meter_id)

    def ids(self) -> list[str]:
        return sorted(self._meters)

    def __contains__(self, meter_id: object) -> bool:
        return meter_id in self._meters

    def __len__(self) -> int:
        return len(self._meters)

    def __iter__(self) -> Iterator[MeterRecord]:
        return iter([self._meters[k] for k in sorted(self._meters)])

    def add(self, meter_id: str, *, feeder: str, epsilon_milli: int, clamp_wh: int, m: int,
            key: bytes | None = None, attributes: dict[str, Any] | None = None,
            replace_existing: bool = False, save: bool = True) -> MeterRecord:
        """Register a meter (new random master key unless given) and save; refuses duplicates."""
        if meter_id in self._meters and not replace_existing:
            raise KeyError(f"meter {meter_id} already registered")
        rec = MeterRecord(meter_id=meter_id, key=key if key is not None else secrets.token_bytes(MASTER_KEY_BYTES),
                          feeder=feeder, epsilon_milli=int(epsilon_milli), clamp_wh=int(clamp_wh), m=int(m),
                          attributes=dict(attributes or {}))
        _validate(rec)
        self._meters[meter_id] = rec
        if save:
            self.save()
        return rec

    def rotate(self, meter_id: str, new_key: bytes | None = None, *, save: bool = True) -> MeterRecord:
        """New master key; the old one is kept as previous_key so frames sealed before still open."""
        old = self._meters[meter_id]
        rec = replace(old, key=new_key if new_key is not None else secrets.token_bytes(MASTER_KEY_BYTES),
                      previous_key=old.key)
        _validate(rec)
        self._meters[meter_id] = rec
        if save:
            self.save()
        return rec

    def retire_previous_key(self, meter_id: str, *, save: bool = True) -> MeterRecord:
        """Forget previous_key once the meter's outbox has drained frames sealed with it."""
        rec = replace(self._meters[meter_id], previous_key=None)
        self._meters[meter_id] = rec
        if save:
            self.save()
        return rec
