"""Latency budgets end to end (issue 17), at a scale that fits two shared CPU cores.

(a) Every model a search writes under a latency budget meets it when timed independently: this process
    loads each run's ``model/pruned.pt`` and times it 50 times (median), apart from the search's own timing.
(c) A latency-budgeted search against a MACs-budgeted search whose MACs budget gives the same measured
    latency (the uniform policy at that MACs ratio measures the latency budget), same trials and seeds:
    target rank-1 at (about) equal measured latency, per seed and over seeds.

    .venv/bin/python -m benchmarks.bench_latency_budget        # resumable; the defaults are what ran:
    .venv/bin/python -m benchmarks.bench_latency_budget --seeds 0 1 2 --budgets 0.6 0.4 --compare 0.6 --recipe strong


Everything runs on one thread and is timed with the process's CPU clock (``--clock cpu``), because the
machine is shared; budgets are fractions of the table's predicted unpruned latency. Every step is cached
under ``benchmarks/cache/latency_budget/`` (the table, the source baseline, each search's run directory,
the MACs ratio found for the comparison, each model's timing), so a rerun continues where it stopped.
Writes ``benchmarks/latency_budget.json`` and ``benchmarks/latency_budget.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from autoprune.config import DEFAULT_LATENCY_MARGIN

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / "cache" / "latency_budget"
ARCH, SIZE, LAST_STRIDE = "resnet18", (128, 64), 2
TABLE = CACHE / f"{ARCH}-{SIZE[0]}x{SIZE[1]}-ls{LAST_STRIDE}.json"
PROFILE = [
    "latency",
    "profile",
    "--arch",
    ARCH,
    "--input-size",
    str(SIZE[0]),
    str(SIZE[1]),
    "--last-stride",
    str(LAST_STRIDE),
    "--threads",
    "1",
    "--clock",
    "cpu",
    "--repeats",
    "5",
    "--out",
    str(TABLE),
    "--quiet",
]
# Small synthetic source/target (a larger target test split for less noisy rank-1), short training, no final round.
COMMON = [
    f"model.arch={ARCH}",
    f"model.input_size=[{SIZE[0]},{SIZE[1]}]",
    f"model.last_stride={LAST_STRIDE}",
    f"data.root={CACHE / 'data'}",
    "data.source=synth:A",
    "data.target=synth:B",
    "data.synth.num_train_ids=64",
    "data.synth.num_test_ids=16",
    "data.synth.images_per_id_per_cam=2",
    "data.synth.num_distractors=16",
    "data.synth.target_num_test_ids=100",
    "train.epochs=12",
    "train.lr=2.0e-3",
    "train.warmup_epochs=1",
    "train.threads=1",
    "train.device=cpu",
    "trial.scenario=finetune_then_prune",
    "trial.adapt_epochs=2",
    "trial.finetune_epochs=2",
    "trial.lr=1.0e-3",
    "search.final_epochs=0",
    "search.pruner=none",
    "search.sampler=tpe",
    "search.space=groupwise",
    "budget.macs_ratio=null",
]
RUNS = 50


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cli(args: list[str], logfile: Path) -> None:
    """One autoprune command in its own process (as a user runs it); its output goes to ``logfile``."""
    exe = Path(sys.executable).with_name("autoprune")
    with logfile.open("a") as f:
        f.write(f"$ autoprune {' '.join(args)}\n")
        f.flush()
        code = subprocess.call([str(exe), *args], stdout=f, stderr=subprocess.STDOUT)
    if code:
        sys.exit(f"autoprune {args[0]} failed (exit {code}); see {logfile}")


def baseline() -> Path:
    out = CACHE / "baseline"
    if not (out / "baseline.pt").is_file():
        log("training the source baseline")
        cli(["train", "--out", str(out), "--quiet", *[a for s in COMMON for a in ("--set", s)]], CACHE / "train.log")
    return out / "baseline.pt"


def search_args(name: str, ckpt: Path, seed: int, trials: int, budget: list[str]) -> list[str]:
    sets = [*COMMON, f"model.checkpoint={ckpt}", f"seed={seed}", f"search.n_trials={trials}", *budget]
    return ["search", "--out", str(CACHE / "runs" / name), "--quiet", *[a for s in sets for a in ("--set", s)]]


def time_model(path: Path, threads: int = 1) -> dict[str, float]:
    """The written model timed here, independently of the search: median and quartiles of ``RUNS`` runs, CPU
    clock (the budget's) and wall clock (for reference: this machine is shared)."""
    from autoprune.engine.device import set_threads
    from autoprune.pruning.latency import make_key, measure_model, wall_measure
    from autoprune.pruning.serialize import load_pruned

    set_threads(threads)
    model = load_pruned(path).eval()
    key = make_key(ARCH, SIZE, 1, threads=threads)
    out = {}
    for clock in ("cpu", "wall"):
        t = measure_model(model, key, wall_measure(threads=threads, repeats=RUNS, warmup=5, clock=clock))
        out.update({f"{clock}_median_ms": t["median_ms"], f"{clock}_q1_ms": t["q1_ms"], f"{clock}_q3_ms": t["q3_ms"]})
    return out


def uniform_latency(ckpt: Path, macs_ratio: float) -> float:
    """Measured ms (CPU clock, one thread, median of 30) of the uniform policy projected onto ``macs_ratio``."""
    from autoprune.pruning.budget import Budget, project
    from autoprune.pruning.flops import CostModel
    from autoprune.pruning.groups import PruningGraph
    from autoprune.pruning.latency import make_key, measure_model, skeleton, wall_measure
    from autoprune.pruning.serialize import load_pruned

    model = load_pruned(ckpt).eval()
    cost = CostModel(PruningGraph(model, SIZE))
    counts = project(cost, dict.fromkeys(cost.base_widths, 1.0), Budget(int(macs_ratio * cost.base_macs), 0.1, 1.0, 8))
    key = make_key(ARCH, SIZE, 1, threads=1)
    return measure_model(skeleton(model, SIZE, counts), key, wall_measure(threads=1, repeats=30, clock="cpu"))[
        "median_ms"
    ]


def matching_macs_ratio(ckpt: Path, target_ms: float) -> dict[str, Any]:
    """The MACs ratio whose uniform policy measures ``target_ms``, by bisection on measured latency."""
    lo, hi = 0.05, 1.0
    steps = []
    for _ in range(9):
        mid = (lo + hi) / 2
        ms = uniform_latency(ckpt, mid)
        steps.append({"macs_ratio": round(mid, 4), "measured_ms": round(ms, 4)})
        lo, hi = (mid, hi) if ms < target_ms else (lo, mid)
    return {"macs_ratio": round((lo + hi) / 2, 4), "bisection": steps}


def cell(name: str, args: list[str], state: dict[str, Any], budget_ms: float | None) -> dict[str, Any]:
    """One search (resumed if interrupted) and the independent timing of the model it wrote."""
    if name in state["cells"]:
        return state["cells"][name]
    run_dir = CACHE / "runs" / name
    log(f"search {name}")
    t0 = time.perf_counter()
    cli(args, CACHE / f"{name}.log")
    report = json.loads((run_dir / "report.json").read_text())
    best = report["best"]
    timing = time_model(run_dir / best["model"])
    out = {
        "command": "autoprune " + " ".join(args),
        "seconds": round(time.perf_counter() - t0, 1),
        "budget_ms": budget_ms,
        "macs_ratio": best["macs_ratio"],
        "trial": best["trial"],
        "rank1": best["target"]["rank1"],
        "mAP": best["target"]["mAP"],
        "val_rank1": (best.get("target_val") or {}).get("rank1"),
        "search_latency_ms": best.get("latency_ms"),
        "predicted_ms": best.get("latency_predicted_ms"),
        "trials_predicted_ms": [t.get("latency_ms") for t in report["trials"]],
        "unpruned_rank1": report["baseline"]["target"]["rank1"],
        **timing,
    }
    if budget_ms is not None:
        out["meets_budget"] = timing["cpu_median_ms"] <= budget_ms
    state["cells"][name] = out
    save(state)
    log(
        f"  {name}: rank-1 {out['rank1']:.3f}, MACs {out['macs_ratio']:.3f}, measured {timing['cpu_median_ms']:.3f} ms"
        + (f" (budget {budget_ms})" if budget_ms else "")
    )
    return out


def save(state: dict[str, Any]) -> None:
    (CACHE / "state.json").write_text(json.dumps(state, indent=1))


# The cut-down recovery recipe of COMMON, and a stronger one for the comparison (3 recovery epochs instead of 2,
# distilling the adapted model's embedding: the demo preset's recipe), under which pruned models are off the floor.
RECIPES = {"base": [], "strong": ["trial.finetune_epochs=3", "trial.distill.embedding=1.0"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--budgets",
        type=float,
        nargs="+",
        default=[0.6, 0.4],
        help="(a): latency budgets as fractions of the predicted unpruned latency (first seed)",
    )
    p.add_argument("--compare", type=float, default=0.6, help="(c): the latency budget of the comparison")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="strong", help="recovery recipe of the comparison")
    p.add_argument("--trials", type=int, default=4)
    args = p.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    state = json.loads((CACHE / "state.json").read_text()) if (CACHE / "state.json").is_file() else {"cells": {}}
    if not TABLE.is_file():
        log("profiling the latency table")
    cli(PROFILE, CACHE / "profile.log")  # reused when it already holds this table
    ckpt = baseline()
    from autoprune.pruning.groups import PruningGraph
    from autoprune.pruning.latency import LatencyModel, LatencyTable
    from autoprune.pruning.serialize import load_pruned

    table = LatencyTable.load(TABLE)
    lat = LatencyModel(table, PruningGraph(load_pruned(ckpt), SIZE))
    full_pred = lat.predict_ms(lat.base_widths)
    state.setdefault("unpruned", {"predicted_ms": full_pred, **time_model(ckpt)})
    save(state)
    budget_ms = {f: round(f * full_pred, 3) for f in sorted({*args.budgets, args.compare}, reverse=True)}

    def lat_cell(frac: float, seed: int, recipe: str = "base", margin: bool = False) -> dict[str, Any]:
        """A latency-budgeted search; ``margin``: with the default budget.latency_margin, else none (0)."""
        name = f"{'' if recipe == 'base' else recipe + '-'}lat{frac:g}-{'margin-' if margin else ''}s{seed}"
        b = [f"budget.latency_ms={budget_ms[frac]}", f"budget.latency_table={TABLE}", *RECIPES[recipe]]
        b += [] if margin else ["budget.latency_margin=0"]
        out = cell(name, search_args(name, ckpt, seed, args.trials, b), state, budget_ms[frac])
        out.setdefault("margin", DEFAULT_LATENCY_MARGIN if margin else 0.0)
        return out

    for frac in args.budgets:  # (a): without a margin (the first seed), and with the default one (every seed)
        lat_cell(frac, args.seeds[0])
        for seed in args.seeds:
            lat_cell(frac, seed, margin=True)
    key = f"macs_for_{args.compare:g}"
    if key not in state:
        log(f"finding the MACs ratio whose uniform policy measures {budget_ms[args.compare]} ms")
        state[key] = matching_macs_ratio(ckpt, budget_ms[args.compare])
        save(state)
    ratio = state[key]["macs_ratio"]
    comp = {
        "recipe": args.recipe,
        "frac": args.compare,
        "budget_ms": budget_ms[args.compare],
        "macs_ratio": ratio,
        "seeds": args.seeds,
        "pairs": [],
    }
    tag = "" if args.recipe == "base" else args.recipe + "-"
    for seed in args.seeds:  # (c)
        a = lat_cell(args.compare, seed, args.recipe)
        name = f"{tag}macs{ratio:g}-s{seed}"
        m = cell(
            name,
            search_args(name, ckpt, seed, args.trials, [f"budget.macs_ratio={ratio}", *RECIPES[args.recipe]]),
            state,
            None,
        )
        comp["pairs"].append({"seed": seed, "latency": a, "macs": m})
    comps = [c for c in state.get("comparisons", []) if (c["recipe"], c["frac"]) != (args.recipe, args.compare)]
    state["comparisons"] = [*comps, comp]
    state.setdefault("commands", {})[f"{args.recipe} {args.compare:g}"] = command(args)
    for name, c in state["cells"].items():  # how much a 50-run median moves between timings on this machine
        if c.get("budget_ms") is not None and "repeat_cpu_medians_ms" not in c:
            c["repeat_cpu_medians_ms"] = [
                round(time_model(CACHE / "runs" / name / "model" / "pruned.pt")["cpu_median_ms"], 4) for _ in range(5)
            ]
            save(state)
    write_results(state, table)


def command(args: argparse.Namespace) -> str:
    return (
        ".venv/bin/python -m benchmarks.bench_latency_budget --seeds "
        + " ".join(map(str, args.seeds))
        + " --budgets "
        + " ".join(f"{b:g}" for b in args.budgets)
        + f" --compare {args.compare:g} --recipe {args.recipe} --trials {args.trials}"
    )


def _stats(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def write_results(state: dict[str, Any], table: Any) -> None:
    cells = state["cells"]
    u = state["unpruned"]
    lines = [
        "# Latency budgets end to end (issue 17)",
        "",
        "Commands, in the order they ran (each resumes the cache of the ones before):",
        "",
        *[f"- `{c}`" for c in state["commands"].values()],
        "",
        f"ResNet-18 at {SIZE[0]}x{SIZE[1]} (last stride {LAST_STRIDE}), batch 1, one thread, CPU clock "
        f"({table.key.device}; the machine is shared, so the budget's clock is this process's CPU time). "
        f"Table: `autoprune {' '.join(PROFILE[:-3])}` ({len(table.kinds)} kinds). Searches: "
        f"{cells[next(iter(cells))]['command'].split('search.n_trials=')[1].split()[0]} trials each (Optuna "
        f"TPE, trial 0 the uniform policy), the unpruned model adapted to the target for 2 epochs once per "
        f"search, no final round, one 12-epoch source baseline shared by all (synthetic A -> B, 64 source "
        f"identities, 100 target test identities and queries). Recipes: `base` recovers each pruned model 2 "
        f"epochs; `strong` 3 epochs, distilling the adapted model's embedding. Every written model is loaded "
        f"and timed here again, in this process, {RUNS} runs, median.",
        "",
        f"Unpruned: predicted {u['predicted_ms']:.3f} ms, measured {u['cpu_median_ms']:.3f} ms "
        f"(CPU clock; wall clock {u['wall_median_ms']:.3f} ms).",
        "",
        "## (a) Every model written under a latency budget meets it",
        "",
        "| run | budget ms | margin | predicted ms | measured in the search | measured here, median of 50 (IQR) | "
        "5 more medians of 50, min-max | wall clock | meets |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in cells.items():
        if c.get("budget_ms") is not None:
            rep = c.get("repeat_cpu_medians_ms") or [float("nan")]
            lines.append(
                f"| {name} | {c['budget_ms']:.3f} | {c.get('margin', 0.0):.0%} | {c['predicted_ms']:.3f} | "
                f"{c['search_latency_ms']:.3f} | "
                f"{c['cpu_median_ms']:.3f} ({c['cpu_q1_ms']:.3f}-{c['cpu_q3_ms']:.3f}) | "
                f"{min(rep):.3f}-{max(rep):.3f} | {c['wall_median_ms']:.3f} | "
                f"{'yes' if c['meets_budget'] else '**no**'} |"
            )
    if state.get("floor_note"):
        lines += [
            "",
            "An earlier pass compared the searches at 40% with the `base` recipe: every pruned model was at "
            "the floor (test rank-1 "
            + ", ".join(f"{n} {c['rank1']:.2f}" for n, c in state["floor_note"].items())
            + "), so the comparison below uses the `strong` recipe at 60%. That pass's end-to-end check "
            "accepted a policy on its median; one of its three latency-budgeted models measured 1% over its "
            "budget when timed independently ("
            + ", ".join(
                f"{n} {c['cpu_median_ms']:.3f} ms for {c['budget_ms']}"
                for n, c in state["floor_note"].items()
                if c["budget_ms"]
            )
            + "), which is why the check now uses the upper quartile.",
        ]
    for comp in state.get("comparisons", []):
        lines += [
            "",
            f"## (c) Latency-budgeted vs MACs-budgeted search, recipe `{comp['recipe']}`",
            "",
            f"Latency budget {comp['budget_ms']} ms ({comp['frac']:.0%} of the predicted unpruned); MACs budget "
            f"{comp['macs_ratio']:.4f}, the ratio whose uniform policy measures that latency (bisection on "
            f"measured latency). Same seeds, trials and recipe. Target test rank-1 of the best trial (chosen "
            f"on validation), its MACs ratio and its latency measured here.",
            "",
            "| seed | latency search: rank-1 | MACs | ms | MACs search: rank-1 | MACs | ms | rank-1 difference |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        pairs = comp["pairs"]
        for pr in pairs:
            a, m = pr["latency"], pr["macs"]
            lines.append(
                f"| {pr['seed']} | {a['rank1']:.3f} | {a['macs_ratio']:.3f} | {a['cpu_median_ms']:.3f} | "
                f"{m['rank1']:.3f} | {m['macs_ratio']:.3f} | {m['cpu_median_ms']:.3f} | "
                f"{a['rank1'] - m['rank1']:+.3f} |"
            )
        a_s, m_s = [pr["latency"] for pr in pairs], [pr["macs"] for pr in pairs]
        lines += [
            "",
            f"Over {len(pairs)} seeds (mean ± standard deviation): latency search rank-1 "
            f"{_stats([a['rank1'] for a in a_s])} at {_stats([a['cpu_median_ms'] for a in a_s])} ms; MACs search "
            f"rank-1 {_stats([m['rank1'] for m in m_s])} at {_stats([m['cpu_median_ms'] for m in m_s])} ms; "
            f"paired rank-1 difference {_stats([a['rank1'] - m['rank1'] for a, m in zip(a_s, m_s)])}.",
        ]
    (ROOT / "latency_budget.md").write_text("\n".join(lines) + "\n")
    # paths relative to the repository, as a user would type them from its root
    (ROOT / "latency_budget.json").write_text(json.dumps(state, indent=1).replace(str(ROOT.parent) + "/", ""))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
