"""Meter keys: held by the gateway (and written by provisioning), by no other role.

Why a file of its own: the decryption role and the back office read the meter registry
(`meterveil.host.common.registry`: feeder, DP parameters, attributes) but must never be able to open a
sealed frame. Keys live in the gateway's keys folder, ``meter-keys.json`` (0600):
``{"kind": "meter-keys", "version": 1, "meters": {meter_id: ENTRY}}``.

A proxy meter's ENTRY is its master key: ``{"key": hex, "previous_key": hex|null, "rotated_at":
epoch|null}`` (the gateway opens its readings, so the master gives it nothing more). An end-to-end
meter's ENTRY holds only what the master derives for the gateway's two jobs, never the master:
``{"mac_key": hex, "status_key": hex, "previous_mac_key": hex|null, "previous_status_key": hex|null,
"rotated_at": epoch|null}``. The MAC key checks every frame; the status key is the meter's AES key,
which an E2E meter uses for its status frames only (its readings are Paillier ciphertexts plus a
household copy under an unrelated key). So no entry opens an E2E reading, and the gateway refuses an
AES-sealed reading from an E2E meter before decrypting anything (``mode_mismatch``). A file written
before this rule is reduced on the next save (``KeyedRegistry.save``).

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
from meterveil.host.common.registry import MODE_E2E, MODE_PROXY, MeterRecord, MeterRegistry, file_identity
from meterveil.protocol import frame

KEYS_NAME = "meter-keys.json"
KEYS_KIND = "meter-keys"
MASTER_KEY_BYTES = 32
# How long frames sealed with a rotated-out key still open: a meter can sit offline with a full
# outbox for weeks, and its new config may be pushed days after the rotation.
PREVIOUS_KEY_GRACE_S = 60 * 86400
STATUS_KEY_BYTES = 16
MAC_KEY_BYTES = 32


@dataclass(frozen=True)
class E2EKeys:
    """An end-to-end meter's keys as the gateway holds them: derived from the master, which stays on the meter.

    Neither opens a reading: the MAC key only verifies, and the status key (the meter's AES key) seals
    nothing but status frames on an E2E meter."""

    status_key: bytes = field(repr=False)
    mac_key: bytes = field(repr=False)

    @classmethod
    def from_master(cls, master: bytes) -> E2EKeys:
        enc, mac = frame.derive_keys(master)
        return cls(enc, mac)


Secret = bytes | E2EKeys  # a proxy meter's master key, or an end-to-end meter's derived keys


def frame_keys(secret: Secret) -> tuple[bytes, bytes]:
    """(AES key, MAC key) the frames made under `secret` are sealed with."""
    if isinstance(secret, E2EKeys):
        return secret.status_key, secret.mac_key
    return frame.derive_keys(secret)


def for_mode(secret: Secret, mode: str) -> Secret:
    """What the gateway keeps of `secret` for a meter in `mode`: an E2E meter's master is reduced."""
    return E2EKeys.from_master(secret) if mode == MODE_E2E and isinstance(secret, bytes) else secret


@dataclass(frozen=True)
class MeterKey:
    key: Secret = field(repr=False)
    previous_key: Secret | None = field(default=None, repr=False)
    rotated_at: int | None = None

    def usable_previous(self, now: float, grace_s: float = PREVIOUS_KEY_GRACE_S) -> Secret | None:
        if self.previous_key is None or self.rotated_at is None:
            return self.previous_key
        return self.previous_key if now - self.rotated_at <= grace_s else None


def _check_key(meter_id: str, key: Secret | None) -> None:
    if isinstance(key, E2EKeys):
        if len(key.status_key) != STATUS_KEY_BYTES or len(key.mac_key) != MAC_KEY_BYTES:
            raise ValueError(f"meter {meter_id}: status and MAC keys must be {STATUS_KEY_BYTES} and "
                             f"{MAC_KEY_BYTES} bytes")
    elif key is not None and len(key) != MASTER_KEY_BYTES:
        raise ValueError(f"meter {meter_id}: master key must be {MASTER_KEY_BYTES} bytes")


def _secret_from(d: dict[str, Any], prefix: str) -> Secret | None:
    """One key of an entry: ``{prefix}key`` (a master key) or ``{prefix}mac_key`` + ``{prefix}status_key``."""
    if d.get(prefix + "mac_key") is not None or d.get(prefix + "status_key") is not None:
        if d.get(prefix + "key") is not None:
            raise ValueError("both a master key and derived keys")
        return E2EKeys(bytes.fromhex(d[prefix + "status_key"]), bytes.fromhex(d[prefix + "mac_key"]))
    return bytes.fromhex(d[prefix + "key"]) if d.get(prefix + "key") is not None else None


def _secret_json(secret: Secret | None, prefix: str, reduced: bool) -> dict[str, str | None]:
    # reduced: the entry's shape when there is no previous key (an E2E entry names no master key at all)
    if isinstance(secret, E2EKeys) or (secret is None and reduced):
        return {prefix + "mac_key": secret.mac_key.hex() if secret else None,
                prefix + "status_key": secret.status_key.hex() if secret else None}
    return {prefix + "key": secret.hex() if secret is not None else None}


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
                key = _secret_from(d, "")
                if key is None:
                    raise KeyError("key")
                mk = MeterKey(key, _secret_from(d, "previous_"),
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
            mid: {**_secret_json(k.key, "", False),
                  **_secret_json(k.previous_key, "previous_", isinstance(k.key, E2EKeys)), "rotated_at": k.rotated_at}
            for mid, k in sorted(self._keys.items())}}
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private_json(self.path, data)
        self._identity = file_identity(self.path)

    def get(self, meter_id: str) -> MeterKey | None:
        return self._keys.get(meter_id)

    def set(self, meter_id: str, key: MeterKey) -> None:
        _check_key(meter_id, key.key)
        _check_key(meter_id, key.previous_key)
        self._keys[meter_id] = key

    def ids(self) -> list[str]:
        return sorted(self._keys)

    def __contains__(self, meter_id: object) -> bool:
        return meter_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)


