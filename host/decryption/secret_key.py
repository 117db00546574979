"""The utility's Paillier secret key: generated here, held only by the decryption role.

Why a folder of its own: the secret key must never sit where the gateway's keys live (the gateway
refuses to start beside one). ``meterveil keys init`` writes ``utility.key.json`` (0600) into the
decryption role's folder (0700) and only the public half into the gateway's folder.

File ``utility.key.json``: ``{"kind": "paillier-secret", "version": 1, "n", "p", "q"}`` (hex).
"""

from __future__ import annotations

import os
from pathlib import Path

from phe import paillier

from meterveil.host.common.files import private_dir, write_private_json
from meterveil.host.common.pubkey import SECRET_KIND, KeyFileError, read_kind_json, resolve

SECRET_NAME = "utility.key.json"
DEFAULT_BITS = 2048


def generate_keypair(bits: int = DEFAULT_BITS) -> tuple[paillier.PaillierPublicKey, paillier.PaillierPrivateKey]:
    """New utility Paillier key pair (g = n + 1, as phe does)."""
    if bits < 512 or bits % 8:
        raise ValueError("bits must be a multiple of 8 and >= 512")
    return paillier.generate_paillier_keypair(n_length=bits)


def write_secret(directory: str | os.PathLike[str], priv: paillier.PaillierPrivateKey, *,
                 force: bool = False) -> Path:
    """Write ``utility.key.json`` (0600) into `directory` (created 0700)."""
    d = private_dir(directory)
    pub = priv.public_key
    return write_private_json(d / SECRET_NAME, {"kind": SECRET_KIND, "version": 1, "n": f"{pub.n:x}",
                                                "p": f"{priv.p:x}", "q": f"{priv.q:x}"}, overwrite=force)


def load_private(path: str | os.PathLike[str]) -> paillier.PaillierPrivateKey:
    """Secret key (with its public key) from ``utility.key.json`` (file or folder); checks p*q == n."""
    p = resolve(path, SECRET_NAME)
    data = read_kind_json(p, SECRET_KIND)
    n, pp, qq = (int(data[k], 16) for k in ("n", "p", "q"))
    if pp * qq != n:
        raise KeyFileError(f"{p}: p*q != n")
    return paillier.PaillierPrivateKey(paillier.PaillierPublicKey(n), pp, qq)
