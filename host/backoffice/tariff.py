"""Time-of-use tariffs loaded from TOML (schema: docs/TARIFFS.md).

Why a grid: the bands are validated once into a 7x24 table (weekday x local hour -> band), so
"every hour of every weekday is covered exactly once" is checked at load time and assigning an
interval to a band is one lookup. Prices are Decimals parsed from strings (never binary floats),
so fractional minor units per kWh such as "812.5" paise stay exact.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# The tariff the demo and the docs bill with (and the export's fallback zone): a file in the checkout.
DEFAULT_TARIFF = Path(__file__).resolve().parents[2] / "tariffs" / "tou3.toml"

try:  # Python 3.11+
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # datetime.weekday() order
_HOURS_RE = re.compile(r"^\s*(\d{1,2})\s*-\s*(\d{1,2})\s*$")
_PERIOD_RE = re.compile(r"^(\d{4})-(\d{2})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_RESERVED_NAMES = {"TOTAL", "FIXED"}


class TariffError(ValueError):
    """A tariff file is malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class Band:
    """A time-of-use band. `price` is the energy price per kWh (no slabs) or the ToU surcharge (slabs)."""

    name: str
    price: Decimal


@dataclass(frozen=True)
class Slab:
    """One telescopic slab: kWh of the period total up to `upper_wh` (None: no upper bound) at `price`."""

    upper_wh: int | None
    price: Decimal


@dataclass(frozen=True)
class Tariff:
    name: str
    currency: str
    minor_unit: str
    timezone: str
    fixed_charge_minor: int
    bands: tuple[Band, ...]
    slabs: tuple[Slab, ...]
    grid: tuple[tuple[int, ...], ...]  # grid[weekday][hour] -> index into bands

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    def band_of(self, interval_start: int) -> str:
        """Band of an interval, decided by its start time (UTC epoch seconds) in the tariff's zone."""
        local = datetime.fromtimestamp(interval_start, tz=self.tz)
        return self.bands[self.grid[local.weekday()][local.hour]].name

    def period_bounds(self, period: str) -> tuple[int, int]:
        """[start, end) of a billing period 'YYYY-MM' as UTC epoch seconds: local calendar month."""
        return period_bounds(period, self.tz)


def period_bounds(period: str, tz: ZoneInfo) -> tuple[int, int]:
    """Local-midnight month boundaries of `period` ('YYYY-MM') in `tz`, as UTC epoch seconds."""
    m = _PERIOD_RE.match(period)
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise TariffError(f"billing period {period!r} is not YYYY-MM")
    year, month = int(m.group(1)), int(m.group(2))
    start = datetime(year, month, 1, tzinfo=tz)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=tz)
    return int(start.timestamp()), int(end.timestamp())


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or isinstance(value, float):
        raise TariffError(f"{where}: write {value!r} as a decimal string (e.g. \"812.5\"), not a float")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            raise TariffError(f"{where}: {value!r} is not a decimal number") from None
        if not d.is_finite():
            raise TariffError(f"{where}: {value!r} is not a finite number")
        return d
    raise TariffError(f"{where}: expected a decimal string or integer, got {type(value).__name__}")


def _days(spec: Any, where: str) -> list[int]:
    items = [spec] if isinstance(spec, str) else spec
    if not isinstance(items, list) or not items:
        raise TariffError(f"{where}: days must be a string or a non-empty list such as [\"mon-fri\"]")
    out: list[int] = []
    for item in items:
        if not isinstance(item, str):
            raise TariffError(f"{where}: day {item!r} is not a string")
        s = item.strip().lower()
        if s == "all":
            out.extend(range(7))
            continue
        lo, _, hi = s.partition("-")
        if lo not in DAYS or (hi and hi not in DAYS):
            raise TariffError(f"{where}: unknown day {item!r} (use mon..sun, a range like mon-fri, or all)")
        a, b = DAYS.index(lo), DAYS.index(hi or lo)
        out.extend((a + i) % 7 for i in range((b - a) % 7 + 1))  # ranges may wrap: fri-mon
    return out


def _hours(spec: Any, where: str) -> list[int]:
    items = [spec] if isinstance(spec, str) else spec
    if not isinstance(items, list) or not items:
        raise TariffError(f"{where}: hours must be a string or a non-empty list such as [\"00-06\", \"22-24\"]")
    out: list[int] = []
    for item in items:
        m = _HOURS_RE.match(item) if isinstance(item, str) else None
        if not m:
            raise TariffError(f"{where}: hours {item!r} is not 'HH-HH' (start inclusive, end exclusive)")
        a, b = int(m.group(1)), int(m.group(2))
        if not 0 <= a < b <= 24:
            raise TariffError(f"{where}: hours {item!r} must satisfy 0 <= start < end <= 24 (split ranges that cross midnight)")
        out.extend(range(a, b))
    return out


def _ranges(hours: list[int]) -> str:
    """[0,1,2,5] -> '00-03, 05-06' for error messages."""
    parts, start = [], None
    for i, h in enumerate(hours):
        if start is None:
            start = h
        if i + 1 == len(hours) or hours[i + 1] != h + 1:
            parts.append(f"{start:02d}-{h + 1:02d}")
            start = None
    return ", ".join(parts)


