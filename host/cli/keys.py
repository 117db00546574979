"""`meterveil keys ...`: the utility key pair split between two folders; meters for development.

Why `init` takes two folders: the gateway's folder gets the public key only, the decryption role's
folder gets the secret key and the audit signing key. The command refuses to put them in one place
(or one inside the other), because the gateway refuses to run beside a secret key. Nothing secret is
printed or logged.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from meterveil.host.audit import signing
from meterveil.host.common import pubkey
from meterveil.host.common.registry import MeterRecord, MeterRegistry
from meterveil.host.decryption import secret_key
from meterveil.host.gateway.meter_keys import KEYS_NAME, KeyedRegistry, MeterKey, MeterKeys
from meterveil.tools.fileio import ToolError

log = logging.getLogger("meterveil.keys")


def _folder(path: str, what: str) -> Path:
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise ToolError(f"{what} {d} exists and is not a directory")
    return d


def check_split(gateway_dir: Path, secret_dir: Path) -> None:
    """The two folders must be different and neither inside the other."""
    g, s = gateway_dir.resolve(), secret_dir.resolve()
    if g == s or g in s.parents or s in g.parents:
        raise ToolError(f"--secret-dir {secret_dir} and --dir {gateway_dir} overlap: the Paillier secret key must "
                        f"not live where the gateway's keys live (the gateway refuses to start beside it)")


def _init(args: argparse.Namespace) -> int:
    gdir, sdir = _folder(args.dir, "--dir"), _folder(args.secret_dir, "--secret-dir")
    check_split(gdir, sdir)
    targets = [gdir / pubkey.PUBLIC_NAME, sdir / secret_key.SECRET_NAME, sdir / signing.SIGNING_NAME]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not args.force:
        raise ToolError(f"{', '.join(existing)} exist; use --force to overwrite")
    try:
        pub, priv = secret_key.generate_keypair(args.bits)
    except ValueError as e:
        raise ToolError(str(e)) from None
    sec_path = secret_key.write_secret(sdir, priv, force=args.force)
    signing.generate(sdir, force=args.force)
    pub_path = pubkey.write_public(gdir, pub, force=args.force)
    print(json.dumps({"public": str(pub_path), "secret": str(sec_path), "role_dir": str(sdir),
                      "bits": pub.n.bit_length()}))
    return 0


def _add_meter(args: argparse.Namespace) -> int:
    d = _folder(args.dir, "--dir")
    try:
        reg = KeyedRegistry.load(d, args.registry)
        key = bytes.fromhex(Path(args.key_file).read_text().strip()) if args.key_file else None
        rec = reg.add(args.meter_id, feeder=args.feeder, epsilon_milli=args.epsilon_milli,
                      clamp_wh=args.clamp_wh, m=args.m, key=key, household=args.household or "")
    except (KeyError, OSError, ValueError) as exc:
        raise ToolError(str(exc.args[0] if isinstance(exc, KeyError) else exc)) from None
    print(json.dumps({"meter_id": rec.meter_id, "feeder": rec.feeder, "registry": str(reg.registry.path)}))
    return 0


def _split_registry(args: argparse.Namespace) -> int:
    """Turn a version 1 meters.json (metadata and master keys in one file) into the two files."""
    old = Path(args.old)
    try:
        data = json.loads(old.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ToolError(f"{old}: {e}") from None
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("meters"), dict):
        raise ToolError(f"{old} is not a version 1 meter registry")
    Path(args.dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    keys = MeterKeys.load(Path(args.dir) / KEYS_NAME)
    now = int(time.time())  # a previous key carried over gets the full grace period from now
    reg = MeterRegistry.load(args.registry)
    try:
        for mid, d in sorted(data["meters"].items()):
            prev = bytes.fromhex(d["previous_key"]) if d.get("previous_key") else None
            keys.set(mid, MeterKey(bytes.fromhex(d["key"]), prev, now if prev else None))
            meta = {k: v for k, v in d.items() if k not in ("key", "previous_key")}
            reg.put(MeterRecord.from_json(mid, meta), replace_existing=True, save=False)
    except (KeyError, TypeError, ValueError) as e:
        raise ToolError(f"{old}: {e}") from None
    KeyedRegistry(reg, keys).save()  # an end-to-end meter's entry keeps its MAC and status keys only
    print(json.dumps({"meters": len(reg), "meter_keys": str(keys.path), "registry": str(reg.path),
                      "next": f"delete {old} (it still holds every master key)"}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="utility Paillier keys (gateway and decryption folders) and meter keys")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    init = ksub.add_parser("init", help="public key into the gateway's folder; secret key and audit signing key "
                                        "into the decryption role's folder")
    init.add_argument("--dir", required=True, help="the gateway's keys folder (gets utility.pub.json)")
    init.add_argument("--secret-dir", required=True,
                      help="the decryption role's folder, created 0700 (gets utility.key.json and the audit keys); "
                           "must not overlap --dir")
    init.add_argument("--bits", type=int, default=secret_key.DEFAULT_BITS,
                      help="modulus bits (default 2048; 3072 for protection beyond 2030)")
    init.add_argument("--force", action="store_true", help="overwrite existing key files")
    init.set_defaults(func=_init)
    add = ksub.add_parser("add-meter", help="register a meter (random master key unless --key-file)")
    add.add_argument("--dir", required=True, help="the gateway's keys folder (meter-keys.json goes here)")
    add.add_argument("--registry", required=True, help="meters.json (metadata, no keys)")
    add.add_argument("--meter-id", required=True)
    add.add_argument("--feeder", required=True)
    add.add_argument("--household", help="household identity (default: the meter id)")
    add.add_argument("--epsilon-milli", type=int, default=1000)
    add.add_argument("--clamp-wh", type=int, default=1000)
    add.add_argument("--m", type=int, default=10)
    add.add_argument("--key-file", help="file holding the 32-byte master key as hex")
    add.set_defaults(func=_add_meter)
    split = ksub.add_parser("split-registry", help="split a version 1 meters.json (with keys) into the gateway's "
                                                   "meter-keys.json and a key-free meters.json")
    split.add_argument("--old", required=True, help="the version 1 meters.json")
    split.add_argument("--dir", required=True, help="the gateway's keys folder")
    split.add_argument("--registry", required=True, help="where the key-free meters.json goes")
    split.set_defaults(func=_split_registry)
