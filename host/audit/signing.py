"""The audit signing key pair: Ed25519, the secret half held by the decryption role only.

Why a signature and not only a hash chain: anyone with write access to the database can rewrite a
plain hash chain and recompute every hash. With each entry signed, a rewritten entry verifies only
for whoever holds the signing key; the auditor verifies with the public half.

Files: ``audit-signing.key.json`` (0600, decryption role) ``{"kind": "audit-signing-key", "version": 1,
"ed25519": hex}``; ``audit-verify.pub.json`` (auditors) ``{"kind": "audit-verify-key", "version": 1,
"ed25519": hex}``.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meterveil.host.common.files import write_private_json
from meterveil.host.common.pubkey import read_kind_json, resolve

SIGNING_NAME = "audit-signing.key.json"
VERIFY_NAME = "audit-verify.pub.json"
_RAW = serialization.Encoding.Raw


def generate(directory: str | os.PathLike[str], *, force: bool = False) -> tuple[Path, Path]:
    """New signing key pair written into `directory` (the decryption role's folder)."""
    d = Path(directory)
    sk = Ed25519PrivateKey.generate()
    raw = sk.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pk = sk.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
    a = write_private_json(d / SIGNING_NAME, {"kind": "audit-signing-key", "version": 1, "ed25519": raw.hex()},
                           overwrite=force)
    b = write_private_json(d / VERIFY_NAME, {"kind": "audit-verify-key", "version": 1, "ed25519": pk.hex()},
                           overwrite=force)
    # 0600 like every file in the role's (0700) folder: the key is public, and auditors get a copy
    return a, b


def load_signing(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    data = read_kind_json(resolve(path, SIGNING_NAME), "audit-signing-key")
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(data["ed25519"]))


def load_verify(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    data = read_kind_json(resolve(path, VERIFY_NAME), "audit-verify-key")
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(data["ed25519"]))


def public_of(sk: Ed25519PrivateKey) -> Ed25519PublicKey:
    return sk.public_key()


def sign(sk: Ed25519PrivateKey, domain: bytes, message: bytes) -> str:
    return sk.sign(domain + message).hex()


def check(pk: Ed25519PublicKey, domain: bytes, message: bytes, signature_hex: str) -> bool:
    try:
        pk.verify(bytes.fromhex(signature_hex), domain + message)
    except (InvalidSignature, ValueError):
        return False
    return True
