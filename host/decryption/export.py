"""Household exports: monthly kWh decrypted through the decryption role, anonymised, audited.

Two kinds, both safe to publish twice: a k-anonymous table whose generalisation (attributes and
monthly kWh bins) is fixed by the deployment's first export and whose classes are split by what
earlier exports released (the export ledger, folded from the audit log: `audit/ledger.py`), so any
number of exports of overlapping populations leave every household in a set of >= k identical
histories; or a synthetic table that is epsilon-DP (`backoffice/dp_synth.py`), the deployment's
synthetic exports sharing EXPORT_EPSILON_CAP.

Why the export goes through the decryption role: monthly kWh per household are bill totals, which
only the role may decrypt (each decryption is audited as a "bill" entry); the export itself is one
more audit entry naming k, what was generalised or synthesised, and an HMAC of the file written.
The meter id never leaves this module (it is printed on stderr for the operator when the role
refuses a household, never written to the CSV or its report). `run_export` is importable for tests
and the demo.

Why the months are billing periods in the tariff's time zone: the role pins the window of every
household period it decrypts and refuses a second decryption over a shifted window (the difference
of two windows would expose a few hours of readings). Months taken in UTC would collide with every
month already billed in, say, Asia/Kolkata; the same window is allowed again (same value).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

from meterveil.host.common.files import write_private
from meterveil.host.common.outpath import prepare_output

log = logging.getLogger(__name__)

EXPORT_TARIFF_NAME = "export-monthly-kwh"
MIN_EXPORT_K = 2
# Every household is in every synthetic export, so their epsilons add up (basic composition); the
# deployment's synthetic exports together stay within this.
EXPORT_EPSILON_CAP = 4.0


def export_tariff(zone: str):
    """One band over the whole day, calendar months in `zone`: the role's bill path yields monthly totals."""
    from meterveil.host.backoffice.tariff import parse_tariff

    return parse_tariff({
        "name": EXPORT_TARIFF_NAME, "currency": "XXX", "minor_unit": "none", "timezone": zone,
        "bands": [{"name": "all", "price_minor_per_kwh": "0", "windows": [{"days": "all", "hours": "00-24"}]}],
    }, "export")


def recorded_bill_zones(db: str | Path) -> list[str]:
    """Time zones of earlier allowed bills in the audit log, most recent first (real bills before
    earlier exports), without repeats. Empty if there are none."""
    if not Path(db).is_file():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='audit_log'").fetchone() is None:
            return []
        rows = conn.execute(
            "SELECT json_extract(query, '$.timezone') AS tz FROM audit_log WHERE action = 'bill' "
            "AND decision = 'allow' AND tz IS NOT NULL "
            "ORDER BY (json_extract(query, '$.tariff') = ?), seq DESC", (EXPORT_TARIFF_NAME,)).fetchall()
    finally:
        conn.close()
    return list(dict.fromkeys(str(r[0]) for r in rows))


def billing_zone(db: str | Path, tariff: str | Path | None, recorded: list[str] | None = None) -> tuple[str, str]:
    """(time zone of the export's months, where it came from).

    --tariff wins; else the zone of the latest bills in the audit log (`recorded`, read if None);
    else the tariff the demo and the docs bill with (tariffs/tou3.toml).
    """
    from meterveil.host.backoffice.tariff import load_tariff

    if tariff is not None:
        t = load_tariff(tariff)
        return t.timezone, f"tariff {t.name} ({tariff})"
    zones = recorded_bill_zones(db) if recorded is None else recorded
    if zones:
        return zones[0], "earlier bills (audit log)"
    from meterveil.host.backoffice.tariff import DEFAULT_TARIFF, TariffError

    try:
        t = load_tariff(DEFAULT_TARIFF)
    except TariffError as e:
        raise ValueError(f"no earlier bills to take the time zone from and the default tariff is unusable "
                         f"({e}); pass --tariff FILE (the tariff the bills use)") from None
    return t.timezone, f"default tariff {t.name} ({DEFAULT_TARIFF.name})"


@dataclass(frozen=True)
class ExportResult:
    out: Path
    report: dict[str, Any]
    table: pd.DataFrame
    # period -> [(meter_id, reason)] the decryption role refused (for the operator: stderr, audit log;
    # the report carries counts and reasons only, never meter ids)
    refusals: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    # exact counts for the operator (households in, left out, refusals per month): in the report file of
    # a k-anonymous export only; a DP synthetic export's report carries nothing measured without noise
    operator: dict[str, Any] = field(default_factory=dict)


