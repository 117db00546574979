"""Tariff maths on decrypted per-band period totals: integers and exact fractions, no floats.

Rounding rule (docs/TARIFFS.md): each bill line's exact amount Wh * price / 1000 is rounded once,
half up (ties away from zero), to a whole minor unit; the TOTAL row is the sum of the rounded
lines plus the fixed charge. With slabs, the slab lines price the period total and the band lines
carry only the ToU surcharge.

This module never sees ciphertexts; it is fed by the decryption role (host/decryption/role.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from meterveil.host.backoffice.tariff import Tariff

CSV_COLUMNS = (
    "meter_id", "period", "band", "kind", "wh", "kwh", "rate_minor_per_kwh", "amount_minor",
    "currency", "minor_unit", "readings", "missing_intervals",
)


class BillingError(ValueError):
    """Inputs a bill cannot be computed from (unknown band, negative slab total, ...)."""


@dataclass(frozen=True)
class BillLine:
    """One row of a bill. kind: energy | surcharge | slab | fixed | total."""

    band: str
    kind: str
    wh: int | None
    rate: Decimal | None
    amount_minor: int


@dataclass(frozen=True)
class Bill:
    meter_id: str
    period: str
    currency: str
    minor_unit: str
    lines: tuple[BillLine, ...]  # ends with the TOTAL line
    readings: int
    missing_intervals: int

    @property
    def total_minor(self) -> int:
        return self.lines[-1].amount_minor

    @property
    def total_wh(self) -> int:
        wh = self.lines[-1].wh
        return 0 if wh is None else wh


def round_half_up(x: Fraction) -> int:
    """Nearest integer, ties away from zero (Decimal's ROUND_HALF_UP), exact for any Fraction."""
    q = (abs(x.numerator) * 2 + x.denominator) // (2 * x.denominator)
    return q if x >= 0 else -q


def line_amount(wh: int, price_minor_per_kwh: Decimal) -> int:
    """Amount in minor units of `wh` at a price per kWh, rounded once (half up)."""
    return round_half_up(Fraction(wh) * Fraction(price_minor_per_kwh) / 1000)


def kwh_str(wh: int) -> str:
    """Wh integer -> kWh decimal string with exactly 3 decimals ('-0.250', '12.345')."""
    sign = "-" if wh < 0 else ""
    whole, frac = divmod(abs(wh), 1000)
    return f"{sign}{whole}.{frac:03d}"


def slab_split(total_wh: int, tariff: Tariff) -> list[int]:
    """Telescopic split of a period total into the tariff's slabs (Wh per slab)."""
    if total_wh < 0:
        raise BillingError(f"slab tariff {tariff.name!r} cannot price a negative period total ({total_wh} Wh)")
    out, lower = [], 0
    for slab in tariff.slabs:
        upper = total_wh if slab.upper_wh is None else min(total_wh, slab.upper_wh)
        out.append(max(0, upper - lower))
        lower = slab.upper_wh if slab.upper_wh is not None else lower
    return out


def compute_bill(
    tariff: Tariff,
    meter_id: str,
    period: str,
    band_wh: Mapping[str, int],
    readings: int = 0,
    missing_intervals: int = 0,
) -> Bill:
    """The bill of one household for one period from its decrypted Wh per band."""
    unknown = set(band_wh) - set(tariff.band_names)
    if unknown:
        raise BillingError(f"bands {sorted(unknown)} are not in tariff {tariff.name!r}")
    lines: list[BillLine] = []
    kind = "surcharge" if tariff.slabs else "energy"
    for band in tariff.bands:
        wh = int(band_wh.get(band.name, 0))
        lines.append(BillLine(band.name, kind, wh, band.price, line_amount(wh, band.price)))
    total_wh = sum(int(band_wh.get(b, 0)) for b in tariff.band_names)
    if tariff.slabs:
        lower = 0
        for i, (slab, wh) in enumerate(zip(tariff.slabs, slab_split(total_wh, tariff), strict=True)):
            hi = "" if slab.upper_wh is None else kwh_str(slab.upper_wh).rstrip("0").rstrip(".")
            lo = kwh_str(lower).rstrip("0").rstrip(".")
            label = f"slab{i + 1}:{lo}-{hi}kWh" if hi else f"slab{i + 1}:>{lo}kWh"
            lines.append(BillLine(label, "slab", wh, slab.price, line_amount(wh, slab.price)))
            lower = slab.upper_wh or lower
    lines.append(BillLine("FIXED", "fixed", None, None, tariff.fixed_charge_minor))
    total = sum(line.amount_minor for line in lines)
    lines.append(BillLine("TOTAL", "total", total_wh, None, total))
    return Bill(meter_id, period, tariff.currency, tariff.minor_unit, tuple(lines), readings, missing_intervals)


def expected_intervals(period_start: int, horizon: int, interval_len: int) -> int:
    """Number of interval slots (aligned to multiples of interval_len) that start in [period_start, horizon)."""
    if interval_len <= 0:
        raise BillingError(f"interval length must be positive, got {interval_len}")
    if horizon <= period_start:
        return 0
    first = -(-period_start // interval_len)  # ceil
    last = -(-horizon // interval_len)
    return last - first


def bill_rows(bills: Iterable[Bill]) -> list[dict[str, object]]:
    """CSV/DataFrame rows in CSV_COLUMNS order: one per line, TOTAL last per meter."""
    rows: list[dict[str, object]] = []
    for b in bills:
        for line in b.lines:
            rows.append({
                "meter_id": b.meter_id,
                "period": b.period,
                "band": line.band,
                "kind": line.kind,
                "wh": "" if line.wh is None else line.wh,
                "kwh": "" if line.wh is None else kwh_str(line.wh),
                "rate_minor_per_kwh": "" if line.rate is None else str(line.rate),
                "amount_minor": line.amount_minor,
                "currency": b.currency,
                "minor_unit": b.minor_unit,
                "readings": b.readings if line.kind == "total" else "",
                "missing_intervals": b.missing_intervals if line.kind == "total" else "",
            })
    return rows
