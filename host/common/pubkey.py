"""The utility's Paillier public key file, which every role may hold.

Why here: the gateway encrypts with it, the back office sums ciphertexts modulo its n^2, the
decryption role checks that its secret key belongs to it. The secret half lives only in
`meterveil.host.decryption.secret_key`; this module cannot read it.

File ``utility.pub.json``: ``{"kind": "paillier-public", "version": 1, "n": "<hex>", "hs": "<hex>",
"djn_exp_bits": int}``. ``hs = h^n mod n^2`` with ``h = -x^2 mod n`` for a random unit ``x`` is the fixed
n-th residue that end-to-end meters raise to a short random exponent (protocol/SPEC.md, "Kind 3"); it is
derived from public data and holds no secret. Files written before E2E mode lack it: ``ensure_e2e``
adds it.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gmpy2
from phe import paillier

from meterveil.host.common.files import write_private_json

PUBLIC_NAME = "utility.pub.json"
PUBLIC_KIND = "paillier-public"
SECRET_KIND = "paillier-secret"  # the kind the secret file carries; used here only to recognise one


class KeyFileError(ValueError):
    """A key or registry file is malformed (wrong kind, version or field)."""


def read_kind_json(path: Path, *kinds: str) -> dict[str, Any]:
    """A JSON key file whose ``kind`` is one of `kinds` and whose version is 1; KeyFileError otherwise."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise KeyFileError(f"{path}: not JSON ({exc.msg})") from None
    if not isinstance(data, dict) or data.get("kind") not in kinds or data.get("version") != 1:
        raise KeyFileError(f"{path}: expected kind {' or '.join(kinds)} version 1")
    return data


def resolve(path: str | os.PathLike[str], name: str) -> Path:
    """`path` itself, or `path/name` when `path` is a folder."""
    p = Path(path)
    return p / name if p.is_dir() else p


@dataclass(frozen=True)
class E2EPublic:
    """What an end-to-end meter needs from the public key: n, hs and the exponent length."""

    n: int
    hs: int
    exp_bits: int


def make_hs(n: int) -> int:
    """A fresh DJN base: hs = (-x^2 mod n)^n mod n^2 for a random unit x (as DJN 2010 and Intel IPCL)."""
    while True:
        x = secrets.randbelow(n - 2) + 2
        if math.gcd(x, n) == 1:
            break
    return int(gmpy2.powmod((-x * x) % n, n, n * n))


def load_e2e(path: str | os.PathLike[str]) -> E2EPublic:
    """n, hs and exponent length from ``utility.pub.json``; KeyFileError if it has no hs (see ensure_e2e)."""
    data = read_kind_json(resolve(path, PUBLIC_NAME), PUBLIC_KIND)
    if "hs" not in data:
        raise KeyFileError(f"{path}: public key has no hs for end-to-end meters (meterveil keys init writes "
                           f"it; provisioning an E2E meter adds it)")
    n = int(data["n"], 16)
    return E2EPublic(n, int(data["hs"], 16), int(data.get("djn_exp_bits") or n.bit_length() // 2))


def ensure_e2e(path: str | os.PathLike[str]) -> E2EPublic:
    """Add hs to an older public key file (public data only), then load it."""
    p = resolve(path, PUBLIC_NAME)
    data = read_kind_json(p, PUBLIC_KIND)
    if "hs" not in data:
        n = int(data["n"], 16)
        data.update(hs=f"{make_hs(n):x}", djn_exp_bits=n.bit_length() // 2)
        write_private_json(p, data, overwrite=True)
    return load_e2e(p)


def load_public(path: str | os.PathLike[str]) -> paillier.PaillierPublicKey:
    """Public key from ``utility.pub.json`` (``path`` may be the file or its folder)."""
    data = read_kind_json(resolve(path, PUBLIC_NAME), PUBLIC_KIND)
    return paillier.PaillierPublicKey(int(data["n"], 16))


def write_public(directory: str | os.PathLike[str], pub: paillier.PaillierPublicKey, *,
                 force: bool = False) -> Path:
    """Write ``utility.pub.json`` into `directory` (created 0700 if missing)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return write_private_json(d / PUBLIC_NAME, {"kind": PUBLIC_KIND, "version": 1, "n": f"{pub.n:x}",
                                                "hs": f"{make_hs(pub.n):x}", "djn_exp_bits": pub.n.bit_length() // 2},
                              overwrite=force)


def secret_keys_in(directory: str | os.PathLike[str]) -> list[Path]:
    """Files in `directory` that hold a Paillier secret key (by content, whatever their name).

    Why by content: a gateway must refuse to run beside the secret key even if someone renamed it.
    Unreadable or non-JSON files are skipped (they cannot be used by this process either).
    """
    found = []
    d = Path(directory)
    if not d.is_dir():
        return found
    for p in sorted(d.iterdir()):
        if not p.is_file() or p.stat().st_size > 1 << 20:
            continue
        try:
            data = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("kind") == SECRET_KIND:
            found.append(p)
    return found
