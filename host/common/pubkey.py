"""The utility's Paillier public key file, which every role may hold.

Why here: the gateway encrypts with it, the back office sums ciphertexts modulo its n^2, the
decryption role checks that its secret key belongs to it. The secret half lives only in
`meterveil.host.decryption.secret_key`; this module cannot read it.

File ``utility.pub.json``: ``{"kind": "paillier-public", "version": 1, "n": "<hex>"}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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


def load_public(path: str | os.PathLike[str]) -> paillier.PaillierPublicKey:
    """Public key from ``utility.pub.json`` (``path`` may be the file or its folder)."""
    data = read_kind_json(resolve(path, PUBLIC_NAME), PUBLIC_KIND)
    return paillier.PaillierPublicKey(int(data["n"], 16))


def write_public(directory: str | os.PathLike[str], pub: paillier.PaillierPublicKey, *,
                 force: bool = False) -> Path:
    """Write ``utility.pub.json`` into `directory` (created 0700 if missing)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return write_private_json(d / PUBLIC_NAME, {"kind": PUBLIC_KIND, "version": 1, "n": f"{pub.n:x}"},
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
