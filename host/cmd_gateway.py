"""`meterveil gateway ...` (MQTT ingest service) and `meterveil stats --db PATH` (counters as JSON)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path

from . import keys
from .gateway import Gateway, IngestConfig, stats_summary
from .mqtt_ingest import MqttConfig, MqttIngest
from .paillier_fast import PACKED_STRATEGIES, make_encryptor
from .store import open_store

log = logging.getLogger("meterveil.gateway")


def _gateway(args: argparse.Namespace) -> int:
    password = Path(args.password_file).read_text().strip() if args.password_file else None
    cfg = MqttConfig.from_url(args.broker, tls_ca=args.tls_ca, username=args.username, password=password,
                              client_id=args.client_id, share_group=args.share_group,
                              batch_size=args.batch_size, batch_ms=args.batch_ms,
                              quarantine_retry_s=args.quarantine_retry_s)
    pub = keys.load_public(Path(args.keys) / keys.PUBLIC_NAME)
    if (Path(args.keys) / keys.SECRET_NAME).exists():
        log.warning("%s is next to the gateway's keys: the gateway needs only the public key; "
                    "move the secret key to the decryption role", keys.SECRET_NAME)
    registry = keys.MeterRegistry.load(args.keys)
    store = open_store(args.db)
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
    store = open_store(args.db)
    try:
        out = stats_summary(store)
        if args.per_meter:
            out["per_meter"] = store.meter_counters()
    finally:
        store.close()
    print(json.dumps(out, indent=1, sort_keys=True))
    return 0


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
    g.add_argument("--quarantine-retry-s", type=float, default=60.0,
                   help="retry frames kept in quarantine (unknown meter, clock, DP params) this often")
    g.set_defaults(func=_gateway)
    s = sub.add_parser("stats", help="ingest counters as JSON")
    s.add_argument("--db", required=True)
    s.add_argument("--per-meter", action="store_true")
    s.set_defaults(func=_stats)
