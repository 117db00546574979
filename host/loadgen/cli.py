"""`meterveil loadgen`: publish correctly sealed readings of N registered meters at a set rate, then
report what the gateway made of them (the counters `meterveil stats` prints).

Why here (a room of its own, next to the gateway): it needs the meters' master keys, which only the
gateway and provisioning hold; it must never reach the decryption role (an import contract).

The broker must let this client publish on every meter's topic: a test broker without per-meter
ACLs, or a load-test login allowed ``meterveil/v1/#`` (never on a production broker).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from meterveil.host.gateway.ingest import stats_summary
from meterveil.host.gateway.meter_keys import KeyedRegistry
from meterveil.host.gateway.mqtt import MqttConfig
from meterveil.host.loadgen.frames import INTERVAL_S, MeterSpec, sealed_frames
from meterveil.host.store.base import StoreError, open_store
from meterveil.tools.fileio import ToolError

MAX_DAYS = 60          # the gateway refuses readings older than 62 days as stale
WINDOW = 5000          # published but not yet acknowledged by the broker: backpressure beyond this


class Progress:
    """A one-line progress bar on stderr (a line every 10 % when stderr is not a terminal)."""

    def __init__(self, total: int, what: str, stream=sys.stderr):
        self.total, self.what, self.stream = max(1, total), what, stream
        self.tty = stream.isatty()
        self.t0 = time.monotonic()
        self._last = 0.0
        self._decile = -1

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        frac = min(1.0, done / self.total)
        if self.tty:
            if not force and now - self._last < 0.2:
                return
            self._last = now
            bar = "#" * int(frac * 30)
            rate = done / max(1e-9, now - self.t0)
            self.stream.write(f"\r{self.what} [{bar:<30}] {frac:6.1%} {done}/{self.total} {rate:,.0f}/s ")
            if force:
                self.stream.write("\n")
            self.stream.flush()
        elif int(frac * 10) > self._decile:
            self._decile = int(frac * 10)
            print(f"{self.what}: {done}/{self.total} ({frac:.0%})", file=self.stream, flush=True)


def _meters(args: argparse.Namespace) -> list[MeterSpec]:
    keys = Path(args.keys)
    if not keys.is_dir():
        raise ToolError(f"--keys {keys} is not a directory (the gateway's keys folder)")
    try:
        reg = KeyedRegistry.load(keys, args.registry)
    except (OSError, ValueError) as e:
        raise ToolError(f"keys: {e}") from None
    if args.register:
        ids = [f"lg{i:06d}" for i in range(args.meters)]
        missing = [m for m in ids if m not in reg]
        for i, mid in enumerate(missing):  # the gateway re-reads the registry when it changes
            reg.add(mid, feeder=f"LG{int(mid[2:]) % args.feeders:03d}", epsilon_milli=1000, clamp_wh=1000,
                    m=10, save=i == len(missing) - 1)
    else:
        # proxy meters only: an end-to-end meter's master key is not in the gateway's file (and its
        # readings are the meter's own Paillier ciphertexts, not the kind 1 frames made here)
        ids = sorted(m for m in reg.ids() if not reg.get(m).end_to_end)[:args.meters]
        if len(ids) < args.meters:
            raise ToolError(f"only {len(ids)} meters registered in proxy mode, {args.meters} asked (use --register to add "
                            f"synthetic ones)")
    out = []
    for mid in ids:
        rec = reg.get(mid)
        out.append(MeterSpec(mid, rec.key, rec.epsilon_milli, rec.clamp_wh, rec.m))
    return out


def _open(db: str | None):
    if db is None:
        return None
    try:
        return open_store(db, create=False)
    except StoreError:
        return None  # the gateway has not created it yet


def _counts(store) -> dict | None:
    return stats_summary(store) if store is not None else None


def _settled(store) -> int:
    """Frames the gateway has counted so far (cheap: the counters table only)."""
    return sum(v for k, v in store.counters().items() if k not in ("status", "status_superseded",
                                                                   "quarantine_released"))


def _delta(after: dict, before: dict | None) -> dict:
    before = before or {"accepted": 0, "duplicate": 0, "rejected_total": 0, "rejected": {}}
    rej = {k: v - before["rejected"].get(k, 0) for k, v in after["rejected"].items()}
    return {"accepted": after["accepted"] - before["accepted"], "duplicate": after["duplicate"] - before["duplicate"],
            "rejected_total": after["rejected_total"] - before["rejected_total"],
            "rejected": {k: v for k, v in rej.items() if v}}


def run(args: argparse.Namespace) -> dict:
    if not 0 < args.days <= MAX_DAYS:
        raise ToolError(f"--days must be in (0, {MAX_DAYS}]: the gateway refuses older readings as stale")
    if args.meters < 1 or args.rate < 0:
        raise ToolError("--meters must be >= 1 and --rate >= 0 (0: as fast as possible)")
    try:
        cfg = MqttConfig.from_url(args.broker)
    except ValueError as e:
        raise ToolError(str(e)) from None
    password = Path(args.password_file).read_text().strip() if args.password_file else None
    meters = _meters(args)
    intervals = max(1, round(args.days * 86400 / INTERVAL_S))
    first = (int(time.time()) // INTERVAL_S - intervals) * INTERVAL_S
    total = intervals * len(meters)
    store = _open(args.db)
    before = _counts(store)
    counted0 = _settled(store) if store is not None else 0

    acked = [0]
    cond = threading.Condition()

    def on_publish(client, userdata, mid, reason_code, properties) -> None:
        with cond:
            acked[0] += 1
            cond.notify_all()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv5)
    if args.username:
        client.username_pw_set(args.username, password)
    if cfg.tls:
        client.tls_set(ca_certs=args.tls_ca)
    client.max_inflight_messages_set(1000)
    client.on_publish = on_publish
    try:
        client.connect(cfg.host, cfg.port, keepalive=60)
    except OSError as e:
        raise ToolError(f"cannot connect to broker {args.broker}: {e}") from None
    client.loop_start()
    bar = Progress(total, "publish") if not args.quiet else None
    sent = 0
    t0 = time.monotonic()
    try:
        for chunk in sealed_frames(meters, first, intervals, processes=args.processes):
            for topic, payload in chunk:
                if args.rate:
                    ahead = sent / args.rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
                with cond:
                    cond.wait_for(lambda s=sent: s - acked[0] < WINDOW, timeout=60)
                info = client.publish(topic, payload, qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    raise ToolError(f"publish failed: {mqtt.error_string(info.rc)}")
                sent += 1
                if bar:
                    bar.update(sent)
        with cond:
            if not cond.wait_for(lambda: acked[0] >= sent, timeout=120):
                raise ToolError(f"the broker acknowledged {acked[0]} of {sent} messages")
    finally:
        client.disconnect()
        client.loop_stop()
    publish_s = time.monotonic() - t0
    if bar:
        bar.update(sent, force=True)
    report = {"meters": len(meters), "intervals": intervals, "published": sent, "publish_s": round(publish_s, 3),
              "publish_rate": round(sent / max(publish_s, 1e-9), 1)}
    if args.db:
        # the gateway counts every frame once: accepted, duplicate or one rejection reason
        deadline = time.monotonic() + args.settle_s
        seen = Progress(sent, "ingest") if not args.quiet else None
        done = 0
        while True:
            store = store or _open(args.db)
            done = _settled(store) - counted0 if store is not None else 0
            if seen:
                seen.update(done)
            if done >= sent or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        total_s = time.monotonic() - t0
        if seen:
            seen.update(done, force=True)
        d = _delta(_counts(store), before) if store is not None else {}
        if store is not None:
            store.close()
        report.update({"settled": done >= sent, "ingest_s": round(total_s, 3),
                       "ingest_rate": round(done / max(total_s, 1e-9), 1), **d})
    return report


def _loadgen(args: argparse.Namespace) -> int:
    report = run(args)
    print(json.dumps(report, indent=1, sort_keys=True))
    return 0 if report.get("settled", True) else 1


def _nonneg(text: str) -> float:
    v = float(text)
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("loadgen", help="publish sealed readings of N meters at a set rate (load tests)")
    g.add_argument("--meters", type=int, required=True, help="number of meters")
    g.add_argument("--days", type=float, default=1.0, help="days of 15-minute readings per meter, ending now")
    g.add_argument("--rate", type=_nonneg, default=0.0, help="messages per second in all (0: as fast as possible)")
    g.add_argument("--broker", required=True, help="mqtt://HOST:PORT")
    g.add_argument("--keys", required=True, help="the gateway's keys folder (meter-keys.json)")
    g.add_argument("--registry", required=True, help="meters.json")
    g.add_argument("--register", action="store_true",
                   help="register synthetic meters lg000000.. that are missing (keys and registry)")
    g.add_argument("--feeders", type=int, default=10, help="feeders for --register")
    g.add_argument("--db", help="the gateway's store: wait until every frame is counted, report the counters")
    g.add_argument("--settle-s", type=float, default=600.0, help="how long to wait for the gateway (with --db)")
    g.add_argument("--processes", type=int, default=None, help="sealing processes (default: CPU count)")
    g.add_argument("--client-id", default="meterveil-loadgen")
    g.add_argument("--username")
    g.add_argument("--password-file")
    g.add_argument("--tls-ca")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.set_defaults(func=_loadgen)
