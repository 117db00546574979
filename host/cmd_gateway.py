"""`meterveil gateway ...` (MQTT ingest service) and `meterveil stats --db PATH` (counters as JSON)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import ssl
import threading
from pathlib import Path

from meterveil.tools.fileio import ToolError

from . import keys
from .gateway import Gateway, IngestConfig, stats_summary
from .mqtt_ingest import MqttConfig, MqttIngest
from .paillier_fast import PACKED_STRATEGIES, make_encryptor
from .store import StoreError, open_store
from .store_sqlite import StoreVersionError

log = logging.getLogger("meterveil.gateway")


def _read_file(what: str, path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise ToolError(f"{what} {p} {'is a directory' if p.is_dir() else 'does not exist'}")
    try:
        return p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ToolError(f"{what} {p}: cannot read ({e})") from None


def _load_keys(keys_dir: str):
    """(public key, registry) from the gateway's keys dir; ToolError naming what is missing."""
    d = Path(keys_dir)
    if not d.is_dir():
        what = "is not a directory" if d.exists() else "does not exist"
        raise ToolError(f"keys dir {d} {what} (create it with `meterveil keys init --dir {d}`)")
    if not (d / keys.PUBLIC_NAME).is_file():
        raise ToolError(f"no {keys.PUBLIC_NAME} in {d} (create it with `meterveil keys init --dir {d}`)")
    try:
        pub = keys.load_public(d / keys.PUBLIC_NAME)
        registry = keys.MeterRegistry.load(d)
    except (OSError, ValueError) as e:  # KeyFileError, malformed JSON, unreadable file
        raise ToolError(f"keys dir {d}: {e}") from None
    if (d / keys.SECRET_NAME).exists():
        log.warning("%s is next to the gateway's keys: the gateway needs only the public key; "
                    "move the secret key to the decryption role", keys.SECRET_NAME)
    return pub, registry


def _open_store(path: str, *, create: bool):
    try:
        return open_store(path, create=create)
    except (StoreError, StoreVersionError) as e:
        raise ToolError(str(e)) from None
    except OSError as e:  # e.g. a folder that cannot be created
        raise ToolError(f"store {path}: {e.strerror or e}") from None


def _gateway(args: argparse.Namespace) -> int:
    # every input is checked before the store is opened (created), so a typo leaves nothing behind
    password = _read_file("--password-file", args.password_file).strip() if args.password_file else None
    if args.tls_ca:
        _read_file("--tls-ca", args.tls_ca)
        try:
            ssl.create_default_context(cafile=args.tls_ca)
        except (ssl.SSLError, ValueError) as e:
            raise ToolError(f"--tls-ca {args.tls_ca}: not a PEM CA certificate ({e})") from None
    try:
        cfg = MqttConfig.from_url(args.broker, tls_ca=args.tls_ca, username=args.username, password=password,
                                  client_id=args.client_id, share_group=args.share_group,
                                  batch_size=args.batch_size, batch_ms=args.batch_ms,
                                  quarantine_retry_s=args.quarantine_retry_s)
    except ValueError as e:
        raise ToolError(str(e)) from None
    pub, registry = _load_keys(args.keys)
    store = _open_store(args.db, create=True)
    encryptor = make_encryptor(args.encryption, pub, exp_bits=args.djn_exp_bits)
    gw = Gateway(store, registry, encryptor, IngestConfig(duplicate_window_s=args.duplicate_window_s))
    ingest = MqttIngest(gw, cfg)
    done = threading.Event()

    def on_signal(signum, _frame) -> None:
        log.info("signal %d: finishing the current batch", signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("gateway starting: %d meters, encryption %s, %d-bit key", len(registry), args.encryption,
             pub.n.bit_length())
    ingest.start()
    while not done.wait(0.5):
        if ingest.error is not None:
            break
    ingest.stop()
    encryptor.close()
    store.close()
    return 1 if ingest.error is not None else 0


def _stats(args: argparse.Namespace) -> int:
    store = _open_store(args.db, create=False)
    try:
        out = stats_summary(store)
        if args.per_meter:
            out["per_meter"] = store.meter_counters()
    finally:
        store.close()
    print(json.dumps(out, indent=1, sort_keys=True))
    return 0


def _positive_seconds(text: str) -> float:
    """A finite number of seconds > 0 (0 would spin the worker, nan/inf would stop it)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text!r}")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("gateway", help="ingest sealed frames from MQTT into the ciphertext store")
    g.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    g.add_argument("--db", required=True, help="SQLite store path")
    g.add_argument("--keys", required=True, help="keys dir with utility.pub.json and meters.json")
    g.add_argument("--tls-ca", help="CA file for TLS to the broker")
    g.add_argument("--username")
    g.add_argument("--password-file")
    g.add_argument("--share-group", help="MQTT v5 shared subscription group ($share/NAME/...)")
    g.add_argument("--client-id", default="meterveil-gateway", help="fixed id: the broker keeps our session")
    g.add_argument("--encryption", choices=PACKED_STRATEGIES, default="djn+packed")
    g.add_argument("--djn-exp-bits", type=int, default=None, help="DJN exponent bits (default n_bits/2)")
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--batch-ms", type=int, default=100)
    g.add_argument("--duplicate-window-s", type=int, default=IngestConfig.duplicate_window_s)
    g.add_argument("--quarantine-retry-s", type=_positive_seconds, default=60.0,
                   help="retry frames kept in quarantine (unknown meter, clock, DP params) this often")
    g.set_defaults(func=_gateway)
    s = sub.add_parser("stats", help="ingest counters as JSON")
    s.add_argument("--db", required=True)
    s.add_argument("--per-meter", action="store_true")
    s.set_defaults(func=_stats)
