"""Run-directory outputs: report.json, trials.csv, plots, and the printed summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from autoprune.errors import UserError
from autoprune.rundir import read_json, refuse_links_out, replacing, write_file
from autoprune.search.records import TrialRecord


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _metrics_ok(m: Any, keys: tuple[str, ...] = ("rank1", "mAP")) -> bool:
    return isinstance(m, dict) and all(_number(m.get(k)) for k in keys)


def _report_problem(report: Any) -> str | None:
    """What makes ``report`` unusable by ``autoprune report`` / ``export``, or None: the fields they read."""
    if not isinstance(report, dict):
        return "not an object"
    budget, base = report.get("budget"), report.get("baseline")
    if not isinstance(budget, dict) or not _number(budget.get("macs_ratio")) or not _number(budget.get("macs")):
        return "budget.macs_ratio / budget.macs missing"
    size = budget.get("input_size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and 16 <= v <= 2048 for v in size)):
        return "budget.input_size is not [height, width] in pixels"
    if (
        not isinstance(base, dict)
        or not _number(base.get("macs"))
        or not _number(base.get("params"))
        or not _metrics_ok(base.get("target"))
        or not _metrics_ok(base.get("direct_transfer"), ("rank1",))
    ):
        return "baseline metrics missing"
    if not isinstance(report.get("config", {}), dict) or not isinstance(report.get("trials"), list):
        return "config or trials missing"
    for t in report["trials"]:
        if not isinstance(t, dict) or not isinstance(t.get("state"), str) or not isinstance(t.get("number"), int):
            return "a trial without number or state"
        if (
            t["state"] == "COMPLETE"
            and t.get("target") is not None
            and not (
                _metrics_ok(t["target"])
                and _number(t.get("macs_ratio"))
                and (t.get("target_val") is None or _metrics_ok(t["target_val"], ("rank1",)))
            )
        ):
            return f"trial {t['number']} has no metrics"
    for key in ("best", "uniform"):
        entry = report.get(key)
        if entry is not None and not (
            isinstance(entry, dict)
            and isinstance(entry.get("trial"), int)
            and _number(entry.get("macs"))
            and _number(entry.get("params"))
            and _metrics_ok(entry.get("target"))
            and isinstance(entry.get("policy"), dict)
            and (entry.get("final_target") is None or _metrics_ok(entry["final_target"]))
        ):
            return f"{key} is missing its trial, MACs, params, metrics or policy"
    plots = report.get("plots", [])
    if not isinstance(plots, list) or not all(
        isinstance(p, str) and p and "/" not in p and "\\" not in p and not p.startswith(".") for p in plots
    ):
        return "plots must be file names in the run directory"
    if not isinstance(report.get("pareto_front", []), list):
        return "pareto_front is not a list"
    return _summary_problem(report)


def _summary_problem(report: dict[str, Any]) -> str | None:
    """What the summary and report.md read beyond the metrics, as ``FIELD: what is wrong``, or None: so that
    the renderer never meets a wrong type."""
    recipe, ck, bud = report.get("recipe"), report["baseline"].get("checkpoint"), report["budget"]
    if recipe and not (isinstance(recipe, dict) and isinstance(recipe.get("summary"), str)):
        return "recipe: not an object with a summary"
    if ck and not (
        isinstance(ck, dict) and all(isinstance(ck.get(k), str) for k in ("arch", "format", "path", "sha256"))
    ):
        return "baseline.checkpoint: not an object with arch, format, path and sha256"
    if bud.get("latency_ms"):
        if not _number(bud["latency_ms"]):
            return "budget.latency_ms: not a number"
        if not isinstance(bud.get("latency_batch"), int) or isinstance(bud.get("latency_batch"), bool):
            return "budget.latency_batch: missing or not an integer"
        if not isinstance(bud.get("latency_device"), str):
            return "budget.latency_device: missing or not a name"
    for key in ("baseline", "uniform", "best"):
        entry = report.get(key) or {}
        if entry.get("latency_ms") is not None and not _number(entry["latency_ms"]):
            return f"{key}.latency_ms: not a number"
        spread = entry.get("latency_spread_ms")
        if spread and not (isinstance(spread, list) and len(spread) == 2 and all(_number(v) for v in spread)):
            return f"{key}.latency_spread_ms: not [first quartile, third quartile] in ms"
    return None


def read_report(run_dir: Path) -> dict[str, Any]:
    """A finished run's report.json, checked for what the commands read: a truncated or edited one is a UserError.

    The run directory's links are checked first (a link loop or a link out is refused before anything is read).
    """
    refuse_links_out(run_dir)
    path = run_dir / "report.json"
    if not path.is_file():
        raise UserError(f"{run_dir} has no report.json; give the --out folder of a finished `autoprune search`")
    fix = f"rerun the same `autoprune search` command with --out {run_dir} to write it again"
    report = read_json(path, fix)
    problem = _report_problem(report)
    if problem is not None:
        raise UserError(f"{path} is incomplete or was edited ({problem}); {fix}")
    return report


def _value(r: TrialRecord) -> float:
    """The objective of a complete trial with metrics (always measured there)."""
    value = r.objective
    assert value is not None, f"trial {r.number} has no metrics"
    return value


def pareto_front(records: list[TrialRecord]) -> list[int]:
    """Trial numbers not dominated in (higher objective rank-1, lower MACs) among complete trials."""
    done = [(r.number, _value(r), r.macs) for r in records if r.state == "COMPLETE" and r.target and r.macs is not None]
    front = []
    for number, value, macs in done:
        dominated = any(v >= value and m <= macs and (v > value or m < macs) for _, v, m in done)
        if not dominated:
            front.append(number)
    return sorted(front)


def environment(device: Any) -> dict[str, Any]:
    """The versions a result depends on, and where it ran (report.json's ``environment``)."""
    import importlib.metadata
    import platform

    import torch

    versions: dict[str, Any] = {}
    for dist in ("autoprune", "torch", "torch-pruning", "optuna"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    return {**versions, "python": platform.python_version(), "device": str(dev), "device_name": name}


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON at ``path``, replaced whole (see :func:`autoprune.rundir.replacing`)."""
    write_file(path, json.dumps(data, indent=2, sort_keys=False))


def write_trials_csv(path: Path, records: list[TrialRecord], latency: bool = False) -> None:
    """One row per trial; ``latency`` (a latency budget) adds ``latency_ms`` (the table's prediction) after MACs."""
    groups = sorted({g for r in records for g in r.policy})
    lat_head, lat = (["latency_ms"], lambda r: [r.latency_ms]) if latency else ([], lambda r: [])
    with replacing(path, text=True) as f:
        w = csv.writer(f)
        w.writerow(
            ["number", "state", "macs", "macs_ratio", *lat_head, "params", "rank1", "mAP", "seconds", "error"]
            + [f"keep:{g}" for g in groups]
        )
        for r in records:
            t = r.target or {}
            w.writerow(
                [
                    r.number,
                    r.state,
                    r.macs,
                    r.macs_ratio,
                    *lat(r),
                    r.params,
                    t.get("rank1"),
                    t.get("mAP"),
                    r.seconds,
                    r.error or "",
                ]
                + [r.policy.get(g) for g in groups]
            )


def write_plots(run_dir: Path, report: dict[str, Any], records: list[TrialRecord]) -> list[str]:
    """The figures a user reads after a search; returns the file names written.

    Single budget: ``progress.png`` (each trial's validation rank-1, best so far, stopped trials),
    ``finalists.png`` (before and after the final round), ``comparison.png`` (chosen vs uniform vs
    unpruned, validation and test) and ``policy.png``. Pareto mode adds ``rank1_vs_macs.png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(r.state == "COMPLETE" and r.target for r in records):
        return []
    plots = [
        ("progress.png", _plot_progress, True),
        ("finalists.png", _plot_finalists, bool(report.get("finalists"))),
        ("comparison.png", _plot_comparison, bool(report.get("best"))),
        ("policy.png", _plot_policy, bool(report.get("best"))),
        ("rank1_vs_macs.png", _plot_front, "pareto_front" in report),
    ]
    out = []
    for name, draw, wanted in plots:
        if not wanted:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4))
        draw(ax, report, records)
        ax.legend(fontsize=8)
        fig.tight_layout()
        with replacing(run_dir / name) as f:
            fig.savefig(f, format="png", dpi=110)
        plt.close(fig)
        out.append(name)
    return out


def progress_series(records: list[TrialRecord]) -> dict[str, list]:
    """What ``progress.png`` draws: complete trials' objective (validation rank-1) in trial order, the best
    so far after each, and the trials stopped early (pruned) or failed."""
    done = sorted((r for r in records if r.state == "COMPLETE" and r.target), key=lambda r: r.number)
    best, running = float("-inf"), []
    for r in done:
        best = max(best, _value(r))
        running.append(best)
    return {
        "number": [r.number for r in done],
        "rank1": [_value(r) for r in done],
        "best": running,
        "pruned": sorted(r.number for r in records if r.state == "PRUNED"),
        "failed": sorted(r.number for r in records if r.state == "FAIL"),
    }


def _split_label(records: list[TrialRecord]) -> str:
    return "validation" if any(r.target_val for r in records) else "test (no validation split)"


def _plot_progress(ax: Any, report: dict[str, Any], records: list[TrialRecord]) -> None:
    s = progress_series(records)
    ax.plot(s["number"], s["rank1"], "o", alpha=0.6, label="complete trial")
    ax.step(s["number"], s["best"], where="post", c="tab:green", label="best so far")
    floor = min(s["rank1"])
    if s["pruned"]:
        ax.plot(s["pruned"], [floor] * len(s["pruned"]), "x", c="tab:orange", label="stopped early (pruned)")
    if s["failed"]:
        ax.plot(s["failed"], [floor] * len(s["failed"]), "v", c="tab:red", label="failed")
    uniform = report.get("uniform")
    if uniform:
        ax.annotate(
            "uniform",
            (uniform["trial"], (uniform.get("target_val") or uniform["target"])["rank1"]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (in the order they ran)")
    ax.set_ylabel(f"target {_split_label(records)} rank-1")
    ax.set_title(f"search progress at {report['budget']['macs_ratio']:.0%} MACs", fontsize=9)


def _plot_finalists(ax: Any, report: dict[str, Any], records: list[TrialRecord]) -> None:
    by_number = {r.number: r for r in records}
    uniform = (report.get("uniform") or {}).get("trial")
    for f in report["finalists"]:
        r = by_number.get(f["trial"])
        if r is None or r.objective is None:
            continue
        after = (f.get("target_val") or f["target"])["rank1"]
        tag = (
            f"trial {f['trial']}"
            + (" (uniform)" if f["trial"] == uniform else "")
            + (" chosen" if f.get("chosen") else "")
        )
        ax.plot([0, 1], [r.objective, after], "o-", lw=2.5 if f.get("chosen") else 1.2, label=tag)
    best = report.get("best") or {}
    ax.set_xticks([0, 1])
    ax.set_xticklabels(
        [
            f"after the search\n({report.get('config', {}).get('finetune_epochs')} epochs)",
            f"after the final round\n({best.get('final_epochs')} epochs)",
        ]
    )
    ax.set_xlim(-0.3, 1.3)
    ax.set_ylabel(f"target {_split_label(records)} rank-1")
    ax.set_title("finalists: the final round chooses on validation", fontsize=9)


def comparison_rows(report: dict[str, Any]) -> list[tuple[str, float | None, float]]:
    """``(label, validation rank-1, test rank-1)`` of the unpruned model, the uniform policy and the chosen one,
    each after the fine-tuning it got (the uniform policy's final round when there was one)."""
    rows = []
    base = report["baseline"]
    rows.append(("unpruned", (base.get("target_val") or {}).get("rank1"), base["target"]["rank1"]))
    u, best = report.get("uniform"), report["best"]
    if u:
        final = next((f for f in report.get("finalists") or [] if f["trial"] == u["trial"]), None)
        val, test = (final.get("target_val"), final["target"]) if final else (u.get("target_val"), u["target"])
        rows.append((f"uniform (#{u['trial']})", (val or {}).get("rank1"), test["rank1"]))
    rows.append((f"chosen (#{best['trial']})", (best.get("target_val") or {}).get("rank1"), best["target"]["rank1"]))
    return rows


def _plot_comparison(ax: Any, report: dict[str, Any], records: list[TrialRecord]) -> None:
    rows = comparison_rows(report)
    xs = range(len(rows))
    val = [v if v is not None else 0.0 for _, v, _ in rows]
    ax.bar([x - 0.2 for x in xs], val, width=0.4, label="validation rank-1 (chooses)")
    ax.bar([x + 0.2 for x in xs], [t for _, _, t in rows], width=0.4, label="test rank-1 (reports only)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([label for label, _, _ in rows])
    ax.set_ylabel("target rank-1")
    best = report["best"]
    epochs = report.get("config", {}).get("finetune_epochs")
    note = f"; uniform and chosen: {best['final_epochs']} final epochs" if best.get("final_epochs") else ""
    ax.set_title(f"at {report['budget']['macs_ratio']:.0%} MACs (unpruned: {epochs} target epochs{note})", fontsize=9)


def _plot_policy(ax: Any, report: dict[str, Any], records: list[TrialRecord]) -> None:
    best = report["best"]
    groups = list(best["policy"])
    uniform = (report.get("uniform") or {}).get("policy") or {}
    ax.figure.set_size_inches(max(6.4, 0.3 * len(groups)), 4)
    xs = range(len(groups))
    ax.bar([x - 0.2 for x in xs], [best["policy"][g] for g in groups], width=0.4, label="chosen")
    if uniform:
        ax.bar([x + 0.2 for x in xs], [uniform.get(g, 0) for g in groups], width=0.4, label="uniform")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(groups, rotation=90, fontsize=7)
    ax.set_ylabel("keep ratio")


def _plot_front(ax: Any, report: dict[str, Any], records: list[TrialRecord]) -> None:
    done = [r for r in records if r.state == "COMPLETE" and r.target]
    front = set(report.get("pareto_front") or pareto_front(records))
    ax.scatter([r.macs_ratio for r in done], [_value(r) for r in done], c="tab:blue", label="trials")
    f = sorted((r for r in done if r.number in front), key=lambda r: r.macs_ratio or 0.0)
    ax.plot([r.macs_ratio for r in f], [_value(r) for r in f], "o-", c="tab:red", label="Pareto front")
    base = report["baseline"]
    ax.axhline(
        (base.get("target_val") or base["target"])["rank1"], ls="--", c="gray", label="unpruned (same fine-tuning)"
    )
    ax.axvline(report["budget"]["macs_ratio"], ls=":", c="k", label="budget")
    ax.set_xlabel("MACs / unpruned MACs")
    ax.set_ylabel(f"target {_split_label(records)} rank-1")


def _summary_row(name: str, entry: dict[str, Any], target: dict[str, Any]) -> tuple[str, ...]:
    """One model's row of the summary: MACs and parameters in millions, target rank-1 and mAP."""
    return (
        name,
        f"{entry['macs'] / 1e6:.1f}",
        f"{entry['params'] / 1e6:.2f}",
        f"{target['rank1']:.3f}",
        f"{target['mAP']:.3f}",
    )


def summary_table(report: dict[str, Any]) -> str:
    """The short table printed at the end of a search."""
    b, best = report["baseline"], report.get("best")
    rows: list[tuple[str, ...]] = [("", "MACs (M)", "params (M)", "target rank-1", "target mAP")]
    rows.append(_summary_row("unpruned", b, b["target"]))
    final = bool(best and best.get("final_epochs"))
    if report.get("uniform"):
        u = report["uniform"]
        t = u.get("final_target") if final and u.get("final_target") else u["target"]
        rows.append(_summary_row(f"uniform (#{u['trial']})", u, t))
    if best:
        rows.append(_summary_row(f"best (#{best['trial']})", best, best["target"]))
    if "latency_ms" in b:
        rows = _with_latency(
            rows, [b, report.get("uniform") or {}, best or {}] if report.get("uniform") else [b, best or {}]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines + _summary_notes(report, final))


def _summary_notes(report: dict[str, Any], final: bool) -> list[str]:
    """The lines under the summary table: the recovery recipe, the checkpoint, and how latency was measured."""
    b, best, lines = report["baseline"], report.get("best"), []
    if report.get("recipe"):
        note = (
            f"recovery recipe: {report['recipe']['summary']}; the unpruned row went through the same recipe "
            f"with nothing pruned"
        )
    else:  # a report written before recipes were recorded
        note = (
            f"unpruned: trial fine-tuning ({report['config'].get('finetune_epochs')} epochs) on the target"
            if report.get("config")
            else ""
        )
        if final and best:  # final implies best
            note += f"; uniform and best: {best['final_epochs']} final epochs"
    if note:
        lines.append(f"(target test split; {note})")
    ck = b.get("checkpoint")
    if ck:
        lines.append(f"model: {ck['arch']} from {ck['format']} checkpoint {ck['path']} (sha256 {ck['sha256'][:16]})")
    if "latency_ms" in b:
        bud = report["budget"]
        where = (
            "median ± half the inter-quartile range, timed here"
            if bud.get("latency_timed_here", True)
            else "~ predicted by the table: this machine is not that device, nothing was timed here"
        )
        lines.append(
            f"(latency: ms per image at batch {bud.get('latency_batch')} on {bud.get('latency_device')}, "
            f"budget {bud.get('latency_ms')} ms"
            + (f", policies aimed {bud['latency_margin']:.0%} under it" if _number(bud.get("latency_margin")) else "")
            + f"; {where})"
        )
    return lines


def _with_latency(rows: list[tuple[str, ...]], entries: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The summary rows with a latency column (header row first, then one row per entry)."""
    out = [rows[0] + ("latency (ms)",)]
    for row, e in zip(rows[1:], entries):
        if e.get("latency_ms") is None:
            cell = "-"
        elif e.get("latency_measured") and e.get("latency_spread_ms"):
            q1, q3 = e["latency_spread_ms"]
            cell = f"{e['latency_ms']:.2f} ±{(q3 - q1) / 2:.2f}"
        else:
            cell = f"~{e['latency_ms']:.2f}"
        out.append(row + (cell,))
    return out


def pick_from_front(report: dict[str, Any], macs_ratio: float) -> dict[str, Any] | None:
    """The best-rank-1 complete trial at or under ``macs_ratio`` (how ``--budget`` picks from a front)."""
    ok = [
        t
        for t in report["trials"]
        if t["state"] == "COMPLETE"
        and t.get("target")
        and t["macs_ratio"] is not None
        and t["macs_ratio"] <= macs_ratio + 1e-9
    ]
    return max(ok, key=lambda t: ((t.get("target_val") or t["target"])["rank1"], -t["macs_ratio"]), default=None)


def write_markdown(run_dir: Path, report: dict[str, Any]) -> Path:
    """A one-page Markdown report with the summary table and the plots."""
    cfg = report.get("config", {})
    lines = [
        f"# autoprune report: {run_dir.name}",
        "",
        f"Budget: {report['budget']['macs_ratio']:.0%} of the unpruned MACs "
        f"({report['budget']['macs'] / 1e6:.1f} MMACs at input {report['budget'].get('input_size')}), "
        f"criterion `{cfg.get('criterion')}`, strategy `{cfg.get('strategy')}`, scenario `{cfg.get('scenario')}`, "
        f"space `{cfg.get('space')}`, sampler `{cfg.get('sampler')}`.",
        "",
        *(
            [
                f"Latency budget: {report['budget']['latency_ms']} ms per image at batch "
                f"{report['budget']['latency_batch']} on {report['budget']['latency_device']}.",
                "",
            ]
            if report["budget"].get("latency_ms")
            else []
        ),
        "```",
        summary_table(report),
        "```",
        "",
        f"Direct transfer ({'the checkpoint as given' if report['baseline'].get('checkpoint') else 'source-trained'}"
        f", no target fine-tuning): target rank-1 "
        f"{report['baseline']['direct_transfer']['rank1']:.3f}.",
        "",
    ]
    states: dict[str, int] = {}
    for t in report["trials"]:
        states[t["state"]] = states.get(t["state"], 0) + 1
    lines += [f"Trials: {len(report['trials'])} ({', '.join(f'{v} {k}' for k, v in sorted(states.items()))}).", ""]
    if report.get("pareto_front"):
        lines += [f"Pareto front (rank-1 vs MACs): trials {report['pareto_front']}.", ""]
    for plot in report.get("plots", []):
        lines += [f"![{plot}]({plot})", ""]
    return write_file(run_dir / "report.md", "\n".join(lines))