@dataclass(frozen=True)
class KeyedMeter:
    """A registry record with its key(s): only the gateway and provisioning ever build one."""

    record: MeterRecord
    key: Secret = field(repr=False)
    previous_key: Secret | None = field(default=None, repr=False)

    @property
    def end_to_end(self) -> bool:
        """E2E by the registry, or by its key entry: with no master key there is no reading key either."""
        return self.record.mode == MODE_E2E or isinstance(self.key, E2EKeys)

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
        # a key file from before E2E entries were reduced: the process keeps the reduced keys only
        return KeyedMeter(rec, for_mode(mk.key, rec.mode), for_mode(prev, rec.mode) if prev is not None else None)

    def ids(self) -> list[str]:
        return [mid for mid in self.registry.ids() if mid in self.keys]

    def __contains__(self, meter_id: object) -> bool:
        return meter_id in self.registry and meter_id in self.keys

    def __len__(self) -> int:
        return len(self.ids())

    def __iter__(self) -> Iterator[KeyedMeter]:
        return iter([m for mid in self.ids() if (m := self.get(mid)) is not None])

    def save(self) -> None:
        """Keys, then the registry. An end-to-end meter's entry that still holds a master key is reduced."""
        for mid in self.keys.ids():
            mk, rec = self.keys.get(mid), self.registry.get(mid)
            if mk is not None and rec is not None and rec.mode == MODE_E2E:
                self.keys.set(mid, replace(mk, key=for_mode(mk.key, MODE_E2E), previous_key=(
                    for_mode(mk.previous_key, MODE_E2E) if mk.previous_key is not None else None)))
        self.keys.save()
        self.registry.save()

    def add(self, meter_id: str, *, feeder: str, epsilon_milli: int, clamp_wh: int, m: int,
            key: bytes | None = None, attributes: dict[str, Any] | None = None, household: str = "",
            replace_existing: bool = False, save: bool = True, mode: str = MODE_PROXY,
            household_fingerprint: str = "") -> KeyedMeter:
        """Register a meter (new random master key unless given); refuses duplicates. Keys are saved
        before the registry: a crash in between leaves a key nobody uses, never a meter without one.

        An end-to-end meter's master key must come from the caller (it goes into the meter's config);
        the key file and the returned KeyedMeter keep only what it derives for the gateway."""
        if meter_id in self.registry and not replace_existing:
            raise KeyError(f"meter {meter_id} already registered")
        if mode == MODE_E2E and key is None:
            raise ValueError(f"meter {meter_id}: an end-to-end meter's master key must be given: the gateway "
                             f"keeps only its MAC and status keys, so a key made here would be lost")
        rec = MeterRecord(meter_id=meter_id, feeder=feeder, epsilon_milli=int(epsilon_milli),
                          clamp_wh=int(clamp_wh), m=int(m), attributes=dict(attributes or {}), household=household,
                          mode=mode, household_fingerprint=household_fingerprint)
        secret = for_mode(key if key is not None else secrets.token_bytes(MASTER_KEY_BYTES), mode)
        self.keys.set(meter_id, MeterKey(secret))
        self.registry.put(rec, replace_existing=replace_existing, save=False)
        if save:
            self.save()
        return KeyedMeter(rec, secret)

    def rotate(self, meter_id: str, new_key: bytes | None = None, *, save: bool = True,
               now: float | None = None) -> KeyedMeter:
        """New master key; the old one stays usable for the grace period. For an end-to-end meter both
        are kept reduced (MAC and status keys), and the new master must be given, as in ``add``."""
        old, rec = self.keys.get(meter_id), self.registry.get(meter_id)
        if old is None or rec is None:
            raise KeyError(f"meter {meter_id} is not registered")
        if rec.mode == MODE_E2E and new_key is None:
            raise ValueError(f"meter {meter_id}: an end-to-end meter's new master key must be given")
        key = new_key if new_key is not None else secrets.token_bytes(MASTER_KEY_BYTES)
        _check_key(meter_id, key)
        now = time.time() if now is None else now
        self.keys.set(meter_id, MeterKey(for_mode(key, rec.mode), for_mode(old.key, rec.mode), int(now)))
        if save:
            self.keys.save(now)
        got = self.get(meter_id, now)
        assert got is not None
        return got
