"""Registers the board/pilot tool subcommands (broker-config, build, flash, provision, calibrate).

Why a wrapper: every tool raises ToolError for user mistakes; here it becomes one clear line on
stderr and exit status 1, instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from meterveil.tools.fileio import ToolError

TOOL_MODULES = ("broker_config", "build", "flash", "provision", "calibrate")


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args) or 0)
        except ToolError as e:
            print(f"meterveil {args.command}: error: {e}", file=sys.stderr)
            return 1

    return run


def register(sub) -> None:
    for name in TOOL_MODULES:
        mod = importlib.import_module(f"meterveil.tools.{name}")
        before = set(sub.choices)
        mod.register(sub)
        for cmd in set(sub.choices) - before:
            parser = sub.choices[cmd]
            parser.set_defaults(func=_guard(parser.get_default("func")))
