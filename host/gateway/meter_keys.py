"""Meter master keys: held by the gateway (and written by provisioning), by no other role.

Why a file of its own: the decryption role and the back office read the meter registry
(`meterveil.host.common.registry`: feeder, DP parameters, attributes) but must never be able to open a
sealed frame. Keys live in the gateway's keys folder, ``meter-keys.json`` (0600):
``{"kind": "meter-keys", "version": 1, "meters": {meter_id: {"key": hex, "previous_key": hex|null,
"rotated_at": epoch|null}}}``.

Rotation keeps the previous key for a grace period (frames sealed before the new config reached the
meter still open); after it, the gateway ignores the old key and the next save drops it.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from meterveil.host.common.files import write_private_json
from meterveil.host.common.pubkey import KeyFileError, resolve
from meterveil.host.common.registry import MODE_PROXY, MeterRecord, MeterRegistry, file_identity

KEYS_NAME = "meter-keys.json"
KEYS_KIND = "meter-keys"
MASTER_KEY_BYTES = 32
# How long frames sealed with a rotated-out key still open: a meter can sit offline with a full
# outbox for weeks, and its new config may be pushed days after the rotation.
PREVIOUS_KEY_GRACE_S = 60 * 86400


@dataclass(frozen=True)
class MeterKey:
    key: bytes = field(repr=False)
    previous_key: bytes | None = field(default=None, repr=False)
    rotated_at: int | None = None

    def usable_previous(self, now: float, grace_s: float = PREVIOUS_KEY_GRACE_S) -> bytes | None:
        if self.previous_key is None or self.rotated_at is None:
            return self.previous_key
        return self.previous_key if now - self.rotated_at <= grace_s else None


def _check_key(meter_id: str, key: bytes | None) -> None:
    if key is not None and len(key) != MASTER_KEY_BYTES:
        raise ValueError(f"meter {meter_id}: master key must be {MASTER_KEY_BYTES} bytes")


class MeterKeys:
    """meter_id -> MeterKey, persisted 0600 in ``meter-keys.json``."""

    def __init__(self, path: str | os.PathLike[str], grace_s: float = PREVIOUS_KEY_GRACE_S) -> None:
        self.path = Path(path)
        self.grace_s = grace_s
        self._keys: dict[str, MeterKey] = {}
        self._identity = file_identity(self.path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], grace_s: float = PREVIOUS_KEY_GRACE_S) -> MeterKeys:
        mk = cls(resolve(path, KEYS_NAME), grace_s)
        mk._read()
        return mk

    def _read(self) -> None:
        identity = file_identity(self.path)
        if identity is None:
            self._keys, self._identity = {}, None
            return
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            raise KeyFileError(f"{self.path}: not JSON ({exc.msg})") from None
        if not isinstance(data, dict) or data.get("kind") != KEYS_KIND or data.get("version") != 1 \
                or not isinstance(data.get("meters"), dict):
            raise KeyFileError(f"{self.path}: expected kind {KEYS_KIND} version 1")
        keys = {}
        for mid, d in data["meters"].items():
            try:
                mk = MeterKey(bytes.fromhex(d["key"]),
                              bytes.fromhex(d["previous_key"]) if d.get("previous_key") else None,
                              int(d["rotated_at"]) if d.get("rotated_at") is not None else None)
                _check_key(mid, mk.key)
                _check_key(mid, mk.previous_key)
            except (KeyError, TypeError, ValueError) as exc:
                raise KeyFileError(f"{self.path}: meter {mid}: bad key entry ({type(exc).__name__})") from None
            keys[mid] = mk
        self._keys, self._identity = keys, identity

    def reload_if_changed(self) -> bool:
        if file_identity(self.path) == self._identity:
            return False
        self._read()
        return True

    def save(self, now: float | None = None) -> None:
        """Write the file; previous keys past their grace period are dropped (retired) here."""
        now = time.time() if now is None else now
        self._keys = {mid: (k if k.usable_previous(now, self.grace_s) is not None or k.previous_key is None
                            else replace(k, previous_key=None, rotated_at=None))
                      for mid, k in self._keys.items()}
        data: dict[str, Any] = {"kind": KEYS_KIND, "version": 1, "meters": {
            mid: {"key": k.key.hex(), "previous_key": k.previous_key.hex() if k.previous_key else None,
                  "rotated_at": k.rotated_at} for mid, k in sorted(self._keys.items())}}
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private_json(self.path, data)
        self._identity = file_identity(self.path)

    def get(self, meter_id: str) -> MeterKey | None:
        return self._keys.get(meter_id)

    def set(self, meter_id: str, key: MeterKey) -> None:
        _check_key(meter_id, key.key)
        _check_key(meter_id, key.previous_key)
        self._keys[meter_id] = key

    def __contains__(self, meter_id: object) -> bool:
        return meter_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)


@dataclass(frozen=True)
class KeyedMeter:
    """A registry record with its key(s): only the gateway and provisioning ever build one."""

    record: MeterRecord
    key: bytes = field(repr=False)
    previous_key: bytes | None = field(default=None, repr=False)

    def __getattr__(self, name: str) -> Any:  # feeder, epsilon_milli, clamp_wh, m, attributes, ...
        return getattr(self.record, name)


class KeyedRegistry:
    """The gateway's (and provisioning's) view: the shared registry plus its own key file.

    A meter is known only when both files have it: metadata without a key cannot be opened,
    a key without metadata has no feeder or DP parameters to check against.
    """

    def __init__(self, registry: MeterRegistry, keys: MeterKeys) -> None:
        self.registry = registry
        self.keys = keys

    @classmethod
    def load(cls, keys_dir: str | os.PathLike[str], registry: str | os.PathLike[str],
             grace_s: float = PREVIOUS_KEY_GRACE_S) -> KeyedRegistry:
        return cls(MeterRegistry.load(registry), MeterKeys.load(Path(keys_dir) / KEYS_NAME, grace_s))

    def reload_if_changed(self) -> bool:
        a = self.registry.reload_if_changed()
        b = self.keys.reload_if_changed()
        return a or b

    def get(self, meter_id: str, now: float | None = None) -> KeyedMeter | None:
        rec, mk = self.registry.get(meter_id), self.keys.get(meter_id)
        if rec is None or mk is None:
            return None
        prev = mk.usable_previous(time.time() if now is None else now, self.keys.grace_s)
        return KeyedMeter(rec, mk.key, prev)

    def ids(self) -> list[str]:
        return [mid for mid in self.registry.ids() if mid in self.keys]

    def __contains__(self, meter_id: object) -> bool:
        return meter_id in self.registry and meter_id in self.keys

    def __len__(self) -> int:
        return len(self.ids())

    def __iter__(self) -> Iterator[KeyedMeter]:
        return iter([m for mid in self.ids() if (m := self.get(mid)) is not None])

    def save(self) -> None:
        self.keys.save()
        self.registry.save()

    def add(self, meter_id: str, *, feeder: str, epsilon_milli: int, clamp_wh: int, m: int,
            key: bytes | None = None, attributes: dict[str, Any] | None = None, household: str = "",
            replace_existing: bool = False, save: bool = True, mode: str = MODE_PROXY,
            household_fingerprint: str = "") -> KeyedMeter:
        """Register a meter (new random master key unless given); refuses duplicates. Keys are saved
        before the registry: a crash in between leaves a key nobody uses, never a meter without one."""
        if meter_id in self.registry and not replace_existing:
            raise KeyError(f"meter {meter_id} already registered")
        rec = MeterRecord(meter_id=meter_id, feeder=feeder, epsilon_milli=int(epsilon_milli),
                          clamp_wh=int(clamp_wh), m=int(m), attributes=dict(attributes or {}), household=household,
                          mode=mode, household_fingerprint=household_fingerprint)
        key = key if key is not None else secrets.token_bytes(MASTER_KEY_BYTES)
        self.keys.set(meter_id, MeterKey(key))
        self.registry.put(rec, replace_existing=replace_existing, save=False)
        if save:
            self.save()
        return KeyedMeter(rec, key)

    def rotate(self, meter_id: str, new_key: bytes | None = None, *, save: bool = True,
               now: float | None = None) -> KeyedMeter:
        """New master key; the old one stays usable for the grace period."""
        old = self.keys.get(meter_id)
        if old is None or meter_id not in self.registry:
            raise KeyError(f"meter {meter_id} is not registered")
        key = new_key if new_key is not None else secrets.token_bytes(MASTER_KEY_BYTES)
        now = time.time() if now is None else now
        self.keys.set(meter_id, MeterKey(key, old.key, int(now)))
        if save:
            self.keys.save(now)
        got = self.get(meter_id, now)
        assert got is not None
        return got
