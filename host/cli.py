"""The `meterveil` command: one argparse tree, each subcommand registered by the module that owns it.

Why a registry: each room (gateway, billing, tools, ...) keeps its command next to its code,
and this file only lists the rooms.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Each module exposes register(subparsers) and sets `func` on the parsers it adds.
COMMAND_MODULES = (
    "meterveil.host.cmd_frame",
    "meterveil.host.cmd_tools",
    "meterveil.host.cmd_backoffice",
    "meterveil.host.cmd_privacy",
    "meterveil.host.cmd_keys",
    "meterveil.host.cmd_gateway",
    "meterveil.host.cmd_demo",
)


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
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
