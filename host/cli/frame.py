"""`meterveil frame open`: decode one frame for debugging, printing JSON or the typed error."""

from __future__ import annotations

import argparse
import binascii
import json
import sys

from meterveil.protocol import errors, frame


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("frame", help="inspect protocol frames (debugging)")
    fsub = p.add_subparsers(dest="frame_command", metavar="ACTION", required=True)
    o = fsub.add_parser("open", help="verify and decrypt one frame; print it as JSON")
    o.add_argument("--master-key", required=True, help="the meter's 32-byte master key, hex")
    o.add_argument("--topic-meter", help="meter id from the MQTT topic the frame arrived on")
    o.add_argument("frame_hex", help="the frame as hex, or - to read hex from stdin")
    o.set_defaults(func=open_cmd)


def _unhex(text: str, what: str) -> bytes:
    try:
        return binascii.unhexlify("".join(text.split()))
    except (binascii.Error, ValueError) as e:
        raise SystemExit(f"error: {what} is not valid hex: {e}") from None


def open_cmd(args: argparse.Namespace) -> int:
    master = _unhex(args.master_key, "--master-key")
    if len(master) != 32:
        print(f"error: --master-key must be 32 bytes (64 hex digits), got {len(master)}", file=sys.stderr)
        return 2
    raw = _unhex(sys.stdin.read() if args.frame_hex == "-" else args.frame_hex, "FRAME_HEX")
    try:
        msg = frame.open_frame(frame.derive_keys(master), raw, topic_meter=args.topic_meter)
    except errors.FrameError as e:
        print(json.dumps({"error": e.reason, "message": str(e)}))
        return 1
    msg["header"]["kind"] = frame.KIND_NAMES[msg["header"]["kind"]]
    print(json.dumps(msg, indent=2))
    return 0
