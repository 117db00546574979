"""Output files of the decryption role: paths checked before anything is decrypted, files written 0600.

Why before: every decryption is audited, so a command that decrypts and then cannot write its file
leaves audit entries for results nobody received. Why 0600: bills, feeder loads and exports are
released to whoever asked, not to every account on the machine.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

from meterveil.host.common.files import write_private


class OutputError(ValueError):
    """An output path that cannot be written."""


def prepare_output(path: str | Path, what: str = "--out") -> Path:
    """Check `path` can be written as a file and create its parent folder; one-line OutputError if not."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{what} {p} is a directory; give a file name")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{what} {p}: cannot create folder {p.parent} ({e.strerror or e})") from None
    if not p.parent.is_dir():
        raise OutputError(f"{what} {p}: {p.parent} is not a folder")
    if not os.access(p.parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise OutputError(f"{what} {p} is not writable")
    return p


def write_csv(path: str | Path, columns: Sequence[str], rows: list[dict[str, object]]) -> Path:
    """Write rows as CSV, 0600, atomically."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(columns))
    w.writeheader()
    w.writerows(rows)
    return write_private(path, buf.getvalue())
