"""`meterveil keys ...`: create the utility Paillier key pair; register meters (dev/test helper).

Why here and not in provisioning: the key pair belongs to the host side; provisioning (tools/) calls
MeterRegistry.add directly. Nothing secret is ever printed or logged.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from . import keys

log = logging.getLogger("meterveil.keys")


def _keys_dir(path: str, *, create: bool = True) -> Path:
    """--dir is a directory: refused if it exists as anything else, created 0700 if missing (as `keys init`
    does), so the registry (which holds master keys) never lands in a file named like the folder."""
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise FileExistsError(f"--dir {d} exists and is not a directory; give the keys directory")
    if create:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
    return d


def _init(args: argparse.Namespace) -> int:
    try:
        d = _keys_dir(args.dir, create=False)  # write_keypair creates it (0700)
        for name in (keys.PUBLIC_NAME, keys.SECRET_NAME):
            if (d / name).exists() and not args.force:
                raise FileExistsError(f"{d / name} exists; use --force to overwrite")
        pub, priv = keys.generate_keypair(args.bits)
        pub_path, sec_path = keys.write_keypair(d, pub, priv, force=args.force)
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    reg = keys.MeterRegistry.load(d)
    if not reg.path.exists():
        reg.save()
    print(json.dumps({"public": str(pub_path), "secret": str(sec_path), "registry": str(reg.path),
                      "bits": pub.n.bit_length()}))
    return 0


def _add_meter(args: argparse.Namespace) -> int:
    try:
        reg = keys.MeterRegistry.load(_keys_dir(args.dir))
        key = bytes.fromhex(Path(args.key_file).read_text().strip()) if args.key_file else None
        rec = reg.add(args.meter_id, feeder=args.feeder, epsilon_milli=args.epsilon_milli,
                      clamp_wh=args.clamp_wh, m=args.m, key=key)
    except (KeyError, OSError, ValueError) as exc:
        log.error("%s", exc.args[0] if isinstance(exc, KeyError) else exc)
        return 1
    print(json.dumps({"meter_id": rec.meter_id, "feeder": rec.feeder, "registry": str(reg.path)}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="utility Paillier keys and the meter registry")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    init = ksub.add_parser("init", help="create utility.pub.json, utility.key.json (0600) and meters.json")
    init.add_argument("--dir", required=True, help="keys directory (created 0700 if missing)")
    init.add_argument("--bits", type=int, default=keys.DEFAULT_BITS,
                      help="modulus bits (default 2048; 3072 for protection beyond 2030)")
    init.add_argument("--force", action="store_true", help="overwrite existing key files")
    init.set_defaults(func=_init)
    add = ksub.add_parser("add-meter", help="register a meter (random master key unless --key-file)")
    add.add_argument("--dir", required=True, help="keys directory (created 0700 if missing)")
    add.add_argument("--meter-id", required=True)
    add.add_argument("--feeder", required=True)
    add.add_argument("--epsilon-milli", type=int, default=1000)
    add.add_argument("--clamp-wh", type=int, default=1000)
    add.add_argument("--m", type=int, default=10)
    add.add_argument("--key-file", help="file holding the 32-byte master key as hex")
    add.set_defaults(func=_add_meter)
