"""Household load profiles for the simulated meters: an occupancy-driven stochastic appliance model.

Why our own model and not richardsonpy: richardsonpy (CREST-style, 1-minute) is good but pulls
matplotlib+xlrd, takes ~8 s per simulated year, and hides its assumptions in spreadsheets. The demo
needs a few hundred households x a few days in well under a second, reproducible from one seed,
plus household attributes for issue 7. So this module follows the same structure (occupancy ->
activity -> appliance events) in ~300 lines where every number is written down:

1. Household: home type, occupants with roles (worker, pupil, at-home), tariff type, region
   (latitude, for daylight), appliance ownership (dishwasher, dryer, EV, electric heating).
2. Occupancy per minute: each occupant wakes, leaves, returns and sleeps at role-dependent times
   with per-day jitter; weekends differ (late wake, random outings). `home` counts occupants at
   home, `active` those at home and awake.
3. Appliances: standby base load and fridge/freezer compressor cycling run regardless of
   occupancy; lighting follows active occupants when it is dark (sunrise/sunset from latitude);
   kettle, microwave, cooking (hob and oven with thermostat cycling), TV and computers occur only
   while someone is active; washing machine, dryer and dishwasher run whole programmes (heating
   phase then motor) started by an active occupant; EV charging (on return, or after midnight on
   an EV tariff) and electric heaters (cold months, while active, thermostat duty) for some homes.

Output: mean watts per minute (whole watts); `to_csv` writes `seconds,watts` change points
(seconds from the profile start, step-held until the next row), the format the firmware's
simulated CT (firmware/meter/ctsim.py) replays.
Local time is taken equal to the simulation clock (UTC); no DST.
"""

from __future__ import annotations

import csv
import io
import math
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from meterveil.host.common.files import write_private

MIN_PER_DAY = 1440

HOME_TYPES = ("flat", "terraced", "semi-detached", "detached")
HOME_WEIGHTS = (0.3, 0.3, 0.25, 0.15)
REGION_LAT = {"north": 55.9, "central": 52.5, "south": 51.3, "coast": 50.4}
TARIFF_TYPES = ("flat", "tou", "ev")
# Occupant count distribution by home type (1..5).
OCC_WEIGHTS = {
    "flat": (0.45, 0.35, 0.12, 0.06, 0.02),
    "terraced": (0.25, 0.35, 0.18, 0.15, 0.07),
    "semi-detached": (0.15, 0.35, 0.2, 0.2, 0.1),
    "detached": (0.1, 0.35, 0.2, 0.22, 0.13),
}


@dataclass(frozen=True)
class Household:
    """Provisioning-side facts about one home; `attributes()` is what the registry stores."""

    household_id: str
    seed: int
    home_type: str
    occupants: int
    roles: tuple[str, ...]
    tariff_type: str
    region: str
    has_dishwasher: bool
    has_dryer: bool
    has_freezer: bool
    has_ev: bool
    electric_heating: bool

    @property
    def latitude(self) -> float:
        return REGION_LAT[self.region]

    def attributes(self) -> dict:
        d = asdict(self)
        d["roles"] = list(self.roles)
        del d["household_id"], d["seed"]
        return d


