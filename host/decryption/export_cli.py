"""`meterveil export households`: the command line of the decryption role's household export (export.py)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="privacy-safe exports for researchers")
    esub = e.add_subparsers(dest="export_kind", metavar="KIND")
    h = esub.add_parser("households", help="k-anonymous (or synthetic) table of household attributes + monthly kWh")
    h.add_argument("--db", required=True, help="the ingest store (read only)")
    h.add_argument("--role-dir", required=True, help="the decryption role's folder (keys init --secret-dir)")
    h.add_argument("--registry", required=True, help="meters.json (household attributes, no keys)")
    h.add_argument("--tariff", default=None, metavar="FILE",
                   help="tariff TOML whose time zone defines the months (must match the bills); default: the zone "
                        "of earlier bills in the audit log, else tariffs/tou3.toml")
    h.add_argument("--k", type=int, default=5, help="every quasi-identifier combination appears >= k times (default 5)")
    h.add_argument("--max-suppress", type=float, default=0.05, help="largest fraction of households suppressed (default 0.05)")
    h.add_argument("--synthetic", type=int, default=None, metavar="N",
                   help="write N differentially private synthetic records instead")
    h.add_argument("--epsilon", type=float, default=1.0,
                   help="DP budget of a synthetic export (default 1; all synthetic exports share a cap of 4)")
    h.add_argument("--seed", type=int, default=None, help="seed for shuffling/synthesis: tests only (a known seed lets anyone undo the row shuffle)")
    h.add_argument("--out", required=True, help="CSV to write (folder created if missing); a JSON report goes next "
                                                "to it (OUT.report.json)")
    h.add_argument("--actor", default=None, help="who is exporting (audit log); default: OS user")
    h.set_defaults(func=export_households_cmd)
    e.set_defaults(func=lambda a: (e.print_help(), 2)[1])


def export_households_cmd(args: argparse.Namespace) -> int:
    from meterveil.host.audit.chain import AuditError
    from meterveil.host.common.pubkey import KeyFileError
    from meterveil.host.decryption.export import describe_refusals, run_export
    from meterveil.host.decryption.policy import PolicyError

    try:
        res = run_export(args.db, args.role_dir, args.out, registry=args.registry, k=args.k, synthetic=args.synthetic, epsilon=args.epsilon,
                         max_suppress=args.max_suppress, seed=args.seed, actor=args.actor, tariff=args.tariff)
    except (PolicyError, AuditError, KeyFileError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    r, op = res.report, res.operator
    if res.refusals:
        n = sum(len(v) for v in res.refusals.values())
        print(f"warning: the decryption role refused {n} household-month(s); left out: "
              f"{op['households_left_out_refused']} household(s), month(s) {op['months_dropped_all_refused'] or 'none'}",
              file=sys.stderr)
        for line in describe_refusals(res.refusals):
            print(f"  {line}", file=sys.stderr)
    if r["mode"] == "k-anonymous":
        print(f"{r['rows']} of {op['households_in']} households, k={r['k']} achieved k={r['k_achieved']}, "
              f"{r['suppressed']} suppressed, {r['classes']} classes -> {res.out}")
        print(f"  levels {'fixed by the first export' if r['levels_fixed'] else 'chosen now and fixed for later exports'}"
              f" ({r['earlier_exports']} earlier)")
        for col, what in r["generalised"].items():
            print(f"  {col}: {what}")
    else:
        print(f"{r['rows']} synthetic records from {op['households_in']} households -> {res.out}; "
              f"epsilon {r['epsilon']:g} (delta 0), synthetic exports so far {r['epsilon_spent_total']:g} "
              f"of {r['epsilon_cap']:g}")
        print(f"  measured: {', '.join(r['model']['marginals'])}")
        print(f"  marginal TVD vs the noisy measurements: {r['utility']['marginal_tvd_vs_measured']}")
    print(f"  months {', '.join(r['months'])} (billing periods in {r['timezone']}, from {r['timezone_source']})")
    print(f"report: {res.out}.report.json (audited)")
    return 0
