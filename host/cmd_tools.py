"""Registers the board/pilot tool subcommands (broker-config, build, flash, provision, calibrate).

Why a wrapper: every tool raises ToolError for user mistakes; `cli.guard` (which `cli.main` applies to
every subcommand) turns it into one clear line on stderr and exit status 1, instead of a traceback.
The tools' parsers are wrapped here as well, for callers that run a parser's `func` directly.
"""

from __future__ import annotations

import importlib

from .cli import guard as _guard

TOOL_MODULES = ("broker_config", "build", "flash", "provision", "calibrate")


def register(sub) -> None:
    for name in TOOL_MODULES:
        mod = importlib.import_module(f"meterveil.tools.{name}")
        before = set(sub.choices)
        mod.register(sub)
        for cmd in set(sub.choices) - before:
            parser = sub.choices[cmd]
            parser.set_defaults(func=_guard(parser.get_default("func")))
