"""Two versions of table 2's search on the same seeds: which one wins, paired on the same test queries.

    python -m benchmarks.compare_searches --old-set search.min_resource=1 --seed 0 --seed 1 --seed 2

compares two sets of the full scale's cells: the old version's, computed with the ``--old-set`` overrides, and
the new one's, with the ``--set`` overrides (none: the scale's own search), i.e. what ``python -m
benchmarks.suite --full --table 2 --set ...`` computed into its cache folders. Reads finished cells only;
writes ``benchmarks/compare_<old tag>.md``. Per budget: each version's searched - uniform, and searched
(new) - searched (old) with its 95% bootstrap interval over seeds and query identities (``paired_diff``),
the complete trials, and the compute: fine-tuning epochs over the trials (``rung_taus`` counts them in the
cell's Optuna study, which stores every epoch a trial reported) plus the final round's (finalists x ``search.final_epochs``), a
measure of cost that does not depend on how busy the machine was.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

from benchmarks.suite import ROOT, Suite, paired_diff, points_ci, t2_search_vs_uniform


def trained_epochs(row: dict[str, Any]) -> int:
    """A cell's fine-tuning epochs: every epoch its trials trained (``rung_taus``), and the final round's."""
    report = row["report"]
    return row["rung_tau"]["trial_epochs"] + len(report.get("finalists", [])) * report["best"]["final_epochs"]


def vs(a: list[dict[str, Any]], b: list[dict[str, Any]], model_a: str, model_b: str, groups: list[int]) -> str:
    """``model_a`` of rows ``a`` minus ``model_b`` of rows ``b`` (the same seeds), paired per query, in points."""
    d = paired_diff([r["hits"][model_a] for r in a], [r["hits"][model_b] for r in b], groups=groups)
    return points_ci(d["mean"], d["ci95"]) if d else "-"


def complete(rows: list[dict[str, Any]]) -> float:
    return statistics.mean(sum(t["state"] == "COMPLETE" for t in r["report"]["trials"]) for r in rows)


def epochs(rows: list[dict[str, Any]]) -> float:
    return statistics.mean(trained_epochs(r) for r in rows)


def compare(old_extra: list[str], extra: list[str], budgets: list[float], seeds: list[int]) -> list[str]:
    """The comparison's markdown lines."""
    old, new = Suite("full", old_extra), Suite("full", extra)
    for suite in (old, new):
        suite.cached_only = True
        suite.log = lambda msg: None  # type: ignore[method-assign]
    rows_old = t2_search_vs_uniform(old, budgets, seeds)
    rows_new = t2_search_vs_uniform(new, budgets, seeds)
    groups = old.target_query_pids()
    lines = [
        f"## Table 2's search: `{' '.join(extra) or 'the suite as it is'}` (new) against "
        f"`{' '.join(old_extra) or 'the suite as it is'}` (old)",
        "",
        "Command: `python -m benchmarks.compare_searches "
        f"{' '.join([*('--old-set ' + e for e in old_extra), *('--set ' + e for e in extra)])} "
        f"{' '.join(f'--seed {s}' for s in seeds)}`; seeds {', '.join(map(str, seeds))}; target test rank-1, "
        "differences in points, paired on the same queries and seeds (95% bootstrap interval over seeds and "
        "query identities).",
        "",
        "| MACs budget | seeds | searched - uniform (old) | searched - uniform (new) | new - old (searched) "
        "| complete trials per search (old / new) | epochs per search, trials + final round (old / new) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for budget in budgets:
        both = [s for s in seeds if (budget, s) in rows_old and (budget, s) in rows_new]
        if not both:
            continue
        o = [rows_old[(budget, s)] for s in both]
        n = [rows_new[(budget, s)] for s in both]
        lines.append(
            f"| {budget:.0%} | {len(both)} | {vs(o, o, 'searched', 'uniform', groups)} "
            f"| {vs(n, n, 'searched', 'uniform', groups)} | {vs(n, o, 'searched', 'searched', groups)} "
            f"| {complete(o):.1f} / {complete(n):.1f} "
            f"| {epochs(o):.0f} / {epochs(n):.0f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-set", dest="old_extra", action="append", default=[], help="the old version's overrides")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="the new version's overrides")
    parser.add_argument("--seed", type=int, action="append", required=True)
    parser.add_argument("--budget", type=float, action="append", help="default: the full scale's budgets")
    args = parser.parse_args(argv)
    budgets = args.budget or Suite("full", []).s["budgets"]
    if args.old_extra == args.extra:
        parser.error("the two versions are the same: give --old-set or --set overrides that differ")
    lines = compare(args.old_extra, args.extra, budgets, args.seed)
    tag = Suite("full", args.old_extra or args.extra).tag
    (ROOT / f"compare_{tag}.md").write_text("\n".join([*lines, ""]))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
