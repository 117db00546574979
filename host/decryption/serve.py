"""`meterveil decryption serve`: answer the web console's release requests as the decryption role.

Why a separate process: the web tier holds no key. A billing clerk or analyst queues a request in the
release queue (host/common/release_queue.py); this process, which holds the Paillier secret key,
claims it, runs exactly what `meterveil bill` / `meterveil feeder-load` run (`run_bills`,
`run_feeder_load`: same policy, same audit entries, one session per request so each closes with an
anchor) and writes the released rows and the refusals with their reasons back to the queue. The
actor in the audit log names the web user and the request: ``web:NAME#ID``.

Tariffs: the request names a tariff; only the tariff files this process was started with
(``--tariff``, by their ``name``) can be used, so a web user cannot point the role at a file.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from meterveil.host.common.release_queue import ReleaseQueue, Request

log = logging.getLogger(__name__)

MAX_FEEDER_SPAN_S = 31 * 86400 + 3600  # one month (plus a DST hour) per feeder-load request


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decryption", help="the decryption role as a service: answer queued release requests")
    dsub = p.add_subparsers(dest="decryption_command", metavar="ACTION", required=True)
    s = dsub.add_parser("serve", help="take queued bill and feeder-load requests, decrypt under policy, write results")
    s.add_argument("--db", required=True, help="the ingest store (read only)")
    s.add_argument("--role-dir", required=True, help="the decryption role's folder")
    s.add_argument("--registry", required=True, help="meters.json (no keys)")
    s.add_argument("--queue", default=None, help="release queue database (default: releases.db next to --db)")
    s.add_argument("--tariff", action="append", default=[],
                   help="tariff TOML a bill request may name (repeatable; default: the default tariff)")
    s.add_argument("--k-min", type=int, default=5)
    s.add_argument("--daily-budget", default=None, help="epsilon per feeder per UTC day for feeder loads")
    s.add_argument("--poll-s", type=float, default=1.0, help="seconds between looks at the queue")
    s.add_argument("--once", action="store_true", help="answer what is queued, then exit")
    s.set_defaults(func=serve_cmd)


def tariffs_by_name(paths: list[str]) -> dict[str, Path]:
    from meterveil.host.backoffice.tariff import DEFAULT_TARIFF, load_tariff

    out = {}
    for p in paths or [str(DEFAULT_TARIFF)]:
        out[load_tariff(p).name] = Path(p)
    return out


def _bill_json(b: Any) -> dict[str, Any]:
    return {"meter_id": b.meter_id, "period": b.period, "currency": b.currency, "minor_unit": b.minor_unit,
            "total_minor": b.total_minor, "total_wh": b.total_wh, "readings": b.readings,
            "missing_intervals": b.missing_intervals,
            "lines": [{"band": ln.band, "kind": ln.kind, "wh": ln.wh, "rate": None if ln.rate is None else str(ln.rate),
                       "amount_minor": ln.amount_minor} for ln in b.lines]}


class Worker:
    """Answers requests one at a time; `answer` is the unit tests and the demo call."""

    def __init__(self, db: str, role_dir: str, registry: str, queue: ReleaseQueue, tariffs: dict[str, Path],
                 k_min: int = 5, daily_budget: str | None = None):
        self.base = dict(db=db, role_dir=role_dir, registry=registry, k_min=k_min)
        self.queue = queue
        self.tariffs = tariffs
        self.daily_budget = daily_budget

    def run_once(self) -> int:
        """Answer every queued request; returns how many."""
        n = 0
        while (req := self.queue.claim()) is not None:
            self.answer(req)
            n += 1
        return n

    def answer(self, req: Request) -> None:
        from meterveil.host.decryption.cli import _input_errors, _wrong_key_errors

        actor = f"web:{req.requested_by}#{req.id}"
        try:
            if req.kind == "bill":
                self._bill(req, actor)
            else:
                self._feeder_load(req, actor)
        except _wrong_key_errors() as e:
            self.queue.finish(req.id, "failed", f"the secret key does not match the gateway's public key ({e})")
        except _input_errors() as e:
            status = "refused" if type(e).__name__ in ("PolicyError", "AuditError") else "failed"
            self.queue.finish(req.id, status, str(e))
        except (ValueError, KeyError, TypeError) as e:  # malformed parameters, tariff errors
            self.queue.finish(req.id, "failed", f"{type(e).__name__}: {e}")
        log.info("request %d (%s by %s): %s", req.id, req.kind, req.requested_by, self.queue.get(req.id).status)

    def _bill(self, req: Request, actor: str) -> None:
        from meterveil.host.decryption.cli import run_bills

        name = str(req.params.get("tariff", ""))
        if name not in self.tariffs:
            raise ValueError(f"tariff {name!r} is not one this decryption role serves ({', '.join(self.tariffs)})")
        period = str(req.params["period"])
        args = argparse.Namespace(**self.base, actor=actor, tariff=str(self.tariffs[name]), period=period, out=None)
        _, bills, refusals = run_bills(args)
        status = "done" if not refusals else ("partial" if bills else "refused")
        reason = "" if not refusals else f"{len(refusals)} households refused by policy"
        self.queue.finish(req.id, status, reason, bills=[_bill_json(b) for b in bills], refusals=refusals,
                          summary={"bills": len(bills), "refused": len(refusals),
                                   "total_minor": sum(b.total_minor for b in bills)})

    def _feeder_load(self, req: Request, actor: str) -> None:
        from decimal import Decimal

        from meterveil.host.decryption.cli import run_feeder_load

        t_from, t_to = int(req.params["t_from"]), int(req.params["t_to"])
        if not 0 < t_to - t_from <= MAX_FEEDER_SPAN_S:
            raise ValueError("a feeder-load request covers more than 0 s and at most one month")
        args = argparse.Namespace(**self.base, actor=actor, feeder=str(req.params["feeder"]), t_from=t_from,
                                  t_to=t_to, out=None,
                                  daily_budget=None if self.daily_budget is None else Decimal(self.daily_budget))
        loads = run_feeder_load(args)
        refused = [(f"{fl.feeder}@{fl.interval_start}", fl.status) for fl in loads if not fl.allowed]
        released = len(loads) - len(refused)
        status = "done" if not refused else ("partial" if released else "refused")
        self.queue.finish(req.id, status, f"{len(refused)} intervals refused by policy" if refused else "",
                          feeder_loads=[asdict(fl) for fl in loads], refusals=refused[:1000],
                          summary={"released": released, "refused": len(refused)})


def serve_cmd(args: argparse.Namespace) -> int:
    from meterveil.host.common.release_queue import QUEUE_NAME
    from meterveil.host.decryption.session import check_role_dir

    check_role_dir(args.role_dir)
    queue = ReleaseQueue(args.queue or Path(args.db).with_name(QUEUE_NAME))
    stale = queue.requeue_stale()
    if stale:
        log.warning("%d requests left running by a previous worker: queued again", stale)
    worker = Worker(args.db, args.role_dir, args.registry, queue, tariffs_by_name(args.tariff), args.k_min,
                    args.daily_budget)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"decryption role serving {queue.path} (tariffs: {', '.join(worker.tariffs)})", flush=True)
    try:
        while True:
            worker.run_once()
            if args.once or stop.wait(args.poll_s):
                return 0
    finally:
        queue.close()
