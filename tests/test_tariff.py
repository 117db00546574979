"""Tariff TOML loading: the shipped examples load, bands cover the week exactly once, errors are clear."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from meterveil.host.backoffice.tariff import TariffError, load_tariff, parse_tariff, period_bounds

TARIFFS = Path(__file__).resolve().parent.parent / "tariffs"


def _doc(**over):
    doc = {
        "name": "t", "currency": "EUR", "minor_unit": "cent", "timezone": "UTC", "fixed_charge_minor": 100,
        "bands": [
            {"name": "day", "price_minor_per_kwh": "30.5", "windows": [{"days": "all", "hours": "06-22"}]},
            {"name": "night", "price_minor_per_kwh": "20", "windows": [{"days": "all", "hours": ["00-06", "22-24"]}]},
        ],
    }
    doc.update(over)
    return doc


def _epoch(tz: str, *args: int) -> int:
    return int(datetime(*args, tzinfo=ZoneInfo(tz)).timestamp())


def test_shipped_tariffs_load():
    flat, tou3, slabs = (load_tariff(TARIFFS / f"{n}.toml") for n in ("flat", "tou3", "slabs"))
    assert flat.band_names == ("flat",) and flat.bands[0].price == Decimal("31.87") and not flat.slabs
    assert tou3.band_names == ("peak", "shoulder", "offpeak")
    assert tou3.bands[0].price == Decimal("812.5") and tou3.fixed_charge_minor == 12000
    assert [s.upper_wh for s in slabs.slabs] == [100_000, 300_000, None]
    assert slabs.bands[0].price == Decimal("75.25")  # a surcharge when slabs exist


def test_band_of_uses_local_time_of_interval_start():
    tou3 = load_tariff(TARIFFS / "tou3.toml")  # Asia/Kolkata, UTC+05:30
    # Monday 2026-11-02 09:00 IST is peak; 08:45 IST is shoulder; 05:45 offpeak; Saturday 10:00 shoulder.
    assert tou3.band_of(_epoch("Asia/Kolkata", 2026, 11, 2, 9, 0)) == "peak"
    assert tou3.band_of(_epoch("Asia/Kolkata", 2026, 11, 2, 8, 45)) == "shoulder"
    assert tou3.band_of(_epoch("Asia/Kolkata", 2026, 11, 2, 5, 45)) == "offpeak"
    assert tou3.band_of(_epoch("Asia/Kolkata", 2026, 11, 7, 10, 0)) == "shoulder"
    # 03:30 UTC on a Monday is 09:00 IST: peak, although the UTC hour is 3
    assert tou3.band_of(int(datetime(2026, 11, 2, 3, 30, tzinfo=timezone.utc).timestamp())) == "peak"


def test_band_of_across_dst_change():
    flat_berlin = parse_tariff(_doc(timezone="Europe/Berlin"))
    # 2026-10-25: clocks go back at 03:00 CEST -> 02:00 CET. 05:00 UTC = 06:00 CET (day); 04:30 UTC = 05:30 (night)
    assert flat_berlin.band_of(int(datetime(2026, 10, 25, 5, 0, tzinfo=timezone.utc).timestamp())) == "day"
    assert flat_berlin.band_of(int(datetime(2026, 10, 25, 4, 30, tzinfo=timezone.utc).timestamp())) == "night"
    # in summer time 04:30 UTC = 06:30 CEST (day)
    assert flat_berlin.band_of(int(datetime(2026, 7, 1, 4, 30, tzinfo=timezone.utc).timestamp())) == "day"


def test_period_bounds_are_local_calendar_month():
    start, end = period_bounds("2026-11", ZoneInfo("Asia/Kolkata"))
    assert start == int(datetime(2026, 10, 31, 18, 30, tzinfo=timezone.utc).timestamp())
    assert end - start == 30 * 86400
    s12, e12 = period_bounds("2026-12", ZoneInfo("UTC"))
    assert datetime.fromtimestamp(e12, timezone.utc) == datetime(2027, 1, 1, tzinfo=timezone.utc)
    assert e12 - s12 == 31 * 86400
    # Berlin October has 31 days + 1 hour (DST ends)
    so, eo = period_bounds("2026-10", ZoneInfo("Europe/Berlin"))
    assert eo - so == 31 * 86400 + 3600
    for bad in ("2026-13", "2026-1", "26-11", "2026/11"):
        with pytest.raises(TariffError, match="YYYY-MM"):
            period_bounds(bad, ZoneInfo("UTC"))


def test_gap_is_named():
    doc = _doc()
    doc["bands"][1]["windows"] = [{"days": "mon-fri", "hours": ["00-06", "22-24"]},
                                  {"days": "sat", "hours": "00-06"}]
    with pytest.raises(TariffError, match=r"not covered by any band: sat 22-24; sun 00-06, 22-24"):
        parse_tariff(doc, "x.toml")


def test_overlap_is_named():
    doc = _doc()
    doc["bands"][0]["windows"] = [{"days": "all", "hours": "05-22"}]
    with pytest.raises(TariffError, match=r"overlap: mon 05h in both 'day' and 'night'"):
        parse_tariff(doc)


def test_overlap_within_one_band():
    doc = _doc()
    doc["bands"][0]["windows"] = [{"days": "all", "hours": "06-22"}, {"days": "tue", "hours": "10-11"}]
    with pytest.raises(TariffError, match=r"tue 10h in both 'day' and 'day'"):
        parse_tariff(doc)


@pytest.mark.parametrize("change,message", [
    ({"timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"fixed_charge_minor": "12.5"}, "whole number"),
    ({"fixed_charge_minor": 1.5}, "not a float"),
    ({"currency": None}, "'currency' must be a str"),
    ({"bands": []}, "at least one"),
])
def test_top_level_errors(change, message):
    doc = _doc(**change)
    if change.get("currency", "") is None:
        del doc["currency"]
        message = "missing required key 'currency'"
    with pytest.raises(TariffError, match=message):
        parse_tariff(doc)


@pytest.mark.parametrize("band_change,message", [
    ({"price_minor_per_kwh": 30.5}, "decimal string"),
    ({"price_minor_per_kwh": "abc"}, "not a decimal"),
    ({"price_minor_per_kwh": "-1"}, "must not be negative"),
    ({"name": "TOTAL"}, "not TOTAL/FIXED"),
    ({"name": "night"}, "duplicate band name"),
    ({"windows": [{"days": "moonday", "hours": "06-22"}]}, "unknown day"),
    ({"windows": [{"days": "all", "hours": "22-06"}]}, "split ranges that cross midnight"),
    ({"windows": [{"days": "all", "hours": "6pm"}]}, "not 'HH-HH'"),
    ({"windows": [{"days": "all", "hours": "06-22", "months": "jan"}]}, "keys days and hours only"),
    ({"surcharge_minor_per_kwh": "5"}, "surcharges apply only together with"),
])
def test_band_errors(band_change, message):
    doc = _doc()
    doc["bands"][0].update(band_change)
    with pytest.raises(TariffError, match=message):
        parse_tariff(doc)


def test_day_ranges_wrap_and_all():
    doc = _doc()
    doc["bands"] = [
        {"name": "wk", "price_minor_per_kwh": "1", "windows": [{"days": "mon-thu", "hours": "00-24"}]},
        {"name": "we", "price_minor_per_kwh": "2", "windows": [{"days": "fri-sun", "hours": "00-24"}]},
    ]
    t = parse_tariff(doc)
    assert [t.bands[t.grid[d][12]].name for d in range(7)] == ["wk"] * 4 + ["we"] * 3


def test_slab_rules():
    base = _doc()
    for b in base["bands"]:
        b["surcharge_minor_per_kwh"] = b.pop("price_minor_per_kwh")
    ok = parse_tariff({**base, "slabs": [{"up_to_kwh": "50.5", "price_minor_per_kwh": "1"},
                                         {"price_minor_per_kwh": "2"}]})
    assert [s.upper_wh for s in ok.slabs] == [50_500, None]
    with pytest.raises(TariffError, match="last slab must omit up_to_kwh"):
        parse_tariff({**base, "slabs": [{"up_to_kwh": "50", "price_minor_per_kwh": "1"}]})
    with pytest.raises(TariffError, match="only the last slab may omit"):
        parse_tariff({**base, "slabs": [{"price_minor_per_kwh": "1"}, {"price_minor_per_kwh": "2"}]})
    with pytest.raises(TariffError, match="greater than the previous"):
        parse_tariff({**base, "slabs": [{"up_to_kwh": "50", "price_minor_per_kwh": "1"},
                                        {"up_to_kwh": "50", "price_minor_per_kwh": "1"},
                                        {"price_minor_per_kwh": "2"}]})
    with pytest.raises(TariffError, match="finer than 1 Wh"):
        parse_tariff({**base, "slabs": [{"up_to_kwh": "0.0005", "price_minor_per_kwh": "1"},
                                        {"price_minor_per_kwh": "2"}]})
    with pytest.raises(TariffError, match="use 'surcharge_minor_per_kwh', not 'price_minor_per_kwh'"):
        parse_tariff({**_doc(), "slabs": [{"price_minor_per_kwh": "2"}]})
    # surcharges may be negative (a rebate); a missing surcharge is 0
    del base["bands"][1]["surcharge_minor_per_kwh"]
    base["bands"][0]["surcharge_minor_per_kwh"] = "-5"
    t = parse_tariff({**base, "slabs": [{"price_minor_per_kwh": "2"}]})
    assert [b.price for b in t.bands] == [Decimal(-5), Decimal(0)]


def test_file_errors(tmp_path):
    with pytest.raises(TariffError, match="does not exist"):
        load_tariff(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(TariffError, match="invalid TOML"):
        load_tariff(bad)
