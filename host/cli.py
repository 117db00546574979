"""The `meterveil` command: one argparse tree, each subcommand registered by the module that owns it.

Why a registry: each room (gateway, billing, tools, ...) keeps its command next to its code,
and this file only lists the rooms.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

from meterveil.tools.fileio import ToolError

# Each module exposes register(subparsers) and sets `func` on the parsers it adds.
COMMAND_MODULES = (
    "meterveil.host.cmd_demo",        # demo: the whole system on one machine
    "meterveil.host.cmd_keys",        # keys: utility Paillier keys, meter registry
    "meterveil.host.cmd_tools",       # provision, broker-config, build, flash, calibrate
    "meterveil.host.cmd_gateway",     # gateway, stats
    "meterveil.host.cmd_backoffice",  # bill, feeder-load, audit (the decryption role)
    "meterveil.host.cmd_privacy",     # privacy-report, export
    "meterveil.host.cmd_frame",       # frame open (debugging)
)


def guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a subcommand so that a user mistake (ToolError) is one line on stderr and exit status 1
    (or the error's ``exit_code``), not a traceback. `main` applies it to every subcommand."""
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args) or 0)
        except ToolError as e:
            print(f"meterveil {args.command}: error: {e}", file=sys.stderr)
            return int(getattr(e, "exit_code", 1))

    run.__wrapped__ = func  # type: ignore[attr-defined]
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meterveil",
        description="Privacy-preserving smart metering: gateway, back office and tools.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return guard(args.func)(args)


if __name__ == "__main__":
    sys.exit(main())
