"""The one atomic file writer for secrets and outputs: created with its final mode, never chmod-ed later.

Why one writer: a key or a bill written with the default umask and tightened afterwards is readable
for a moment, and a crash between write and rename must never leave half a file. Every role (the
gateway's meter keys, the decryption role's secret key and outputs, the tools' meter configs) goes
through `write_private`.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

PRIVATE_MODE = 0o600


def write_private(path: str | os.PathLike[str], data: bytes | str, *, overwrite: bool = True,
                  mode: int = PRIVATE_MODE) -> Path:
    """Write `data` to `path` atomically with `mode` (0600 by default) from the first byte.

    A temp file in the same folder is created with O_EXCL and the final mode, fsync-ed, then renamed
    over `path`. Raises FileExistsError if `path` exists and not `overwrite`.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite it")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # O_CREAT applies the umask; the mode asked for is the mode kept
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_private_json(path: str | os.PathLike[str], data: Any, *, overwrite: bool = True) -> Path:
    """`write_private` of indented, key-sorted JSON with a trailing newline."""
    return write_private(path, json.dumps(data, indent=1, sort_keys=True) + "\n", overwrite=overwrite)


def open_private_append(path: str | os.PathLike[str], *, binary: bool = False):
    """Open `path` for appending, created 0600 (an existing file is brought to 0600 too): logs and the
    anchor log grow line by line, so they cannot go through the atomic writer."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_MODE)
    try:
        os.fchmod(fd, PRIVATE_MODE)
        return os.fdopen(fd, "ab" if binary else "a")
    except BaseException:
        os.close(fd)
        raise


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` (and parents) as a 0700 folder if missing; return it."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    return p
