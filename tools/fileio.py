"""File helpers for the tools: the tools' error type, and the project's one atomic writer
(host/common/files.py) wrapped so that an existing secret is a one-line ToolError.
"""

from __future__ import annotations

from pathlib import Path

from meterveil.host.common.files import write_private


class ToolError(Exception):
    """A user-facing mistake or environment problem; the CLI prints the message and exits 1."""


def write_secret(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write `data` to `path` with mode 0600; refuse to replace an existing file unless `overwrite`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_private(path, data, overwrite=overwrite)
    except FileExistsError:
        raise ToolError(f"{path} already exists; refusing to overwrite a secret (delete it or use the "
                        f"command's rotate/force option)") from None


def write_public(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Atomically write a non-secret file (certificates, configs without secrets, manifests)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, data, mode=mode)
