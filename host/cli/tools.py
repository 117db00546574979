"""Registers the board/pilot tool subcommands (broker-config, build, flash, provision, calibrate).

Why a wrapper: every tool raises ToolError for user mistakes; `cli.main.guard` (which `main` applies
to every subcommand) turns it into one clear line on stderr and exit status 1, instead of a
traceback. The tools' parsers are wrapped here as well, for callers that run a parser's `func` directly.
"""

from __future__ import annotations

from meterveil.host.cli.main import guard as _guard
from meterveil.tools import broker_config, build, calibrate, flash, provision

TOOL_MODULES = (broker_config, build, flash, provision, calibrate)


def register(sub) -> None:
    for mod in TOOL_MODULES:
        before = set(sub.choices)
        mod.register(sub)
        for cmd in set(sub.choices) - before:
            parser = sub.choices[cmd]
            parser.set_defaults(func=_guard(parser.get_default("func")))
