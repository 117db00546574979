"""The decryption role's folder and how a session opens it.

Why one folder: everything only this role holds sits together, apart from the gateway's keys,
with one permission (0700): the Paillier secret key, the audit signing key, the role's own database
(signed audit log; the release ledger is folded from it) and the anchor log.

    ROLE_DIR/utility.key.json        Paillier secret key (0600)
    ROLE_DIR/audit-signing.key.json  Ed25519 audit signing key (0600)
    ROLE_DIR/audit-verify.pub.json   its public half, for auditors
    ROLE_DIR/decryption.db           signed audit log (never the ingest store)
    ROLE_DIR/audit-anchors.jsonl     signed heads, one per session (copy them off this machine)
"""

from __future__ import annotations

import os
from pathlib import Path

from meterveil.host.audit import signing
from meterveil.host.audit.anchors import ANCHORS_NAME
from meterveil.host.audit.chain import AuditLog
from meterveil.host.common.registry import MeterRegistry
from meterveil.host.decryption.policy import Policy, PolicyError
from meterveil.host.decryption.role import DecryptionRole
from meterveil.host.decryption.secret_key import SECRET_NAME, load_private

DB_NAME = "decryption.db"


def role_paths(role_dir: str | os.PathLike[str]) -> dict[str, Path]:
    d = Path(role_dir)
    return {"secret": d / SECRET_NAME, "signing": d / signing.SIGNING_NAME, "verify": d / signing.VERIFY_NAME,
            "db": d / DB_NAME, "anchors": d / ANCHORS_NAME}


def check_role_dir(role_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Paths of a usable role folder; PolicyError naming what is missing."""
    d = Path(role_dir)
    if not d.is_dir():
        raise PolicyError(f"decryption role folder {d} does not exist (create it with `meterveil keys init "
                          f"--dir GATEWAY_KEYS --secret-dir {d}`)")
    paths = role_paths(d)
    for what in ("secret", "signing"):
        if not paths[what].is_file():
            raise PolicyError(f"{d}: no {paths[what].name} (not a decryption role folder made by `keys init`)")
    return paths


def open_role(role_dir: str | os.PathLike[str], actor: str, policy: Policy | None = None,
              registry: MeterRegistry | None = None) -> DecryptionRole:
    """Open a decryption session: secret key, signing key, the role's database; verifies the audit
    chain against the newest anchor before anything is decrypted."""
    paths = check_role_dir(role_dir)
    priv = load_private(paths["secret"])
    audit = AuditLog(paths["db"], signer=signing.load_signing(paths["signing"]))
    try:
        return DecryptionRole(priv, audit, actor, policy, registry=registry, anchor_path=paths["anchors"])
    except BaseException:
        audit.close()
        raise


def close_role(role: DecryptionRole) -> None:
    try:
        role.close()
    finally:
        role.audit.close()