def _months(store, tz: ZoneInfo, now: datetime | None = None) -> list[str]:
    """Calendar months (in `tz`, the billing zone) from the first to the last stored reading that have
    ended: a running month is incomplete for research, and decrypting it would be an interim bill."""
    row = store.interval_bounds()
    if row is None:
        return []
    now = now or datetime.now(tz)
    t0 = datetime.fromtimestamp(row[0], tz)
    t1 = datetime.fromtimestamp(row[1], tz)
    out, y, mo = [], t0.year, t0.month
    while (y, mo) <= (t1.year, t1.month):
        nxt = (y + 1, 1) if mo == 12 else (y, mo + 1)
        if datetime(nxt[0], nxt[1], 1, tzinfo=tz) <= now:
            out.append(f"{y:04d}-{mo:02d}")
        y, mo = nxt
    return out


def monthly_kwh(role, store, meter_ids: list[str], tariff) -> tuple[pd.DataFrame, dict[str, list[tuple[str, str]]]]:
    """(meter_id x month kWh, refusals per month) decrypted by the role as one-band bill totals (audited).

    Months are the tariff's billing periods. A household the role refuses for a month (period billed
    over another window, too few new readings since the last bill, ...) has no value for it (NaN);
    the refusals of `meter_ids` are returned as {period: [(meter_id, reason)]}.
    """
    wanted = set(meter_ids)
    cols: dict[str, dict[str, int]] = {}
    refused: dict[str, list[tuple[str, str]]] = {}
    for period in _months(store, tariff.tz):
        col = cols.setdefault(f"kwh_{period}", {})
        for t in role.household_totals(store, tariff, period, meter_ids):
            col[t.meter_id] = round(sum(t.band_wh.values()) / 1000)
        mine = [(mid, why) for mid, why in role.refusals if mid in wanted]
        if mine:
            refused[period] = sorted(mine)
    kwh = pd.DataFrame({c: pd.Series(v, dtype="float64") for c, v in cols.items()}, index=sorted(wanted))
    return kwh.rename_axis("meter_id"), refused


def attributes_table(registry) -> tuple[pd.DataFrame, int]:
    """meter_id x quasi-identifiers from provisioning metadata; meters lacking any are left out (count)."""
    from meterveil.host.backoffice.anonymize import QUASI_IDENTIFIERS

    rows, skipped = {}, 0
    for rec in registry:
        a = rec.attributes
        if all(q in a for q in QUASI_IDENTIFIERS):
            rows[rec.meter_id] = {q: a[q] for q in QUASI_IDENTIFIERS}
        else:
            skipped += 1
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("meter_id"), skipped


def _load_registry(path: Path):
    """The meter registry the attributes come from, with precise errors for a missing/empty one."""
    from meterveil.host.backoffice.anonymize import QUASI_IDENTIFIERS
    from meterveil.host.common.registry import REGISTRY_NAME, MeterRegistry

    reg_file = path / REGISTRY_NAME if path.is_dir() else path
    if not reg_file.is_file():
        raise FileNotFoundError(f"no meter registry {reg_file}: the export reads the households' attributes "
                                f"from {REGISTRY_NAME} (pass --registry FILE)")
    registry = MeterRegistry.load(reg_file)
    if len(registry) == 0:
        raise ValueError(f"{reg_file} lists no meters: nothing to export")
    missing = Counter(q for rec in registry for q in QUASI_IDENTIFIERS if q not in rec.attributes)
    if all(any(q not in rec.attributes for q in QUASI_IDENTIFIERS) for rec in registry):
        lacking = ", ".join(f"{q} on {n}" for q, n in missing.items())
        raise ValueError(f"none of the {len(registry)} meters in {reg_file} has all the attributes the export "
                         f"needs ({', '.join(QUASI_IDENTIFIERS)}; missing: {lacking}); set them when "
                         f"provisioning: meterveil provision ... --attr home_type=flat --attr occupants=2 "
                         f"--attr tariff_type=tou --attr region=north")
    return registry


def describe_refusals(refusals: dict[str, list[tuple[str, str]]], limit: int = 12) -> list[str]:
    """Operator-facing lines: per month and reason, how many households and which (meter ids)."""
    lines = []
    for period, items in sorted(refusals.items()):
        by_reason: dict[str, list[str]] = {}
        for mid, why in items:
            by_reason.setdefault(why, []).append(mid)
        for why, ids in by_reason.items():
            shown = ", ".join(ids[:limit]) + (f", ... (+{len(ids) - limit})" if len(ids) > limit else "")
            lines.append(f"{period}: {len(ids)} household(s) [{shown}]: {why}")
    return lines


def _refusal_summary(refusals: dict[str, list[tuple[str, str]]]) -> dict[str, Any]:
    """Report-facing: per month the number of refused households and the reasons, no meter ids."""
    return {period: {"households": len(items), "reasons": dict(Counter(why for _, why in items))}
            for period, items in sorted(refusals.items())}


