"""The benchmark suite behind benchmarks/RESULTS.md: reproduce the paper, then show what search adds.

    python -m benchmarks.suite --quick      # make bench-quick (CPU, small input)
    python -m benchmarks.suite --full       # make bench (CPU, the demo's input size)

Every cell is an ordinary autoprune run directory under benchmarks/cache/<scale>/, so an interrupted
suite resumes where it stopped (finished cells are read back, a half-done search resumes its study).
The same script takes a real dataset and a GPU unchanged: --set data.source=market1501:/data/... etc.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any, Callable

import torch

from autoprune.config import load_config
from benchmarks.bench_pruning import latency
from autoprune.search.run import run_search

ROOT = Path(__file__).resolve().parent
SCALES: dict[str, dict[str, Any]] = {
    "quick": {"overrides": ["model.input_size=[64, 32]", "train.epochs=12", "trial.finetune_epochs=2"],
              "n_trials": 6, "seeds": [0, 1, 2], "budgets": [0.5, 0.3, 0.15], "random_policies": 20,
              "criteria": ["l1", "taylor", "random"], "scenarios": ["prune_then_finetune", "finetune_then_prune"]},
    "full": {"overrides": ["model.input_size=[128, 64]", "train.epochs=12", "trial.finetune_epochs=3"],
             "n_trials": 16, "seeds": [0, 1, 2], "budgets": [0.5, 0.3, 0.15], "random_policies": 24,
             "criteria": ["l1", "l2", "fpgm", "bn_scale", "taylor", "random"],
             "scenarios": ["prune_then_finetune", "finetune_then_prune", "direct_transfer"]},
}


class Suite:
    def __init__(self, scale: str, extra: list[str]) -> None:
        self.scale = scale
        self.s = SCALES[scale]
        self.cache = ROOT / "cache" / scale
        self.data_root = ROOT / "cache" / "data"
        self.extra = extra
        self.started = time.perf_counter()
        self.cells_done = 0

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.0f}s] {msg}", flush=True)

    def config(self, overrides: list[str]) -> dict[str, Any]:
        return load_config(preset="demo", overrides=[f"data.root={self.data_root}", *self.s["overrides"],
                                                     *overrides, *self.extra])

    def cell(self, name: str, overrides: list[str]) -> dict[str, Any]:
        """One search, cached: a finished report with enough trials is read back, anything else resumes."""
        cfg = self.config(overrides)
        out = self.cache / name
        report_path = out / "report.json"
        if report_path.is_file():
            report = json.loads(report_path.read_text())
            finished = [t for t in report["trials"] if t["state"] in ("COMPLETE", "PRUNED", "FAIL")]
            if len(finished) >= cfg["search"]["n_trials"]:
                self.log(f"cell {name}: cached")
                return report
        self.log(f"cell {name}: running {cfg['search']['n_trials']} trial(s)")
        report = run_search(cfg, out, progress=False, log=lambda m: self.log(f"  {name}: {m}") if m.startswith("trial") else None)
        self.cells_done += 1
        return report


# ---- the tables ---------------------------------------------------------------------------------------

def mean_sd(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def t2_search_vs_uniform(suite: Suite) -> dict[str, Any]:
    rows = {}
    for budget in suite.s["budgets"]:
        for seed in suite.s["seeds"]:
            tag = f"b{int(budget * 100)}_s{seed}"
            searched = suite.cell(f"t2_search_{tag}", [f"budget.macs_ratio={budget}", f"seed={seed}",
                                                       f"search.n_trials={suite.s['n_trials']}"])
            glob = suite.cell(f"t2_global_{tag}", [f"budget.macs_ratio={budget}", f"seed={seed}", "search.n_trials=1",
                                                   "search.space=uniform", "trial.strategy=global"])
            rows[(budget, seed)] = {"searched": searched["best"]["target"]["rank1"],
                                    "searched_macs": searched["best"]["macs_ratio"],
                                    # the same final fine-tune as the searched best, when there is one
                                    "uniform": (searched["uniform"].get("final_target")
                                                or searched["uniform"]["target"])["rank1"],
                                    "global": glob["best"]["target"]["rank1"] if glob["best"] else None,
                                    "unpruned": searched["baseline"]["target"]["rank1"],
                                    "report": searched}
    return rows


def t3_criteria_scenarios(suite: Suite) -> dict[tuple[str, str], float]:
    out = {}
    for scenario in suite.s["scenarios"]:
        for criterion in suite.s["criteria"]:
            r = suite.cell(f"t3_{criterion}_{scenario}", ["budget.macs_ratio=0.5", "search.space=uniform",
                                                          "search.n_trials=1", f"trial.criterion={criterion}",
                                                          f"trial.scenario={scenario}"])
            out[(criterion, scenario)] = r["best"]["target"]["rank1"] if r["best"] else None
    return out


def t4_larger_pruned(suite: Suite) -> dict[str, Any]:
    from autoprune.models import build_model
    from autoprune.pruning.flops import count_macs

    size = tuple(suite.config([])["model"]["input_size"])
    r18_macs = count_macs(build_model("resnet18", 2), size)[0]
    r34 = suite.cell("t4_r34_at_r18", ["model.arch=resnet34", f"budget.gmacs={r18_macs / 1e9}", "search.space=uniform",
                                       "search.n_trials=1"])
    r18 = suite.cell("t4_r18_unpruned_ref", ["budget.macs_ratio=0.99", "search.space=uniform", "search.n_trials=1"])
    return {"r34_pruned": r34["best"]["target"]["rank1"], "r34_macs": r34["best"]["macs"],
            "r34_unpruned": r34["baseline"]["target"]["rank1"], "r18": r18["baseline"]["target"]["rank1"],
            "r18_macs": r18_macs}


def t5_screening(suite: Suite) -> dict[str, Any]:
    """Adaptive-BN score vs rank-1 after fine-tuning over random policies at 30% MACs."""
    import random

    from scipy.stats import kendalltau

    path = suite.cache / "t5_screening.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    if len(rows) < suite.s["random_policies"]:
        from autoprune.data.domain import build_domain
        from autoprune.engine.baseline import get_baseline
        from autoprune.engine.device import resolve_device
        from autoprune.host import get_host
        from autoprune.search.trial import SearchEnv

        cfg = suite.config(["budget.macs_ratio=0.3"])
        device = resolve_device(cfg["train"]["device"])
        source = build_domain(cfg["data"]["source"], cfg)
        target = build_domain(cfg["data"]["target"], cfg, val_fraction=cfg["data"]["val_fraction"])
        baseline, _ = get_baseline(cfg, source, device, progress=False, log=lambda m: None)
        env = SearchEnv(cfg, get_host(), device, source, target, baseline)
        rng = random.Random(123)
        while len(rows) < suite.s["random_policies"]:
            values = {p.name: rng.uniform(p.low, p.high) for p in env.space.params.values()}
            counts = env.counts_for(values)
            t0 = time.perf_counter()
            score = env.screen_score(counts)
            screen_s = time.perf_counter() - t0
            result = env.run(values, counts=counts)
            rows.append({"screen": score, "val": result.metrics["target"]["val"]["rank1"],
                         "test": result.metrics["target"]["rank1"], "screen_seconds": screen_s,
                         "trial_seconds": result.seconds})
            path.write_text(json.dumps(rows))
            suite.log(f"  t5 policy {len(rows)}: adaptive-BN {score:.3f}, after fine-tune val {rows[-1]['val']:.3f}")
    tau_val = kendalltau([r["screen"] for r in rows], [r["val"] for r in rows])
    tau_test = kendalltau([r["screen"] for r in rows], [r["test"] for r in rows])
    cost = statistics.mean(r["screen_seconds"] for r in rows) / statistics.mean(r["trial_seconds"] for r in rows)
    return {"n": len(rows), "tau_val": tau_val.statistic, "p_val": tau_val.pvalue, "tau_test": tau_test.statistic,
            "p_test": tau_test.pvalue, "cost_ratio": cost}


def t6_sampler(suite: Suite, t2: dict) -> dict[str, Any]:
    out: dict[str, list[list[float]]] = {"tpe": [], "random": []}
    for seed in suite.s["seeds"]:
        tpe = t2[(0.3, seed)]["report"]
        rnd = suite.cell(f"t6_random_b30_s{seed}", ["budget.macs_ratio=0.3", f"seed={seed}", "search.sampler=random",
                                                    f"search.n_trials={suite.s['n_trials']}"])
        for name, report in (("tpe", tpe), ("random", rnd)):
            best, curve = float("-inf"), []
            for t in sorted(report["trials"], key=lambda t: t["number"]):
                if t["state"] == "COMPLETE":
                    best = max(best, t["target_val"]["rank1"])
                curve.append(best)
            out[name].append(curve)
    return out


def t7_latency(suite: Suite, t2: dict) -> list[dict[str, Any]]:
    import autoprune

    rows = []
    size = tuple(suite.config([])["model"]["input_size"])
    for budget in suite.s["budgets"]:
        cell = suite.cache / f"t2_search_b{int(budget * 100)}_s0"
        base = autoprune.load_pruned(str(suite.data_root / "baselines" / next(
            p.name for p in (suite.data_root / "baselines").glob("resnet18-*.pt"))))
        best = autoprune.load_pruned(str(cell / "model" / "pruned.pt"))
        report = t2[(budget, 0)]["report"]
        row = {"budget": budget, "macs_ratio": report["best"]["macs_ratio"]}
        for b in (1, 32):
            row[f"ratio_b{b}"] = latency(best, size, b, 20) / latency(base, size, b, 20)
        rows.append(row)
    return rows


def t8_overhead(t2: dict) -> dict[str, float]:
    shares = []
    for row in t2.values():
        for t in row["report"]["trials"]:
            if t["state"] == "COMPLETE" and t.get("train_seconds") is not None and t["seconds"]:
                shares.append((t["seconds"] - t["train_seconds"] - t["eval_seconds"]) / t["seconds"])
    return {"n": len(shares), "mean": statistics.mean(shares), "max": max(shares)}


# ---- the write-up -------------------------------------------------------------------------------------

def write_results(suite: Suite, t2, t3, t4, t5, t6, t7, t8, command: str) -> Path:
    s = suite.s
    lines = [f"## Scale `{suite.scale}`", "",
             f"Command: `{command}`  ",
             f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}, CPU only. Date: {date.today().isoformat()}. Seeds: {s['seeds']}.  ",
             f"Setup: demo preset (ResNet-18, synthetic source A -> target B) with {' '.join(s['overrides'])}; "
             f"searches run {s['n_trials']} Optuna trials (TPE, groupwise space; trial 0 is the uniform policy); "
             f"trials are selected on held-out target identities (validation) and every figure below is target "
             f"*test* rank-1.", ""]
    lines += ["### 1. Headline: 50% MACs, searched policy vs unpruned", "",
              "(The unpruned model gets the trials' fine-tuning; the searched best and the uniform policy get "
              "`search.final_epochs` more, so this table flatters pruning.)", "",
              "| seed | unpruned rank-1 | searched rank-1 | gap (points) |", "| --- | --- | --- | --- |"]
    for seed in s["seeds"]:
        r = t2[(0.5, seed)]
        lines.append(f"| {seed} | {r['unpruned']:.3f} | {r['searched']:.3f} | {100 * (r['searched'] - r['unpruned']):+.1f} |")
    lines += ["", "### 2. Search vs hand-picked (uniform) vs global ranking", "",
              "| MACs budget | searched | uniform | global | searched - uniform (points) |", "| --- | --- | --- | --- | --- |"]
    for budget in s["budgets"]:
        rows = [t2[(budget, seed)] for seed in s["seeds"]]
        diff = [100 * (r["searched"] - r["uniform"]) for r in rows]
        lines.append(f"| {budget:.0%} | {mean_sd([r['searched'] for r in rows])} | {mean_sd([r['uniform'] for r in rows])} | "
                     f"{mean_sd([r['global'] for r in rows])} | {statistics.mean(diff):+.1f} (per seed: "
                     f"{', '.join(f'{d:+.1f}' for d in diff)}) |")
    lines += ["", "![search vs uniform](plots/" + f"t2_{suite.scale}.png)", "",
              "### 3. Criteria x scenarios at 50% MACs (uniform policy, seed 0)", "",
              "| criterion | " + " | ".join(s["scenarios"]) + " |", "| --- |" + " --- |" * len(s["scenarios"])]
    for c in s["criteria"]:
        lines.append(f"| {c} | " + " | ".join(f"{t3[(c, sc)]:.3f}" if t3[(c, sc)] is not None else "-" for sc in s["scenarios"]) + " |")
    lines += ["", "### 4. Larger pruned vs smaller trained", "",
              f"ResNet-34 pruned (uniform) to ResNet-18's {t4['r18_macs'] / 1e6:.1f} MMACs: rank-1 {t4['r34_pruned']:.3f} "
              f"({t4['r34_macs'] / 1e6:.1f} MMACs); ResNet-18 trained the same way: {t4['r18']:.3f}; unpruned ResNet-34: "
              f"{t4['r34_unpruned']:.3f}.", "",
              "### 5. Adaptive-BN screening", "",
              f"{t5['n']} random policies at 30% MACs: Kendall tau between the adaptive-BN score and rank-1 after "
              f"fine-tuning = {t5['tau_val']:.2f} (validation, p={t5['p_val']:.3f}), {t5['tau_test']:.2f} (test, "
              f"p={t5['p_test']:.3f}); screening costs {t5['cost_ratio']:.1%} of one trial.", "",
              "### 6. Sample efficiency at 30% MACs (best validation rank-1 after N trials, mean of seeds)", "",
              "| N | " + " | ".join(str(i + 1) for i in range(s["n_trials"])) + " |", "| --- |" + " --- |" * s["n_trials"]]
    for name in ("tpe", "random"):
        curves = t6[name]
        means = [statistics.mean(c[i] for c in curves) for i in range(min(len(c) for c in curves))]
        lines.append(f"| {name} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    lines += ["", "### 7. CPU latency vs MACs (best policy of seed 0; pruned / unpruned)", "",
              "| budget | MACs ratio | latency ratio, batch 1 | latency ratio, batch 32 |", "| --- | --- | --- | --- |"]
    for r in t7:
        lines.append(f"| {r['budget']:.0%} | {r['macs_ratio']:.3f} | {r['ratio_b1']:.3f} | {r['ratio_b32']:.3f} |")
    lines += ["", "### 8. Framework overhead per trial", "",
              f"Time outside training and evaluation (projection, surgery, MACs counting, storage, saving): "
              f"{t8['mean']:.1%} of trial time on average, {t8['max']:.1%} at most, over {t8['n']} trials.", ""]
    return "\n".join(lines)


def plot_t2(suite: Suite, t2: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("searched", "searched (groupwise TPE)"), ("uniform", "uniform (paper)"), ("global", "global ranking")):
        xs, ys, es = [], [], []
        for budget in suite.s["budgets"]:
            vals = [t2[(budget, s)][key] for s in suite.s["seeds"] if t2[(budget, s)][key] is not None]
            xs.append(budget)
            ys.append(statistics.mean(vals))
            es.append(statistics.stdev(vals) if len(vals) > 1 else 0)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label)
    ax.axhline(statistics.mean(t2[(0.5, s)]["unpruned"] for s in suite.s["seeds"]), ls="--", c="gray", label="unpruned")
    ax.set_xlabel("MACs budget (fraction of unpruned)")
    ax.set_ylabel("target test rank-1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    (ROOT / "plots").mkdir(exist_ok=True)
    fig.savefig(ROOT / "plots" / f"t2_{suite.scale}.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--quick", action="store_true")
    group.add_argument("--full", action="store_true")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra config overrides")
    args = parser.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    suite = Suite("quick" if args.quick else "full", args.extra)
    t2 = t2_search_vs_uniform(suite)
    plot_t2(suite, t2)
    t3 = t3_criteria_scenarios(suite)
    t4 = t4_larger_pruned(suite)
    t5 = t5_screening(suite)
    t6 = t6_sampler(suite, t2)
    t7 = t7_latency(suite, t2)
    t8 = t8_overhead(t2)
    command = "make bench-quick" if args.quick else "make bench"
    section = write_results(suite, t2, t3, t4, t5, t6, t7, t8, command)
    (ROOT / f"results_{suite.scale}.md").write_text(section)
    suite.log(f"wrote benchmarks/results_{suite.scale}.md; {suite.cells_done} cells computed this time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
