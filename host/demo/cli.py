"""`meterveil demo`: the whole neighbourhood end to end (what `make demo` runs)."""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import date, datetime, timezone
from pathlib import Path

from meterveil.host.backoffice.tariff import DEFAULT_TARIFF
from meterveil.host.demo.run import print_summary, run_demo
from meterveil.host.demo.setup import DEFAULT_HEAPSIZE, E2E_HEAPSIZE, DemoConfig, DemoError

log = logging.getLogger("meterveil.demo")


def _speed(text: str) -> float | None:
    if text in ("max", "0"):
        return None
    v = float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError("speed must be > 0 or 'max'")
    return v


def _day(text: str | None) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError as e:
        raise DemoError(f"--start {text!r} is not a date YYYY-MM-DD ({e})") from None


def _demo(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except DemoError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 130 if "interrupted" in str(exc) else 1


def _run(args: argparse.Namespace) -> int:
    cfg = DemoConfig(
        meters=args.meters, feeders=args.feeders, days=args.days, interval_min=args.interval_min,
        broker=args.broker, tariff=Path(args.tariff), out=Path(args.out),
        workspace=Path(args.workspace) if args.workspace else None, speed=args.speed,
        epsilon=args.epsilon, max_household_kw=args.max_household_kw, k_min=args.k_min, seed=args.seed,
        start=_day(args.start), start_hour=args.start_hour,
        key_bits=args.key_bits,
        timeout_s=args.timeout, sim_mode=args.sampling, block_s=args.block_s, heapsize=args.heapsize,
        progress=not args.quiet, mode=args.mode,
    )
    if not args.verbose:
        # paho/amqtt/gateway chatter would break the progress bar; warnings still show.
        logging.getLogger().setLevel(logging.WARNING)
    result = run_demo(cfg)
    print_summary(result)
    if args.web:
        from meterveil.host.demo.web import serve_console

        return serve_console(result.workspace, cfg.tariff, _start_of(result), args.web_bind)
    return 0


def _start_of(result) -> datetime | None:
    """The first simulated interval, from the workspace's truth (the demo's bill period starts there)."""
    from meterveil.host.demo.outputs import read_truth

    truth = Path(result.out) / "truth.csv"
    starts = [t for _, t in read_truth(truth)] if truth.is_file() else []
    return datetime.fromtimestamp(min(starts), timezone.utc) if starts else None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a simulated neighbourhood end to end (meters, broker, gateway, bills)")
    p.add_argument("--meters", type=int, default=24)
    p.add_argument("--feeders", type=int, default=2)
    p.add_argument("--days", type=float, default=1.0, help="simulated days (fractions allowed)")
    p.add_argument("--interval-min", type=int, default=15)
    p.add_argument("--broker", help="use this broker (mqtt://HOST:PORT, anonymous, MQTT v5) instead of the "
                                    "embedded amqtt one")
    p.add_argument("--tariff", default=str(DEFAULT_TARIFF), help="tariff TOML (docs/TARIFFS.md)")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--workspace", help="keys, configs, store, logs (default OUT/workspace; wiped each run)")
    p.add_argument("--speed", type=_speed, default=None,
                   help="simulated seconds per real second, or 'max' (default: as fast as the CPU allows)")
    p.add_argument("--epsilon", type=float, default=1.0, help="DP epsilon per reading")
    p.add_argument("--max-household-kw", type=float, default=2.0, help="sets clamp_wh = kW x interval")
    p.add_argument("--k-min", type=int, default=5)
    p.add_argument("--seed", type=int, default=1, help="household profiles seed")
    p.add_argument("--start", help="first simulated day YYYY-MM-DD (default: 1st of the latest finished month)")
    p.add_argument("--start-hour", type=int, default=0, help="local hour the simulation starts (0-23)")
    p.add_argument("--key-bits", type=int, default=2048)
    p.add_argument("--timeout", type=float, default=None, help="seconds before giving up (default: scaled)")
    p.add_argument("--sampling", choices=("sparse", "dense"), default="sparse")
    p.add_argument("--block-s", type=int, default=None, help="sparse: seconds per ADC block (default auto)")
    p.add_argument("--heapsize", default=None,
                   help=f"MicroPython heap per meter (-X heapsize; default {DEFAULT_HEAPSIZE}, {E2E_HEAPSIZE} in e2e mode)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--web", action="store_true", help="then start the web console on the workspace and print "
                                                      "generated logins (one per role, one household)")
    p.add_argument("--web-bind", default="127.0.0.1:8080", help="HOST:PORT for --web")
    p.add_argument("--mode", choices=("proxy", "e2e"), default="proxy",
                   help="proxy: the gateway opens frames and encrypts (default; fits the 3-minute demo budget "
                        "on 2 cores); e2e: the meters encrypt, the gateway never sees a reading, each "
                        "household gets a card (WORKSPACE/households/) that opens its own copies")
    p.set_defaults(func=_demo)