def run_export(db: str | Path, role_dir: str | Path, out: str | Path, *, registry: str | Path, k: int = 5,
               synthetic: int | None = None, epsilon: float = 1.0, max_suppress: float = 0.05, seed: int | None = None,
               actor: str | None = None, tariff: str | Path | None = None) -> ExportResult:
    """Decrypt monthly totals through the role, anonymise, write CSV + report, audit the export.

    Everything that can be checked without the key (store, registry and attributes, output path,
    time zone) is checked before anything is decrypted.
    """
    from meterveil.host.decryption.policy import Policy, PolicyError
    from meterveil.host.decryption.session import check_role_dir, close_role, open_role
    from meterveil.host.store.base import open_store

    if not Path(db).exists():
        raise FileNotFoundError(f"store {db} does not exist")
    paths = check_role_dir(role_dir)
    reg = _load_registry(Path(registry))
    out = prepare_output(out)
    report_path = prepare_output(f"{out}.report.json", "report")
    earlier = recorded_bill_zones(paths["db"])
    zone, zone_source = billing_zone(paths["db"], tariff, earlier)
    warnings: list[str] = []
    if earlier and zone != earlier[0]:
        warnings.append(f"months are taken in {zone} ({zone_source}) but the latest bills used {earlier[0]}: "
                        f"the role refuses months already billed over another window")
    store = open_store(db, create=False)
    try:
        role = open_role(role_dir, actor or getpass.getuser(), Policy.from_registry(reg), reg)
    except BaseException:
        store.close()
        raise
    query: dict[str, Any] = {"k": k, "synthetic": synthetic, "max_suppress": max_suppress, "timezone": zone}
    if synthetic is not None:
        query["epsilon"] = epsilon
    if seed is not None:  # a known seed undoes the row shuffle (and fixes the DP noise): on the record
        query["seed"] = seed
    try:
        bad = (f"refused: k={k} < {MIN_EXPORT_K}" if k < MIN_EXPORT_K else
               "refused: --synthetic must be >= 1" if synthetic is not None and synthetic < 1 else
               "refused: --epsilon must be > 0" if synthetic is not None and not epsilon > 0 else None)
        if bad is not None:
            reason = bad
            role.record("export-households", query, "refuse", reason)
            raise PolicyError(reason)
        attrs, skipped = attributes_table(reg)
        kwh, refusals = monthly_kwh(role, store, sorted(attrs.index), export_tariff(zone))
        if kwh.shape[1] == 0:
            role.record("export-households", query, "refuse", "refused: the store holds no readings")
            raise PolicyError(f"store {db} holds no readings: nothing to export")
        dropped_months = [c for c in kwh.columns if kwh[c].isna().all()]  # every household refused
        kwh = kwh.drop(columns=dropped_months)
        incomplete = kwh.isna().any(axis=1)
        refused_summary = _refusal_summary(refusals)
        query.update(refused={p: v["households"] for p, v in refused_summary.items()},
                     refused_meters={p: [mid for mid, _ in items] for p, items in refusals.items()})
        if kwh.shape[1] == 0 or incomplete.all():
            role.record("export-households", query, "refuse",
                         "refused: the decryption role refused the monthly totals of every household")
            raise PolicyError("the decryption role refused the monthly totals of every household; nothing "
                              "exported:\n  " + "\n  ".join(describe_refusals(refusals)))
        kwh = kwh[~incomplete].astype("int64")
        table = attrs.join(kwh, how="inner")  # still keyed by meter id: the ledger needs it, the CSV never
        months = [c.removeprefix("kwh_") for c in kwh.columns]
        query.update(households=len(table), months=months, skipped_no_attributes=skipped)
        with role.decision() as ledger:  # read the export ledger and record this export atomically
            if synthetic is not None:
                released, report, extra = _synthetic(role, ledger, query, table, synthetic, epsilon, seed)
            else:
                released, report, extra = _k_anonymous(role, ledger, query, table, k, max_suppress, seed)
            query.update(extra)
            operator = dict(households_in=len(table), skipped_no_attributes=skipped,
                            refused_by_decryption_role=refused_summary,
                            months_dropped_all_refused=[c.removeprefix("kwh_") for c in dropped_months],
                            households_left_out_refused=int(incomplete.sum()))
            report.update(months=months, timezone=zone, timezone_source=zone_source)
            if synthetic is None:  # exact counts are fine beside a k-anonymous table, not beside a DP one
                report.update(operator)
            if seed is not None:
                report["seed_not_private"] = seed
            return _write_and_record(role, query, report, released, out, report_path, refusals, warnings, operator)
    finally:
        close_role(role)
        store.close()