def parse_tariff(doc: Mapping[str, Any], source: str = "<tariff>") -> Tariff:
    """Validate a decoded TOML document into a Tariff; every error names `source` and the field."""

    def need(key: str, kind: type) -> Any:
        if key not in doc:
            raise TariffError(f"{source}: missing required key {key!r}")
        if not isinstance(doc[key], kind):
            raise TariffError(f"{source}: {key!r} must be a {kind.__name__}")
        return doc[key]

    name = need("name", str)
    currency = need("currency", str)
    minor_unit = need("minor_unit", str)
    tzname = doc.get("timezone", "UTC")
    try:
        ZoneInfo(tzname)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise TariffError(f"{source}: unknown time zone {tzname!r}") from None
    fixed = _decimal(doc.get("fixed_charge_minor", 0), f"{source}: fixed_charge_minor")
    if fixed != fixed.to_integral_value() or fixed < 0:
        raise TariffError(f"{source}: fixed_charge_minor must be a non-negative whole number of minor units")

    raw_slabs = doc.get("slabs", [])
    if not isinstance(raw_slabs, list):
        raise TariffError(f"{source}: slabs must be an array of tables [[slabs]]")
    slabs: list[Slab] = []
    prev_upper = 0
    for i, s in enumerate(raw_slabs):
        where = f"{source}: slabs[{i}]"
        if not isinstance(s, dict):
            raise TariffError(f"{where} must be a table")
        price = _decimal(s.get("price_minor_per_kwh"), f"{where}.price_minor_per_kwh")
        if price < 0:
            raise TariffError(f"{where}.price_minor_per_kwh must not be negative")
        upper: int | None = None
        if "up_to_kwh" in s:
            kwh = _decimal(s["up_to_kwh"], f"{where}.up_to_kwh")
            wh = kwh * 1000
            if wh != wh.to_integral_value():
                raise TariffError(f"{where}.up_to_kwh {s['up_to_kwh']!r} is finer than 1 Wh")
            upper = int(wh)
            if upper <= prev_upper:
                raise TariffError(f"{where}.up_to_kwh must be greater than the previous slab's bound")
            prev_upper = upper
        elif i != len(raw_slabs) - 1:
            raise TariffError(f"{where}: only the last slab may omit up_to_kwh")
        slabs.append(Slab(upper, price))
    if slabs and slabs[-1].upper_wh is not None:
        raise TariffError(f"{source}: the last slab must omit up_to_kwh so every kWh has a price")

    price_key = "surcharge_minor_per_kwh" if slabs else "price_minor_per_kwh"
    wrong_key = "price_minor_per_kwh" if slabs else "surcharge_minor_per_kwh"
    raw_bands = doc.get("bands")
    if not isinstance(raw_bands, list) or not raw_bands:
        raise TariffError(f"{source}: at least one [[bands]] table is required")
    bands: list[Band] = []
    grid: list[list[int | None]] = [[None] * 24 for _ in range(7)]
    clashes: list[str] = []
    for bi, b in enumerate(raw_bands):
        where = f"{source}: bands[{bi}]"
        if not isinstance(b, dict):
            raise TariffError(f"{where} must be a table")
        bname = b.get("name")
        if not isinstance(bname, str) or not _NAME_RE.match(bname) or bname.upper() in _RESERVED_NAMES:
            raise TariffError(f"{where}.name must be 1-32 chars of A-Za-z0-9_- and not TOTAL/FIXED")
        if bname in (x.name for x in bands):
            raise TariffError(f"{where}: duplicate band name {bname!r}")
        if wrong_key in b:
            why = "with [[slabs]] the slabs set the energy price; bands carry only a ToU surcharge" if slabs \
                else "surcharges apply only together with [[slabs]]"
            raise TariffError(f"{where} ({bname}): use {price_key!r}, not {wrong_key!r} ({why})")
        price = _decimal(b.get(price_key, 0 if slabs else None), f"{where}.{price_key}")
        if not slabs and price < 0:
            raise TariffError(f"{where}.{price_key} must not be negative")
        windows = b.get("windows")
        if not isinstance(windows, list) or not windows:
            raise TariffError(f"{where} ({bname}): windows must be a non-empty list of {{days=..., hours=...}}")
        for wi, w in enumerate(windows):
            wwhere = f"{where}.windows[{wi}]"
            if not isinstance(w, dict) or set(w) - {"days", "hours"}:
                raise TariffError(f"{wwhere}: a window is a table with keys days and hours only")
            for d in _days(w.get("days"), wwhere):
                for h in _hours(w.get("hours"), wwhere):
                    other = grid[d][h]
                    if other is not None:
                        clashes.append(f"{DAYS[d]} {h:02d}h in both {bands[other].name if other < len(bands) else bname!r} and {bname!r}")
                    grid[d][h] = bi
        bands.append(Band(bname, price))
    if clashes:
        raise TariffError(f"{source}: bands overlap: " + "; ".join(clashes[:6]) + (" ..." if len(clashes) > 6 else ""))
    gaps = [f"{DAYS[d]} {_ranges([h for h in range(24) if grid[d][h] is None])}"
            for d in range(7) if any(x is None for x in grid[d])]
    if gaps:
        raise TariffError(f"{source}: hours not covered by any band: " + "; ".join(gaps))
    return Tariff(
        name=name, currency=currency, minor_unit=minor_unit, timezone=tzname,
        fixed_charge_minor=int(fixed), bands=tuple(bands), slabs=tuple(slabs),
        grid=tuple(tuple(int(x) for x in row) for row in grid),  # type: ignore[arg-type]
    )


def load_tariff(path: str | Path) -> Tariff:
    """Read and validate a tariff TOML file."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TariffError(f"tariff file {p} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise TariffError(f"{p}: invalid TOML: {e}") from None
    return parse_tariff(doc, str(p))


__all__ = [
    "DAYS", "Band", "Slab", "Tariff", "TariffError", "load_tariff", "parse_tariff", "period_bounds"]
