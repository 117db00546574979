"""Test helpers that set up each role's folder the way `keys init` and provisioning do."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from meterveil.host.audit import signing
from meterveil.host.audit.chain import AuditLog
from meterveil.host.common.pubkey import secret_keys_in, write_public
from meterveil.host.common.registry import MeterRecord, MeterRegistry
from meterveil.host.decryption import secret_key
from meterveil.host.decryption.policy import Policy
from meterveil.host.decryption.role import DecryptionRole
from meterveil.host.decryption.session import role_paths
from meterveil.host.gateway.meter_keys import KEYS_NAME
from meterveil.host.store.base import open_store
from meterveil.protocol import e2e, frame

# What the gateway's key file may hold for an end-to-end meter (host/gateway/meter_keys.py).
E2E_ENTRY_FIELDS = {"mac_key", "status_key", "previous_mac_key", "previous_status_key", "rotated_at"}


def split_keys(root: Path, pub, priv) -> tuple[Path, Path]:
    """(gateway keys folder, decryption role folder) under `root`, as `keys init` writes them."""
    gw, role = Path(root) / "keys", Path(root) / "decryption"
    write_public(gw, pub, force=True)
    if not (role / secret_key.SECRET_NAME).exists():
        secret_key.write_secret(role, priv)
        signing.generate(role)
    return gw, role


def assert_no_value_keys(keys_dir: Path, meters: dict[str, tuple[bytes, bytes]]) -> None:
    """The gateway's keys folder holds, for each end-to-end meter, its MAC key and status key and nothing a
    reading value could be recovered from: not its master key (which derives all of the meter's keys), not
    its household key or a key derived from it, no Paillier secret key. `meters`: id -> (master, household)."""
    entries = json.loads((Path(keys_dir) / KEYS_NAME).read_text())["meters"]
    everything = b"".join(p.read_bytes() for p in Path(keys_dir).rglob("*") if p.is_file())
    assert secret_keys_in(keys_dir) == []
    for mid, (master, household) in meters.items():
        entry = entries[mid]
        assert set(entry) <= E2E_ENTRY_FIELDS and "key" not in entry, f"{mid}: {sorted(entry)}"
        status, mac = frame.derive_keys(master)
        assert (bytes.fromhex(entry["status_key"]), bytes.fromhex(entry["mac_key"])) == (status, mac)
        for secret in (master, household, *e2e.household_keys(household)):
            assert secret.hex().encode() not in everything and secret not in everything, mid


def role_dir_for(db: Path, priv) -> Path:
    """The decryption role folder used for a test store `db` (next to it)."""
    d = Path(db).parent / "decryption"
    if not (d / secret_key.SECRET_NAME).exists():
        secret_key.write_secret(d, priv)
        signing.generate(d)
    return d


def registry_from_store(db: Path, path: Path | None = None, **dp) -> MeterRegistry:
    """A registry listing every meter the store has readings of, on the feeder its readings name."""
    path = Path(path or Path(db).parent / "registry" / "meters.json")
    reg = MeterRegistry.load(path)
    store = open_store(db, create=False)
    try:
        for info in store.meters():
            if info.meter_id not in reg:
                first = next(store.iter_readings(meter_id=info.meter_id))
                reg.put(MeterRecord(info.meter_id, info.feeder, dp.get("epsilon_milli", first.epsilon_milli),
                                    dp.get("clamp_wh", first.clamp_wh), dp.get("m", first.m)), save=False)
    finally:
        store.close()
    reg.save()
    return reg


def role_for(db: Path, priv, *, registry: MeterRegistry | None = None, actor: str = "ops",
             **policy) -> DecryptionRole:
    """A decryption session for the store `db`: role folder next to it, registry from the store unless given."""
    reg = registry if registry is not None else registry_from_store(db)
    paths = role_paths(role_dir_for(db, priv))
    audit = AuditLog(paths["db"], signer=signing.load_signing(paths["signing"]))
    return DecryptionRole(priv, audit, actor, Policy(**policy), registry=reg, anchor_path=paths["anchors"])


def audit_db(db: Path) -> Path:
    return role_paths(Path(db).parent / "decryption")["db"]


@contextmanager
def session(db: Path, priv, actor: str, policy: Policy | None = None, registry: MeterRegistry | None = None):
    """A decryption session (role folder next to `db`), closed (anchor written) on exit."""
    paths = role_paths(role_dir_for(db, priv))
    audit = AuditLog(paths["db"], signer=signing.load_signing(paths["signing"]))
    role = DecryptionRole(priv, audit, actor, policy, registry=registry, anchor_path=paths["anchors"])
    try:
        yield role
    finally:
        role.close()
        audit.close()
