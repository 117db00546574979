"""Batch provisioning from a CSV: check every row first, then provision with a progress bar.

Why check first: a pilot's CSV of 200 meters with one typo on line 150 must not leave 149 meters
half-registered; either the whole file is sound or nothing is written.

End-to-end rows (a ``mode`` column, or ``--mode e2e`` for rows without one) get their household card in
CARD_DIR/<meter_id>/ and their complete config in METER_OUT/<meter_id>/, both outside the workspace,
exactly as a single `provision --mode e2e`.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from meterveil.host.common.pubkey import KeyFileError, ensure_e2e
from meterveil.host.common.registry import MODE_E2E

from . import mqtt_auth
from .fileio import ToolError
from .provision import (
    ATTRIBUTE_KEYS,
    FLOAT_FIELDS,
    INT_FIELDS,
    SPEC_FIELDS,
    MeterSpec,
    Provisioned,
    check_attribute,
    check_spec,
    e2e_outputs,
    open_registry,
    provision_one,
)
from .workspace import Workspace


def read_batch(path: Path, defaults: MeterSpec) -> list[MeterSpec]:
    """Parse a CSV (header: meter_id,feeder[,epsilon_milli,clamp_wh,m,interval_s,wifi_ssid,...]
    [,home_type,occupants,tariff_type,region]). Household attribute columns are optional; an empty
    cell keeps the default (--attr) for that attribute."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ToolError(f"cannot read --batch {path}: {e.strerror}") from None
    rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise ToolError(f"{path}: no meters (expected a header line meter_id,feeder,... and one row per meter)")
    allowed = [*SPEC_FIELDS, *ATTRIBUTE_KEYS]
    unknown = [c for c in rows[0] if c not in allowed]
    if unknown or "meter_id" not in rows[0]:
        raise ToolError(f"{path}: unknown column(s) {', '.join(map(str, unknown)) or '-'}; "
                        f"meter_id is required, allowed: {', '.join(allowed)}")
    specs, errors, seen = [], [], {}
    for n, row in enumerate(rows, 2):
        values: dict[str, Any] = {}
        attributes = dict(defaults.attributes)
        for k, v in row.items():
            if v is None or v.strip() == "":
                continue
            if k in ATTRIBUTE_KEYS:
                try:
                    attributes[k] = check_attribute(k, v)
                except ToolError as e:
                    errors.append(f"line {n}: {e}")
                continue
            try:
                values[k] = int(v) if k in INT_FIELDS else float(v) if k in FLOAT_FIELDS else v.strip()
            except ValueError:
                errors.append(f"line {n}: {k}={v!r} is not a number")
        spec = replace(defaults, **values, attributes=attributes)
        if spec.meter_id in seen:
            errors.append(f"line {n}: meter id {spec.meter_id} repeats line {seen[spec.meter_id]}")
        seen.setdefault(spec.meter_id, n)
        try:
            check_spec(spec)
        except ToolError as e:
            errors.append(f"line {n}: {e}")
        specs.append(spec)
    if errors:
        raise ToolError(f"{path} has {len(errors)} problem(s), nothing was provisioned:\n  " + "\n  ".join(errors))
    return specs


class Progress:
    """A text progress bar on a terminal, one line per item otherwise (logs, CI)."""

    def __init__(self, total: int, stream=None, width: int = 30):
        stream = stream if stream is not None else sys.stderr
        self.total, self.stream, self.width, self.done = total, stream, width, 0
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        filled = self.width * self.done // self.total
        bar = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {label}"
        if self.tty:
            self.stream.write("\r" + bar + ("\n" if self.done == self.total else ""))
        else:
            self.stream.write(bar + "\n")
        self.stream.flush()


def provision_batch(workspace: Path, csv_path: Path, defaults: MeterSpec, *, broker_url: str | None = None,
                    registry: Path | None = None, progress: Progress | None = None, card_dir: Path | None = None,
                    meter_out: Path | None = None) -> list[Provisioned]:
    ws = Workspace(Path(workspace))
    specs = read_batch(csv_path, defaults)
    if any(s.mode == MODE_E2E for s in specs):  # what a single e2e provision checks, before any row is written
        e2e_rows = ", ".join(s.meter_id for s in specs if s.mode == MODE_E2E)
        try:
            card_dir, meter_out = e2e_outputs(ws, card_dir, meter_out)
        except ToolError as e:
            raise ToolError(f"{csv_path}: end-to-end rows ({e2e_rows}): {e}; nothing was provisioned") from None
        try:
            ensure_e2e(ws.keys_dir)
        except (KeyFileError, FileNotFoundError) as e:
            raise ToolError(f"{csv_path}: end-to-end rows need the utility public key in {ws.keys_dir} "
                            f"(meterveil keys init): {e}; nothing was provisioned") from None
    reg = open_registry(ws, registry)
    users = mqtt_auth.read_passwd(ws.passwd)
    taken = [s.meter_id for s in specs if s.meter_id in reg or s.meter_id in users
             or ws.meter_config(s.meter_id).exists()]
    if taken:
        raise ToolError(f"{csv_path}: already provisioned: {', '.join(taken)}; nothing was provisioned "
                        f"(remove them from the CSV, or rotate them one by one with --rotate-key)")
    bar = progress or Progress(len(specs))
    done = []
    for spec in specs:
        e2e = spec.mode == MODE_E2E
        done.append(provision_one(workspace, spec, broker_url=broker_url, registry=registry,
                                  card_dir=card_dir if e2e else None,
                                  meter_out=meter_out / spec.meter_id if e2e and meter_out else None))
        bar.step(spec.meter_id)
    return done
