"""The `meterveil` command: one argparse tree whose subcommands load only the room they belong to.

Why lazy: `meterveil gateway` must not carry the decryption role, pandas or matplotlib in its
process. Each entry below names a command, its one-line help and a function that imports the
owning module (a plain import statement, visible to the import contracts) and registers it. Only
the command being run is imported; `meterveil --help` imports none of them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from meterveil.tools.fileio import ToolError


def _demo(sub):
    from meterveil.host.demo import cli
    cli.register(sub)


def _keys(sub):
    from meterveil.host.cli import keys
    keys.register(sub)


def _tools(sub):
    from meterveil.host.cli import tools
    tools.register(sub)


def _gateway(sub):
    from meterveil.host.gateway import cli
    cli.register(sub)


def _decryption(sub):
    from meterveil.host.decryption import cli
    cli.register(sub)


def _export(sub):
    from meterveil.host.decryption import export_cli
    export_cli.register(sub)


def _decryption_serve(sub):
    from meterveil.host.decryption import serve
    serve.register(sub)


def _web(sub):
    from meterveil.host.web import cli
    cli.register(sub)


def _audit(sub):
    from meterveil.host.audit import cli
    cli.register(sub)


def _backoffice(sub):
    from meterveil.host.backoffice import cli
    cli.register(sub)


def _loadgen(sub):
    from meterveil.host.loadgen import cli
    cli.register(sub)


def _frame(sub):
    from meterveil.host.cli import frame
    frame.register(sub)


def _household(sub):
    from meterveil.host.household import cli
    cli.register(sub)


# command -> (help, registrar). A registrar may add several commands (it is called once).
COMMANDS: dict[str, tuple[str, Callable[[argparse._SubParsersAction], None]]] = {
    "demo": ("run a simulated neighbourhood end to end (meters, broker, gateway, bills)", _demo),
    "keys": ("utility Paillier keys (gateway and decryption folders) and meter keys", _keys),
    "provision": ("create a meter's key, registry entry, broker login and config.json", _tools),
    "broker-config": ("generate a TLS mosquitto config for a pilot", _tools),
    "build": ("compile firmware + protocol to .mpy for a board", _tools),
    "flash": ("copy a build to a board with mpremote and verify it", _tools),
    "calibrate": ("trim a meter's gain against a known resistive load", _tools),
    "gateway": ("ingest sealed frames from MQTT into the ciphertext store (gateway role)", _gateway),
    "stats": ("ingest counters as JSON", _gateway),
    "bill": ("decrypt household band totals for a period and bill them (decryption role)", _decryption),
    "feeder-load": ("decrypt DP feeder sums per interval, >= m contributors (decryption role)", _decryption),
    "decryption": ("the decryption role as a service: `decryption serve` answers the web console's requests",
                   _decryption_serve),
    "web": ("the web console (utility roles) and household portal; holds no key", _web),
    "users": ("web console accounts (argon2-hashed, generated passwords)", _web),
    "export": ("privacy-safe exports for researchers (decryption role)", _export),
    "audit": ("verify the decryption role's signed audit log (auditor)", _audit),
    "privacy-report": ("DP parameters and privacy spend per feeder per day", _backoffice),
    "frame": ("inspect protocol frames (debugging)", _frame),
    "loadgen": ("publish sealed readings of N meters at a set rate and report the gateway's counters", _loadgen),
    "household": ("a household reads its own intervals with its card (end-to-end meters)", _household),
}


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


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named in argv (the first word that is not an option), if it is one of ours."""
    for word in argv:
        if word in ("-v", "--verbose"):
            continue
        return word if word in COMMANDS else None
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every command listed and only the command in `argv` fully registered
    (all of them when `argv` is None: tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="meterveil",
        description="Privacy-preserving smart metering: gateway, decryption role, back office and tools.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = _command_of(argv) if argv is not None else None
    registrars = [r for name, (_, r) in COMMANDS.items() if argv is None or name == wanted]
    for registrar in dict.fromkeys(registrars):  # a registrar may own several commands: call it once
        registrar(sub)
    for name, (help_text, _) in COMMANDS.items():  # the others are listed, not loaded
        if name not in sub.choices:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
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
