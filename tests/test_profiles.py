"""Household profiles: reproducible per seed, plausible energy, and driven by occupancy."""

from __future__ import annotations

import csv
import statistics
from datetime import datetime, timezone

import pytest

from meterveil.host.demo import profiles as P

START = datetime(2026, 11, 2, tzinfo=timezone.utc)  # a Monday


@pytest.fixture(scope="module")
def week() -> list[P.Profile]:
    return P.generate(60, START, days=7, base_seed=11)


def test_same_seed_same_household_and_load():
    a = P.simulate(P.make_household(3, 5), START, 2)
    b = P.simulate(P.make_household(3, 5), START, 2)
    assert a.household == b.household
    assert a.watts == b.watts
    c = P.simulate(P.make_household(4, 5), START, 2)
    assert c.watts != a.watts
    d = P.simulate(P.make_household(3, 6), START, 2)
    assert d.watts != a.watts


def test_daily_energy_plausible(week):
    days = [k for p in week for k in p.daily_kwh()]
    assert len(days) == 60 * 7
    assert all(2.0 <= k <= 30.0 for k in days), (min(days), max(days))
    for p in week:
        assert 3.0 <= statistics.mean(p.daily_kwh()) <= 30.0, p.household
    # UK/EU household averages sit around 7-10 kWh/day.
    assert 6.0 <= statistics.mean(days) <= 12.0


def test_more_load_when_someone_is_active_than_when_away(week):
    ratios = []
    for p in week:
        away = [w for w, h in zip(p.watts, p.home, strict=True) if h == 0]
        busy = [w for w, a in zip(p.watts, p.active, strict=True) if a > 0]
        if len(away) > 120 and len(busy) > 120:
            ratios.append(statistics.mean(busy) / statistics.mean(away))
    assert len(ratios) >= 40
    assert sum(r > 1.2 for r in ratios) >= 0.9 * len(ratios)
    assert statistics.median(ratios) > 1.8


def test_weekday_daytime_emptier_than_weekend(week):
    def daytime_home(p: P.Profile, day: int) -> float:
        base = day * P.MIN_PER_DAY
        return statistics.mean(p.home[base + 10 * 60: base + 15 * 60])

    wk = statistics.mean(daytime_home(p, d) for p in week for d in range(5))
    we = statistics.mean(daytime_home(p, d) for p in week for d in (5, 6))
    assert we > wk


def test_appliance_events_give_kilowatt_spikes_and_base_never_zero(week):
    for p in week:
        assert min(p.watts) > 20
    spiky = sum(max(p.watts) > 2000 for p in week)
    assert spiky == len(week)


def test_ev_homes_use_more(week):
    more = P.generate(200, START, days=3, base_seed=2)
    ev = [statistics.mean(p.daily_kwh()) for p in more if p.household.has_ev]
    no = [statistics.mean(p.daily_kwh()) for p in more if not p.household.has_ev]
    assert ev and no
    assert statistics.mean(ev) > statistics.mean(no) + 2


def test_attributes_for_registry():
    attrs = P.make_household(0, 1).attributes()
    assert attrs["home_type"] in P.HOME_TYPES
    assert attrs["tariff_type"] in P.TARIFF_TYPES
    assert attrs["region"] in P.REGION_LAT
    assert 1 <= attrs["occupants"] <= 5 and len(attrs["roles"]) == attrs["occupants"]
    assert "seed" not in attrs


def test_csv_round_trip_matches_energy(tmp_path):
    p = P.simulate(P.make_household(1, 1), START, 1)
    path = p.to_csv(tmp_path / "h.csv")
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["seconds", "watts"]
    points = [(int(r[0]), int(r[1])) for r in rows[1:]]
    assert points[0][0] == 0 and len(points) < 400  # change points only (fits a 64 KB meter heap)
    assert all(a[0] < b[0] and a[1] != b[1] for a, b in zip(points, points[1:], strict=False))
    # Step-held expansion reproduces the profile exactly.
    expanded, j = [], 0
    for m in range(1440):
        while j + 1 < len(points) and points[j + 1][0] <= m * 60:
            j += 1
        expanded.append(points[j][1])
    assert expanded == [int(w) for w in p.watts]
    assert abs(p.energy_wh(0, 86400) / 1000 - p.daily_kwh()[0]) < 1e-9
    # Partial-minute integral: 30 s of minute 0.
    assert abs(p.energy_wh(0, 30) - p.watts[0] * 30 / 3600) < 1e-9
