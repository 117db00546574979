"""`meterveil household show --card CARD --db DB [--from --to]`: a household reads its own intervals."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone

from meterveil.host.household.card import CardError, read_card
from meterveil.host.household.show import household_intervals
from meterveil.host.store.base import StoreError, open_store


def _when(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        d = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither epoch seconds nor an ISO date/time") from None
    return int((d if d.tzinfo else d.replace(tzinfo=timezone.utc)).timestamp())


def _show(args: argparse.Namespace) -> int:
    try:
        card = read_card(args.card)
        store = open_store(args.db, create=False)
    except (CardError, StoreError) as exc:
        print(f"household show: {exc}", file=sys.stderr)
        return 2
    try:
        rep = household_intervals(card, store, args.t_from, args.t_to)
    finally:
        store.close()
    print("interval_start_utc,interval_len_s,energy_wh,flags,missing_s,counter")
    for iv in rep.intervals:
        when = datetime.fromtimestamp(iv.interval_start, timezone.utc).isoformat()
        print(f"{when},{iv.interval_len},{iv.energy_wh},{iv.flags},{iv.missing_s},{iv.counter}")
    total = sum(iv.energy_wh for iv in rep.intervals)
    print(f"# meter {card.meter_id}: {len(rep.intervals)} intervals, {total} Wh"
          + (f"; {rep.unreadable} rows this card does not open" if rep.unreadable else ""), file=sys.stderr)
    return 0 if rep.intervals or not rep.unreadable else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("household", help="what a household can do with its own card")
    hs = p.add_subparsers(dest="household_cmd", required=True)
    s = hs.add_parser("show", help="decrypt and print this household's own intervals from a store")
    s.add_argument("--card", required=True, help="household-card.txt (or its folder)")
    s.add_argument("--db", required=True, help="the ingest store (SQLite)")
    s.add_argument("--from", dest="t_from", type=_when, default=None, help="epoch seconds or ISO date (UTC)")
    s.add_argument("--to", dest="t_to", type=_when, default=None, help="exclusive; epoch seconds or ISO date")
    s.set_defaults(func=_show)
