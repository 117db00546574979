"""Small file helpers for the tools: secrets are created 0600 at open time, never chmod-ed afterwards.

Why: a key written with the default umask and tightened later is readable for a moment;
os.open(mode=0o600) closes that window. Replacements go through a temp file + rename so a crash
never leaves half a key or half a config behind.
"""

from __future__ import annotations

import os
from pathlib import Path


class ToolError(Exception):
    """A user-facing mistake or environment problem; the CLI prints the message and exits 1."""


def write_secret(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write `data` to `path` with mode 0600; refuse to replace an existing file unless `overwrite`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise ToolError(f"{path} already exists; refusing to overwrite a secret (delete it or use the "
                        f"command's rotate/force option)")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_public(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Atomically write a non-secret file (certificates, configs without secrets, manifests)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
