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

from meterveil.host.common.pubkey import PUBLIC_NAME, load_public, secret_keys_in
from meterveil.host.gateway.encryptor import PACKED_STRATEGIES, make_encryptor
from meterveil.host.gateway.ingest import Gateway, IngestConfig, stats_summary
from meterveil.host.gateway.meter_keys import KeyedRegistry
from meterveil.host.gateway.mqtt import MqttConfig, MqttIngest
from meterveil.host.store.base import StoreError, StoreVersionError, open_store
from meterveil.tools.fileio import ToolError

log = logging.getLogger("meterveil.gateway")


def _read_file(what: str, path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise ToolError(f"{what} {p} {'is a directory' if p.is_dir() else 'does not exist'}")
    try:
        return p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ToolError(f"{what} {p}: cannot read ({e})") from None


def _load_keys(keys_dir: str, registry_path: str):
    """(public key, keyed registry) for the gateway; ToolError naming what is missing, and a refusal to
    run where a Paillier secret key can be read (its folder or the registry's)."""
    d = Path(keys_dir)
    if not d.is_dir():
        what = "is not a directory" if d.exists() else "does not exist"
        raise ToolError(f"keys dir {d} {what} (create it with `meterveil keys init --dir {d} --secret-dir ...`)")
    for folder in dict.fromkeys((d, Path(registry_path).parent)):
        found = secret_keys_in(folder)
        if found:
            raise ToolError(f"refusing to start: {found[0]} holds the Paillier secret key; the gateway holds the "
                            f"public key only. Move it to the decryption role's folder (keys init --secret-dir)")
    if not (d / PUBLIC_NAME).is_file():
        raise ToolError(f"no {PUBLIC_NAME} in {d} (create it with `meterveil keys init --dir {d} --secret-dir ...`)")
    if not Path(registry_path).is_file():
        raise ToolError(f"--registry {registry_path} does not exist (provision meters first)")
    try:
        pub = load_public(d / PUBLIC_NAME)
        registry = KeyedRegistry.load(d, registry_path)
    except (OSError, ValueError) as e:  # KeyFileError, malformed JSON, unreadable file
        raise ToolError(f"keys: {e}") from None
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
                                  stay_in_group=args.stay_in_group,
                                  batch_size=args.batch_size, batch_ms=args.batch_ms,
                                  quarantine_retry_s=args.quarantine_retry_s)
    except ValueError as e:
        raise ToolError(str(e)) from None
    pub, registry = _load_keys(args.keys, args.registry)
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
    g.add_argument("--db", required=True, help="store: an SQLite file path, or postgresql://USER@HOST:PORT/DB "
                   "(several gateway workers on one database; use --share-group and one --client-id each)")
    g.add_argument("--keys", required=True, help="the gateway's keys folder: utility.pub.json and meter-keys.json")
    g.add_argument("--registry", required=True, help="meters.json: meter metadata (feeder, DP parameters)")
    g.add_argument("--tls-ca", help="CA file for TLS to the broker")
    g.add_argument("--username")
    g.add_argument("--password-file")
    g.add_argument("--share-group", help="MQTT v5 shared subscription group ($share/NAME/...)")
    g.add_argument("--stay-in-group", action="store_true",
                   help="on SIGTERM keep this worker's session in the share group, so the broker queues its "
                        "share until it restarts (use when stopping every worker: a group without members "
                        "drops readings); by default a stopping worker leaves and the others take over")
    g.add_argument("--client-id", default="meterveil-gateway",
                   help="fixed id: the broker keeps our session (a broker from `meterveil broker-config` uses "
                        "the login as client id instead, so no other account can take the session over)")
    g.add_argument("--encryption", choices=PACKED_STRATEGIES, default="djn+packed")
    g.add_argument("--djn-exp-bits", type=int, default=None, help="DJN exponent bits (default n_bits/2)")
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--batch-ms", type=int, default=100)
    g.add_argument("--duplicate-window-s", type=int, default=IngestConfig.duplicate_window_s)
    g.add_argument("--quarantine-retry-s", type=_positive_seconds, default=MqttConfig.quarantine_retry_s,
                   help="retry frames kept in quarantine (unknown meter, clock, DP params) this often")
    g.set_defaults(func=_gateway)
    s = sub.add_parser("stats", help="ingest counters as JSON")
    s.add_argument("--db", required=True, help="SQLite store path or postgresql:// URL")
    s.add_argument("--per-meter", action="store_true")
    s.set_defaults(func=_stats)