@dataclass
class Profile:
    """Simulated load of one household: mean watts per minute plus the occupancy that drove it."""

    household: Household
    start: datetime
    watts: list[float]
    home: list[int] = field(repr=False)
    active: list[int] = field(repr=False)

    @property
    def minutes(self) -> int:
        return len(self.watts)

    def energy_wh(self, t0_s: int, t1_s: int) -> float:
        """Exact integral (Wh) of the step-held profile between two offsets in seconds."""
        total = 0.0
        m0, m1 = t0_s // 60, -(-t1_s // 60)
        for m in range(max(m0, 0), min(m1, self.minutes)):
            lo, hi = max(t0_s, m * 60), min(t1_s, m * 60 + 60)
            total += self.watts[m] * (hi - lo)
        return total / 3600.0

    def daily_kwh(self) -> list[float]:
        return [sum(self.watts[d * MIN_PER_DAY:(d + 1) * MIN_PER_DAY]) / 60000.0
                for d in range(self.minutes // MIN_PER_DAY)]

    def to_csv(self, path: Path | str, offset_s: int = 0) -> Path:
        """Write `seconds,watts` change points (integer watts, step-held until the next row).

        `offset_s` (a multiple of 60) re-bases the file so that second 0 is that moment of the
        profile, for a meter whose simulated clock starts later than midnight.
        Why only change points: the meter's simulator holds the profile in RAM under a 64 KB heap;
        a day is ~120 rows this way instead of 1440.
        """
        if offset_s % 60:
            raise ValueError("offset_s must be whole minutes")
        path = Path(path)
        first = offset_s // 60
        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(["seconds", "watts"])
        last = None
        for m in range(first, self.minutes):
            p = self.watts[m]
            if p != last:
                w.writerow([(m - first) * 60, int(p)])
                last = p
        return write_private(path, buf.getvalue())  # a household's (simulated) consumption


def household_seed(base_seed: int, index: int) -> int:
    """Stable per-household seed (no Python hash randomisation involved)."""
    return (base_seed * 1_000_003 + index * 7919 + 17) % (2**31)


def make_household(index: int, base_seed: int = 1) -> Household:
    """Draw a household's attributes from its own seed."""
    seed = household_seed(base_seed, index)
    r = random.Random(seed)
    home = r.choices(HOME_TYPES, HOME_WEIGHTS)[0]
    n = r.choices(range(1, 6), OCC_WEIGHTS[home])[0]
    roles: list[str] = []
    for i in range(n):
        if i >= 2:
            roles.append("pupil")
        else:
            roles.append(r.choices(("worker", "home"), (0.7, 0.3))[0])
    big = home in ("semi-detached", "detached")
    has_ev = r.random() < (0.25 if big else 0.06)
    heating = r.random() < (0.25 if home == "flat" else 0.1)
    if has_ev:
        tariff = r.choices(TARIFF_TYPES, (0.2, 0.2, 0.6))[0]
    else:
        tariff = r.choices(TARIFF_TYPES[:2], (0.65, 0.35))[0]
    return Household(
        household_id=f"h{index:04d}", seed=seed, home_type=home, occupants=n, roles=tuple(roles),
        tariff_type=tariff, region=r.choice(tuple(REGION_LAT)),
        has_dishwasher=r.random() < (0.75 if big else 0.4) and n >= 2 or r.random() < 0.15,
        has_dryer=r.random() < (0.5 if big else 0.25), has_freezer=r.random() < (0.6 if big else 0.2),
        has_ev=has_ev, electric_heating=heating,
    )


def daylight(lat_deg: float, day: datetime) -> tuple[int, int]:
    """Sunrise and sunset (minute of day, solar time) from latitude and day of year."""
    doy = day.timetuple().tm_yday
    decl = -23.44 * math.cos(2 * math.pi * (doy + 10) / 365.0)
    x = -math.tan(math.radians(lat_deg)) * math.tan(math.radians(decl))
    half = math.degrees(math.acos(max(-1.0, min(1.0, x)))) / 15.0  # hours from noon
    return int((12 - half) * 60), int((12 + half) * 60)


class _Day:
    """Builds one day's minute array; appliance helpers add power over minute ranges."""

    def __init__(self, r: random.Random):
        self.r = r
        self.w = [0.0] * MIN_PER_DAY
        self.home = [0] * MIN_PER_DAY
        self.active = [0] * MIN_PER_DAY

    def add(self, start: int, minutes: int, watts: float) -> None:
        for m in range(max(start, 0), min(start + minutes, MIN_PER_DAY)):
            self.w[m] += watts

    def cycle(self, start: int, minutes: int, watts: float, on: int, off: int) -> None:
        """Thermostat-style on/off cycling (oven, heater) from a random phase."""
        phase = self.r.randrange(on + off)
        for m in range(max(start, 0), min(start + minutes, MIN_PER_DAY)):
            if (m - start + phase) % (on + off) < on:
                self.w[m] += watts

    def active_minute(self, lo: int, hi: int) -> int | None:
        """A random minute in [lo, hi) when someone is active, or None."""
        cands = [m for m in range(max(lo, 0), min(hi, MIN_PER_DAY)) if self.active[m]]
        return self.r.choice(cands) if cands else None


def _hm(r: random.Random, hour: float, sd_min: float) -> int:
    return int(hour * 60 + r.gauss(0, sd_min))


def _occupancy(day: _Day, hh: Household, weekday: bool) -> list[int]:
    """Fill home/active counts; return each occupant's wake minute (morning kettle trigger)."""
    r = day.r
    wakes = []
    outing = None
    if not weekday and r.random() < 0.5:  # a family outing on weekends
        s = _hm(r, r.uniform(10, 15), 20)
        outing = (s, s + int(r.uniform(90, 300)))
    for role in hh.roles:
        if weekday:
            wake = _hm(r, {"worker": 6.75, "pupil": 7.0, "home": 7.75}[role], 25)
        else:
            wake = _hm(r, 8.5, 50)
        sleep = _hm(r, {"pupil": 21.5, "worker": 23.0, "home": 22.75}[role] + (0.7 if not weekday else 0), 30)
        away: list[tuple[int, int]] = []
        if weekday and role == "worker" and r.random() < 0.9:
            leave = max(wake + 25, _hm(r, 8.0, 25))
            away.append((leave, max(leave + 240, _hm(r, 17.75, 40))))
        elif weekday and role == "pupil":
            away.append((max(wake + 30, _hm(r, 8.3, 8)), _hm(r, 15.6, 20)))
        elif role == "home" and r.random() < 0.6:  # shopping, errands
            s = _hm(r, r.uniform(9.5, 16), 30)
            away.append((s, s + int(r.uniform(45, 180))))
        if outing:
            away.append(outing)
        if r.random() < (0.35 if not weekday else 0.15) and role != "pupil":  # evening out
            s = _hm(r, 19.5, 40)
            away.append((s, min(s + int(r.uniform(120, 240)), MIN_PER_DAY - 1)))
        wakes.append(wake)
        for m in range(MIN_PER_DAY):
            out = any(a <= m < b for a, b in away)
            if not out:
                day.home[m] += 1
                if wake <= m < sleep:
                    day.active[m] += 1
    return wakes


def _appliances(day: _Day, hh: Household, date: datetime, weekday: bool, wakes: list[int],
                base_w: float, fridge_phase: int) -> None:
    r, act = day.r, day.active
    n = hh.occupants
    size = HOME_TYPES.index(hh.home_type)
    # Standby: router, clocks, chargers; never zero. Constant: the CT simulator adds the
    # measurement noise, and a flat base keeps the profile a short list of change points.
    for m in range(MIN_PER_DAY):
        day.w[m] += base_w
    # Fridge(-freezer): compressor ~120 W for 15 of every 50 minutes; a chest freezer on top.
    for m in range(MIN_PER_DAY):
        if (m + fridge_phase) % 50 < 15:
            day.w[m] += 120
        if hh.has_freezer and (m + fridge_phase * 3) % 65 < 18:
            day.w[m] += 90
    # Lighting: active occupants in the dark (indoor light needs >30 min of sun above horizon).
    rise, sset = daylight(hh.latitude, date)
    lamp = 40 + 25 * size
    for m in range(MIN_PER_DAY):
        if act[m]:
            dark = m < rise + 30 or m > sset - 30
            day.w[m] += (lamp * (1 + 0.6 * (act[m] - 1)) if dark else 10 * act[m])
    # Kettle: most people start the day with one; otherwise at random while active.
    for wake in wakes:
        if r.random() < 0.6:
            day.add(wake + r.randrange(5, 25), 3, r.uniform(2200, 2900))
    for m in range(MIN_PER_DAY):
        if act[m] and r.random() < 0.0015 * act[m]:
            day.add(m, r.choice((2, 3, 4)), r.uniform(2200, 2900))
        if act[m] and r.random() < 0.0008 * act[m]:
            day.add(m, r.randint(2, 6), 1100)  # microwave
    # Evening meal: hob (cycling), oven on some days; lunch when someone is at home by day.
    dinner = day.active_minute(_hm(r, 17.5, 20), _hm(r, 19.5, 20))
    if dinner is not None and r.random() < 0.85:
        length = int(r.uniform(20, 45))
        day.cycle(dinner, length, r.uniform(1200, 2000), 4, 3)
        if r.random() < 0.35 + 0.1 * min(n, 3):
            day.cycle(dinner - 15, length + 20, 2000, 6, 6)  # oven preheat + thermostat
    lunch = day.active_minute(690, 810)
    if lunch is not None and r.random() < 0.5:
        day.cycle(lunch, int(r.uniform(8, 20)), 1500, 3, 2)
    # TV in the evening while anyone is active; a computer for at-home roles by day.
    if r.random() < 0.85:
        tv_w = r.uniform(80, 160)
        tv_from = _hm(r, 19.0, 45)
        for m in range(tv_from, MIN_PER_DAY):
            if act[m]:
                day.w[m] += tv_w
    if "home" in hh.roles or not weekday:
        for m in range(_hm(r, 9.5, 30), _hm(r, 17, 60)):
            if 0 <= m < MIN_PER_DAY and act[m]:
                day.w[m] += 70
    # Laundry: more people, more washes; heating phase then motor/spin.
    if r.random() < min(0.85, 0.12 + 0.13 * n):
        s = day.active_minute(8 * 60, 20 * 60)
        if s is not None:
            day.add(s, 18, 2000)
            day.add(s + 18, 60, 180)
            day.add(s + 78, 10, 450)
            if hh.has_dryer and r.random() < 0.5:
                day.cycle(s + 100, int(r.uniform(60, 100)), 2400, 8, 2)
    # Dishwasher after dinner: two heating phases.
    if hh.has_dishwasher and dinner is not None and r.random() < min(0.9, 0.3 + 0.15 * n):
        s = dinner + int(r.uniform(60, 150))
        day.add(s, 20, 2000)
        day.add(s + 20, 40, 80)
        day.add(s + 60, 15, 2000)
        day.add(s + 75, 30, 60)
    # Electric heating in cold months while someone is active.
    if hh.electric_heating and date.month in (10, 11, 12, 1, 2, 3, 4):
        duty_on = 5 if date.month in (12, 1, 2) else 3
        for lo, hi in ((6 * 60, 9 * 60), (17 * 60, 23 * 60)):
            for block in range(lo, hi, 30):
                if any(act[block:block + 30]):
                    day.cycle(block, 30, 2000, duty_on, 10 - duty_on)
    # EV: charge what the day's driving used; after midnight on EV/TOU tariffs, else on return.
    if hh.has_ev and r.random() < (0.7 if weekday else 0.35):
        kwh = r.uniform(4, 9)
        kw = 7.2 if size >= 2 else 3.6
        mins = int(kwh * 60 / kw)
        if hh.tariff_type in ("ev", "tou"):
            day.add(_hm(r, 0.5, 10), mins, kw * 1000)
        else:
            ret = day.active_minute(_hm(r, 17.5, 30), 21 * 60)
            day.add(ret if ret is not None else 18 * 60, mins, kw * 1000)


def simulate(hh: Household, start: datetime, days: int = 1) -> Profile:
    """Simulate `days` days from midnight `start` (UTC) for one household, deterministically."""
    if start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    r = random.Random(hh.seed)
    base_w = r.uniform(45, 90) + 12 * HOME_TYPES.index(hh.home_type)
    fridge_phase = r.randrange(50)
    watts: list[float] = []
    home: list[int] = []
    active: list[int] = []
    for d in range(days):
        date = start + timedelta(days=d)
        day = _Day(random.Random(hh.seed * 7 + date.toordinal()))
        weekday = date.weekday() < 5
        wakes = _occupancy(day, hh, weekday)
        _appliances(day, hh, date, weekday, wakes, base_w, fridge_phase)
        watts += [float(max(0, round(w))) for w in day.w]  # whole watts: the CSV is exact
        home += day.home
        active += day.active
    return Profile(hh, start, watts, home, active)


def generate(n: int, start: datetime, days: int = 1, base_seed: int = 1) -> list[Profile]:
    """Profiles for households 0..n-1 (same seed -> same households and loads)."""
    return [simulate(make_household(i, base_seed), start, days) for i in range(n)]


def write_all(profiles: Iterable[Profile], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [p.to_csv(out_dir / f"{p.household.household_id}.csv") for p in profiles]
