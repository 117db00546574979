"""The auditor's view of the decryption role's signed log, with the public verify key only.

Why folded incrementally: every decision is an entry; the page shows the newest releases and the
privacy spend per feeder and day, which is the release ledger folded from the log. Folding only
the entries after the last one seen keeps a page cheap on a long log. Whether the log can be
trusted is the verify button (full chain, signatures, newest anchor), as `meterveil audit verify`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from meterveil.host.audit import anchors, signing
from meterveil.host.audit.chain import AuditError, AuditLog
from meterveil.host.audit.ledger import Ledger
from meterveil.host.backoffice import dp


class AuditView:
    def __init__(self, db: Path, verify_key: Path | None = None, anchor_log: Path | None = None):
        self.db = Path(db)
        self.verify_key_path = Path(verify_key) if verify_key else self.db.with_name(signing.VERIFY_NAME)
        self.anchors_path = Path(anchor_log) if anchor_log else self.db.with_name(anchors.ANCHORS_NAME)
        self._ledger = Ledger()
        self._lock = threading.Lock()

    def _open(self) -> AuditLog | None:
        if not self.db.is_file():
            return None
        return AuditLog(self.db, readonly=True)

    def head(self) -> tuple[int, str]:
        log = self._open()
        if log is None:
            return (0, "")
        with log:
            return log.head()

    def summary(self, limit: int = 100) -> dict[str, Any]:
        log = self._open()
        if log is None:
            return {"entries": [], "head": (0, ""), "spend": [], "budget": None, "missing": True}
        with log, self._lock:
            try:
                self._ledger.apply_all(log.entries_after(self._ledger.seq))
            except AuditError as e:
                return {"entries": [], "head": log.head(), "spend": [], "budget": None, "error": str(e)}
            head = log.head()
            rows = log._db.execute(
                "SELECT seq, ts, actor, action, query, decision, reason FROM audit_log ORDER BY seq DESC LIMIT ?",
                (limit,)).fetchall()
            spend = sorted(_spend_per_day(self._ledger), key=lambda r: (r[1], r[0]), reverse=True)
        entries = [{"seq": r[0], "ts": r[1][:19].replace("T", " "), "actor": r[2], "action": r[3],
                    "query": _short_query(r[4]), "decision": r[5], "reason": r[6]} for r in rows]
        return {"entries": entries, "head": head, "spend": spend[:200], "budget": self._ledger.daily_budget_milli}

    def verify(self) -> dict[str, Any]:
        try:
            key = signing.load_verify(self.verify_key_path)
            newest = anchors.latest(self.anchors_path, key)
            anchor = None if newest is None else (newest.seq, newest.hash)
            log = self._open()
            if log is None:
                return {"ok": False, "text": f"no audit log at {self.db.name}"}
            with log:
                if anchor is None and log.head()[0] > 0:
                    return {"ok": False, "text": "the anchor log is empty but the audit log is not: truncation "
                                                 "cannot be ruled out"}
                result = log.verify(key, anchor)
        except (OSError, ValueError, AuditError, anchors.AnchorError) as e:
            return {"ok": False, "text": str(e)}
        text = result.describe() + ("" if anchor is None else f" (reaches anchor {anchor[0]})")
        return {"ok": result.ok, "text": text}


def _short_query(text: str) -> str:
    """The query as one readable line (long member lists cut)."""
    import json

    try:
        q = json.loads(text)
    except ValueError:
        return text[:200]
    parts = []
    for k in ("meter_id", "period", "feeder", "month", "interval_start", "t_from", "t_to", "readings", "contributors"):
        if k in q:
            parts.append(f"{k}={q[k]}")
    if "labels" in q:
        parts.append(f"{len(q['labels'])} slots in {len(set(q['labels']))} bands")
    if "meters" in q:
        parts.append(f"{len(q['meters'])} meters")
    return ", ".join(parts) or text[:120]


def _spend_per_day(ledger: Ledger) -> list[tuple[str, str, int, float]]:
    """(feeder, UTC day, intervals released, household-day epsilon with the policy's gamma colluding),
    composed the way the decryption role and privacy-report account it."""
    out = []
    for (feeder, day), cells in ledger.released_cells().items():
        clamp = max(c.clamp_wh for c in cells)
        eps = dp.household_day_epsilon(clamp, [(c.intervals, c.noise_var) for c in cells])
        out.append((feeder, day, sum(c.intervals for c in cells), eps))
    return out
