"""Anchors: the audit log's head, signed and appended to a file outside the database after every session.

Why: a signed hash chain still verifies after its last entries are cut off. An anchor records
(seq, hash) of the head at the end of each decryption session, so `audit verify` can demand that the
chain still reaches the newest anchor. Keep the anchor file where whoever can write the database
cannot (another disk, a log shipper, the auditor's machine); by default it sits next to the database.

Format: one canonical JSON object per line, ``{"seq", "hash", "ts", "sig"}``; ``sig`` is Ed25519 over
the domain, seq and hash with the audit signing key.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meterveil.host.audit import signing
from meterveil.host.common.files import open_private_append

ANCHOR_DOMAIN = b"meterveil/audit-anchor/v1\0"
ANCHORS_NAME = "audit-anchors.jsonl"


class AnchorError(ValueError):
    """The anchor file is missing, unreadable or holds a line that does not verify."""


@dataclass(frozen=True)
class Anchor:
    seq: int
    hash: str
    ts: str


def _message(seq: int, h: str) -> bytes:
    return f"{seq}:{h}".encode()


def append(path: str | os.PathLike[str], seq: int, entry_hash: str, signer: Ed25519PrivateKey) -> Anchor:
    """Append a signed anchor line. The file is 0600 like everything in the role's folder: anchors hold
    no secret, and the auditor gets them as a shipped copy, not by reading this folder."""
    ts = datetime.now(timezone.utc).isoformat(timespec="seconds")
    line = json.dumps({"seq": seq, "hash": entry_hash, "ts": ts,
                       "sig": signing.sign(signer, ANCHOR_DOMAIN, _message(seq, entry_hash))},
                      sort_keys=True, separators=(",", ":"))
    with open_private_append(path) as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return Anchor(seq, entry_hash, ts)


def latest(path: str | os.PathLike[str], verify_key: Ed25519PublicKey) -> Anchor | None:
    """The newest anchor in `path` after checking every line's signature; None if the file is empty.

    Anchors must not go backwards (a later line with a smaller seq means the file was edited)."""
    p = Path(path)
    if not p.exists():
        raise AnchorError(f"no anchor file {p}: without one, truncation of the audit log cannot be ruled out")
    newest: Anchor | None = None
    for n, raw in enumerate(p.read_text().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            d = json.loads(raw)
            a = Anchor(int(d["seq"]), str(d["hash"]), str(d["ts"]))
            ok = signing.check(verify_key, ANCHOR_DOMAIN, _message(a.seq, a.hash), str(d["sig"]))
        except (ValueError, KeyError, TypeError):
            raise AnchorError(f"{p}:{n}: not an anchor line") from None
        if not ok:
            raise AnchorError(f"{p}:{n}: anchor signature does not verify (forged or edited)")
        if newest is not None and a.seq < newest.seq:
            raise AnchorError(f"{p}:{n}: anchor seq {a.seq} goes back from {newest.seq} (file edited)")
        newest = a
    return newest