def anonymize_with_history(table: pd.DataFrame, k: int, max_suppress: float, seed: int | None,
                           earlier: list[tuple[int, dict[str, dict[str, str]]]],
                           scheme: dict[str, Any] | None) -> tuple[Any, dict[str, dict[str, str]], dict[str, Any]]:
    """(KAnonResult, meter_id -> its released row, the deployment's scheme).

    `table` is keyed by meter id; `earlier` the allowed k-anonymous exports, oldest first, as (seq,
    {meter_id: released row}); `scheme` the one the first of them fixed (None: choose it now). A class
    is the households with the same generalised row now and the same rows (or absence) in every
    earlier export, so linking any exports never narrows a household below k.
    """
    from meterveil.host.backoffice import anonymize

    history = pd.Series({mid: json.dumps([[seq, rows[mid]] for seq, rows in earlier if mid in rows], sort_keys=True)
                         for mid in table.index}, dtype=object)
    kres = anonymize.k_anonymize(table, k, max_suppress=max_suppress, seed=seed,
                                 levels=None if scheme is None else scheme["levels"], history=history)
    rows = {str(mid): {str(c): str(v) for c, v in row.items()} for mid, row in kres.released.iterrows()}
    return kres, rows, scheme if scheme is not None else {"k": k, "levels": kres.levels}


def _k_anonymous(role, ledger, query, table, k, max_suppress, seed):
    """k-anonymous rows under the deployment's fixed levels, classes split by earlier exports."""
    from meterveil.host.decryption.policy import PolicyError

    prior = [x for x in ledger.exports if x.mode == "k-anonymous"]
    scheme = prior[0].scheme if prior else None
    if scheme is not None and k < int(scheme["k"]):
        reason = f"refused: k={k} is below the deployment's k={scheme['k']} (fixed by the first export)"
        role.record("export-households", query, "refuse", reason)
        raise PolicyError(reason)
    earlier = [(x.seq, role.open_private(x.released_sealed)) for x in prior]
    kres, rows, scheme = anonymize_with_history(table, k, max_suppress, seed, earlier, scheme)
    if len(kres.table) == 0:
        role.record("export-households", query, "refuse", f"refused: {len(table)} households cannot reach k={k}")
        raise PolicyError(f"{len(table)} households cannot be made {k}-anonymous")
    extra = {"mode": "k-anonymous", "scheme": scheme, "released_sealed": role.seal_private(rows)}
    return kres.table, {"mode": "k-anonymous", **kres.report(), "deployment_k": int(scheme["k"]),
                        "earlier_exports": len(earlier)}, extra


def _synthetic(role, ledger, query, table, n, epsilon, seed):
    """DP synthetic rows; the deployment's synthetic exports share one epsilon cap."""
    from meterveil.host.backoffice import dp_synth
    from meterveil.host.decryption.policy import PolicyError

    spent = sum(x.epsilon for x in ledger.exports if x.mode == "synthetic")
    if spent + epsilon > EXPORT_EPSILON_CAP + 1e-9:
        reason = (f"refused: epsilon {epsilon} would bring the synthetic exports to {spent + epsilon:g} "
                  f"> cap {EXPORT_EPSILON_CAP:g} (every household is in every export)")
        role.record("export-households", query, "refuse", reason)
        raise PolicyError(reason)
    res = dp_synth.synthesize(table.reset_index(drop=True), n, epsilon=epsilon, seed=seed)
    extra = {"mode": "synthetic", "epsilon": epsilon}
    return res.table, {"mode": "synthetic", **res.report(), "epsilon_spent_total": round(spent + epsilon, 6),
                       "epsilon_cap": EXPORT_EPSILON_CAP}, extra


def _write_and_record(role, query, report, released, out, report_path, refusals, warnings,
                      operator) -> ExportResult:
    """The audit entry (naming the CSV's hash and, through the ledger, its rows) first, then the CSV and
    report (0600): a file that exists was always ledgered, so later exports account for it."""
    text = released.to_csv(index=False)
    digest = hashlib.sha256(text.encode()).hexdigest()
    report["sha256"] = digest
    summary = {key: report[key] for key in ("rows", "k_achieved", "suppressed", "generalised") if key in report}
    role.record("export-households", {**query, **summary}, "allow",
                f"ok: {report['mode']} export of {len(released)} rows", role.result_hash({"sha256": digest}))
    write_private(out, text)
    write_private(report_path, json.dumps(report, indent=1, default=str) + "\n")
    return ExportResult(out, report, released, refusals, tuple(warnings), operator)
