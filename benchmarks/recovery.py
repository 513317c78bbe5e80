"""The recovery recipe at 50% MACs: pruned vs unpruned at equal target epochs, and the recipe ablation.

Every cell prunes the uniform 50% policy (L1, one-shot) of the same source-trained ResNet-18 and lets it
recover ``search.final_epochs`` (4, to fit 2 shared CPU cores) target epochs, as the search's final round does; the unpruned reference
goes through the same scenario with nothing pruned, so it sees the same target data and epochs. Recipes:
- ``ptf``: prune the source model, recover on the target (the old default, ``prune_then_finetune``);
- ``ftp``: prune the target-adapted model (adapted once, ``trial.adapt_epochs`` = 4), recover on the target
  (``finetune_then_prune``), so it has 4 + 4 target epochs and its unpruned reference too;
- distillation from the adapted teacher: off / logit / embedding / both.
The seconds of one trial (4 recovery epochs) with and without adapt-once are timed in the same process.

    .venv/bin/python -m benchmarks.recovery --seeds 0 1 2        # resumable: finished cells are read back
    .venv/bin/python -m benchmarks.recovery --seeds 1     # one seed per process, in parallel
    .venv/bin/python -m benchmarks.recovery --condition large --seeds 0 --cells unpruned_adapted ftp_embedding
    .venv/bin/python -m benchmarks.recovery --condition large --arch resnet34 --cells ftp_embedding   # table 4

The "large" condition is the paper's "large pre-training or fine-tuning data": a source pool and a target
fine-tuning set 5x the small condition's (500 synthetic identities each; the target's 400 to train on and
100 held out for validation, against 80 and 20), the full recipe's 8 recovery epochs, and the 1,577-query
target test split of `make bench` so that 1 point is resolved.

Table 4 (the paper's second finding) with this recipe: ``--arch resnet34`` trains, adapts and prunes a
ResNet-34 to the MACs of the ResNet-18 (``budget.gmacs``, both last stride 2), through the same cells; its
``ftp_embedding`` is compared with the ResNet-18's ``unpruned_adapted`` (the smaller network trained the same
way: the same source pool, target data and target epochs).

Writes benchmarks/recovery.json (every cell) and adds ``table1``, ``table4`` and ``recovery`` to
results_full.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
CONDITIONS: dict[str, list[str]] = {
    "small": [],
    "large": [
        "data.synth.num_train_ids=500",
        "data.synth.target_num_train_ids=500",
        "data.synth.target_num_test_ids=450",
        "data.synth.queries_per_id=5",
        "search.final_epochs=8",
    ],
}


SMALLER = "resnet18"  # the network every condition is about; table 4 prunes a larger one to its MACs


def cache_dir(condition: str) -> Path:
    return ROOT / "cache" / ("recovery" if condition == "small" else f"recovery-{condition}")


def seed_dir(condition: str, seed: int, arch: str = SMALLER, precision: str = "fp32") -> Path:
    """A seed's cells; another network or precision has its own source model, adapted model and cells."""
    return cache_dir(condition) / "-".join(
        [f"s{seed}", *([arch] if arch != SMALLER else []), *([precision] if precision != "fp32" else [])]
    )


@functools.cache
def smaller_macs() -> int:
    """MACs of the unpruned smaller network at the benchmark's input and last stride (every condition's)."""
    from autoprune.models import build_model
    from autoprune.pruning.flops import count_macs

    cfg = _config([], "small", 0)
    return count_macs(
        build_model(SMALLER, 2, last_stride=cfg["model"]["last_stride"]), tuple(cfg["model"]["input_size"])
    )[0]


def arch_overrides(arch: str) -> list[str]:
    """A larger network gets the smaller one's MACs as its budget (both at the same input and last stride)."""
    return [] if arch == SMALLER else [f"model.arch={arch}", f"budget.gmacs={smaller_macs() / 1e9}"]


def _config(overrides: list[str], condition: str, seed: int) -> dict[str, Any]:
    from autoprune.config import load_config

    return load_config(preset="demo", overrides=[*COMMON, *CONDITIONS[condition], f"seed={seed}", *overrides])


COMMON = [
    "model.input_size=[96, 48]",
    "train.epochs=12",
    "trial.finetune_epochs=4",
    "search.final_epochs=4",
    "train.threads=1",
    f"data.root={ROOT / 'cache' / 'data'}",
    # the recipe is set per cell, whatever the demo preset's default is
    "trial.distill.logit=0",
    "trial.distill.embedding=0",
    "trial.distill.temperature=4",
]
LOGIT, EMBEDDING = ["trial.distill.logit=1.0"], ["trial.distill.embedding=1.0"]
ADAPT_EPOCHS = 4
ADAPT = ["trial.scenario=finetune_then_prune", f"trial.adapt_epochs={ADAPT_EPOCHS}"]
PTF = ["trial.scenario=prune_then_finetune", "trial.adapt_epochs=4"]  # adapted model only as the teacher
# cell -> (overrides, unpruned reference?) in the order they run (the most telling first)
CELLS: dict[str, tuple[list[str], bool]] = {
    "unpruned_adapted": (ADAPT, True),
    "ftp_both": (ADAPT + LOGIT + EMBEDDING, False),
    "ftp_off": (ADAPT, False),
    "ptf_off": (PTF, False),
    "unpruned_source": (PTF, True),
    "ftp_logit": (ADAPT + LOGIT, False),
    "ftp_embedding": (ADAPT + EMBEDDING, False),
    "ptf_both": (PTF + LOGIT + EMBEDDING, False),
}


class Seed:
    """One seed's data, source baseline and adapted model, shared by its cells."""

    def __init__(self, seed: int, condition: str = "small", arch: str = SMALLER, precision: str = "fp32") -> None:
        from autoprune.data.domain import load_domains
        from autoprune.engine.baseline import get_baseline
        from autoprune.engine.device import resolve_device, set_threads

        self.seed, self.condition, self.dir = seed, condition, seed_dir(condition, seed, arch, precision)
        self.variant = [*arch_overrides(arch), *([f"train.precision={precision}"] if precision != "fp32" else [])]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.base_cfg = self.config(ADAPT)
        set_threads(1)
        self.device = resolve_device("cpu")
        self.source, self.target = load_domains(self.base_cfg)
        self.baseline, _ = get_baseline(self.base_cfg, self.source, self.device, progress=False, log=log)
        self.adapted_env = self.env(ADAPT)

    def config(self, overrides: list[str]) -> dict[str, Any]:
        return _config([*self.variant, *overrides], self.condition, self.seed)

    def env(self, overrides: list[str]) -> Any:
        from autoprune.host import get_host
        from autoprune.search.adapt import load_or_adapt
        from autoprune.search.trial import SearchEnv

        env = SearchEnv(self.config(overrides), get_host(), self.device, self.source, self.target, self.baseline)
        if env.adapt_epochs:
            load_or_adapt(env, self.dir, log=log)  # computed once per seed, read back by every cell
        return env

    def cell(self, name: str, recovery_epochs: int | None = None) -> dict[str, Any]:
        """One cell, cached; ``recovery_epochs`` other than the condition's: a variant beside it (``NAME-eN``)."""
        path = self.dir / (f"{name}.json" if recovery_epochs is None else f"{name}-e{recovery_epochs}.json")
        if path.is_file():
            return json.loads(path.read_text())
        overrides, unpruned = CELLS[name]
        if recovery_epochs is not None:
            overrides = [*overrides, f"search.final_epochs={recovery_epochs}"]
        env = self.env(overrides)
        epochs = env.cfg["search"]["final_epochs"]
        start = time.perf_counter()
        if unpruned:
            result = env.unpruned(epochs=epochs)
        else:
            counts = env.counts_for(env.space.uniform_values())
            result = env.run(env.space.uniform_values(), counts=counts, epochs=epochs)
        target = result.metrics["target"]
        out = {
            "cell": name,
            "seed": self.seed,
            "rank1": target["rank1"],
            "mAP": target["mAP"],
            "val_rank1": target["val"]["rank1"],
            "val_mAP": target["val"]["mAP"],
            "macs_ratio": result.macs_ratio,
            "macs": result.macs,
            "target_epochs": epochs
            + (env.adapt_epochs if env.cfg["trial"]["scenario"] == "finetune_then_prune" else 0),
            "seconds": round(time.perf_counter() - start, 1),
        }
        path.write_text(json.dumps(out, indent=1))
        log(f"seed {self.seed} {name}: val {out['val_rank1']:.3f} test {out['rank1']:.3f} ({out['seconds']:.0f} s)")
        return out

    def trial_cost(self) -> dict[str, Any]:
        """Seconds of one trial (uniform policy, 4 recovery epochs) adapting per trial vs adapted once."""
        path = self.dir / "trial_cost.json"
        if path.is_file():
            return json.loads(path.read_text())
        out: dict[str, Any] = {}
        for name, overrides in (
            ("per_trial", ["trial.scenario=finetune_then_prune", "trial.adapt_epochs=0"]),
            ("adapt_once", ADAPT),
            ("prune_then_finetune", ["trial.scenario=prune_then_finetune"]),
        ):
            env = self.env(overrides)
            values = env.space.uniform_values()
            result = env.run(values, counts=env.counts_for(values))
            out[name] = {
                "seconds": round(result.seconds, 1),
                "val_rank1": result.metrics["target"]["val"]["rank1"],
                "rank1": result.metrics["target"]["rank1"],
            }
            log(f"seed {self.seed} trial cost {name}: {result.seconds:.1f} s")
        path.write_text(json.dumps(out, indent=1))
        return out


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def mean_sd(xs: list[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def collect(seeds: list[int], condition: str = "small") -> dict[str, Any]:
    """Every finished cell of a condition, read back from the cache (whatever a run got through)."""
    cache = cache_dir(condition)
    cells: dict[str, dict[int, dict[str, Any]]] = {}
    costs = {}
    for seed in seeds:
        for name in CELLS:
            path = cache / f"s{seed}" / f"{name}.json"
            if path.is_file():
                cells.setdefault(name, {})[seed] = json.loads(path.read_text())
        cost = cache / f"s{seed}" / "trial_cost.json"
        if cost.is_file():
            costs[seed] = json.loads(cost.read_text())
        adapted = cache / f"s{seed}" / "adapted.json"
        ftp = cells.get("ftp_off", {}).get(seed)
        if adapted.is_file() and ftp:
            # Same process, same seed: a trial that adapts its own copy first (finetune_then_prune before
            # adapt-once) costs the adaptation plus the recovery; with adapt-once only the recovery.
            a = json.loads(adapted.read_text())["seconds"]
            costs.setdefault(seed, {})["derived"] = {
                "adapt_seconds": a,
                "recovery_seconds": ftp["seconds"],
                "per_trial_adaptation": round(a + ftp["seconds"], 1),
                "adapt_once": ftp["seconds"],
            }
    return {"cells": cells, "trial_cost": costs}


def table1_rows(cells: dict[str, dict[int, dict[str, Any]]], condition: str) -> list[dict[str, Any]]:
    """results_full.json's table1: each recipe's pruned model against its unpruned reference, same seeds."""
    rows = []
    for pruned, ref, label in (
        (
            "ftp_embedding",
            "unpruned_adapted",
            "finetune_then_prune, adapted once, embedding distillation (the default)",
        ),
        ("ftp_off", "unpruned_adapted", "finetune_then_prune, adapted once, no distillation"),
        ("ftp_both", "unpruned_adapted", "finetune_then_prune + distillation (logit + embedding)"),
        ("ptf_off", "unpruned_source", "prune_then_finetune (the old default)"),
    ):
        common = sorted(set(cells.get(pruned, {})) & set(cells.get(ref, {})))
        if common:
            rows.append(
                {
                    "condition": condition,
                    "recipe": label,
                    "macs_ratio": 0.5,
                    "pruned_rank1": round(statistics.mean(cells[pruned][s]["rank1"] for s in common), 4),
                    "unpruned_rank1": round(statistics.mean(cells[ref][s]["rank1"] for s in common), 4),
                    "per_seed": {s: [cells[pruned][s]["rank1"], cells[ref][s]["rank1"]] for s in common},
                    "target_epochs": cells[pruned][common[0]]["target_epochs"],
                    "seeds": common,
                }
            )
    return rows


def write(seeds: list[int]) -> dict[str, Any]:
    """recovery.json (the small condition) and recovery-large.json, table1 of results_full.json for both, and
    recovery_tables.md, from every finished cell."""
    by_condition = {}
    for c in CONDITIONS:
        path = ROOT / ("recovery.json" if c == "small" else f"recovery-{c}.json")
        data = collect(seeds, c)
        if data["cells"]:
            path.write_text(json.dumps(data, indent=1, sort_keys=True))
        elif path.is_file():  # no cache here (another machine): keep the committed figures
            data = json.loads(path.read_text())
            data["cells"] = {k: {int(s): v for s, v in by.items()} for k, by in data["cells"].items()}
        by_condition[c] = data
    full = ROOT / "results_full.json"
    results = json.loads(full.read_text()) if full.is_file() else {}
    results["table1"] = [row for c, d in by_condition.items() for row in table1_rows(d["cells"], c)]
    for key, rows_of in (("recovery_epochs", epochs_rows), ("recovery_precision", precision_rows)):
        if rows := [row for c in CONDITIONS for row in rows_of(c, seeds)]:  # else keep another machine's
            results[key] = rows
    t4 = [row for c in CONDITIONS if (row := table4_row(c, seeds))]
    if t4:  # else keep what another machine measured
        results["table4"] = t4[-1] if len(t4) == 1 else t4[-1] | {"other_conditions": t4[:-1]}
    results["recovery"] = by_condition["small"]
    results["recovery_large"] = by_condition["large"]
    full.write_text(json.dumps(results, indent=1, sort_keys=True))
    table = "\n\n".join(
        f"### Condition: {c}\n\n{markdown(d)}" for c, d in by_condition.items() if d["cells"] or c == "small"
    )
    if results.get("recovery_epochs"):
        table += (
            "\n\n### Recovery epochs: the default recipe's pruned model against its unpruned reference, equal epochs\n\n"
            "| condition | recovery epochs | seed | unpruned val / test rank-1 | pruned val / test rank-1 | test gap |\n"
            "| --- | --- | --- | --- | --- | --- |\n"
            + "\n".join(
                f"| {r['condition']} | {r['recovery_epochs']} | {r['seed']} | {r['unpruned_val_rank1']:.3f} / "
                f"{r['unpruned_rank1']:.3f} | {r['pruned_val_rank1']:.3f} / {r['pruned_rank1']:.3f} | "
                f"{100 * (r['pruned_rank1'] - r['unpruned_rank1']):+.1f} |"
                for r in results["recovery_epochs"]
            )
        )
    if results.get("recovery_precision"):
        table += (
            "\n\n### float32 against bfloat16 (source model, adaptation and cell all trained in that precision)\n\n"
            "| condition | seed | cell | fp32 rank-1 / mAP | bf16 rank-1 / mAP | seconds fp32 / bf16 |\n"
            "| --- | --- | --- | --- | --- | --- |\n"
            + "\n".join(
                f"| {r['condition']} | {r['seed']} | {r['cell']} | {r['rank1_fp32']:.3f} / {r['mAP_fp32']:.3f} | "
                f"{r['rank1_bf16']:.3f} / {r['mAP_bf16']:.3f} | {r['seconds_fp32']:.0f} / {r['seconds_bf16']:.0f} |"
                for r in results["recovery_precision"]
            )
        )
    if results.get("table4"):
        t = results["table4"]
        table += (
            f"\n\n### Table 4 ({t['condition']} condition): {t['larger_arch']} pruned to {t['smaller_arch']}'s MACs "
            f"against {t['smaller_arch']} trained the same way\n\n"
            "| seed | larger pruned rank-1 | its MACs (M) | smaller rank-1 | its MACs (M) |\n| --- | --- | --- | --- | --- |\n"
            + "\n".join(
                f"| {s} | {a:.3f} | {am / 1e6:.1f} | {b:.3f} | {bm / 1e6:.1f} |"
                for s, (a, am, b, bm) in t["per_seed"].items()
            )
            + f"\n| mean | {t['larger_pruned_rank1']:.3f} | | {t['smaller_rank1']:.3f} | |"
        )
    print(table)
    (ROOT / "recovery_tables.md").write_text(table + "\n")
    return by_condition["small"]


def epochs_rows(condition: str, seeds: list[int]) -> list[dict[str, Any]]:
    """The default recipe (``ftp_embedding``) against ``unpruned_adapted`` at each number of recovery epochs a
    seed has both for: the condition's own and every ``--recovery-epochs`` variant."""
    rows = []
    for seed in seeds:
        folder = seed_dir(condition, seed)
        for pruned in sorted(folder.glob("ftp_embedding*.json")):
            ref = folder / pruned.name.replace("ftp_embedding", "unpruned_adapted")
            if ref.is_file():
                a, b = json.loads(pruned.read_text()), json.loads(ref.read_text())
                rows.append(
                    {
                        "condition": condition,
                        "seed": seed,
                        "recovery_epochs": a["target_epochs"] - ADAPT_EPOCHS,
                        "pruned_rank1": a["rank1"],
                        "pruned_val_rank1": a["val_rank1"],
                        "unpruned_rank1": b["rank1"],
                        "unpruned_val_rank1": b["val_rank1"],
                    }
                )
    return sorted(rows, key=lambda r: (r["recovery_epochs"], r["seed"]))


def precision_rows(condition: str, seeds: list[int]) -> list[dict[str, Any]]:
    """Every cell a seed has in both float32 and bfloat16 (everything of the seed trained in that precision):
    test rank-1 and mAP of each, and the cell's seconds (its recovery or fine-tuning and evaluation)."""
    rows = []
    for seed in seeds:
        for name in CELLS:
            fp32, bf16 = (
                seed_dir(condition, seed) / f"{name}.json",
                seed_dir(condition, seed, precision="bf16") / f"{name}.json",
            )
            if fp32.is_file() and bf16.is_file():
                a, b = json.loads(fp32.read_text()), json.loads(bf16.read_text())
                rows.append(
                    {"condition": condition, "seed": seed, "cell": name}
                    | {f"{k}_{tag}": c[k] for tag, c in (("fp32", a), ("bf16", b)) for k in ("rank1", "mAP", "seconds")}
                )
    return rows


def table4_row(condition: str, seeds: list[int], larger: str = "resnet34") -> dict[str, Any] | None:
    """The larger network pruned to the smaller one's MACs (default recipe) against the smaller one unpruned
    through the same recipe (same source pool, target data and target epochs), on the seeds that have both."""
    per_seed = {}
    for seed in seeds:
        big, small = (
            seed_dir(condition, seed, larger) / "ftp_embedding.json",
            seed_dir(condition, seed) / "unpruned_adapted.json",
        )
        if big.is_file() and small.is_file():
            b, s = json.loads(big.read_text()), json.loads(small.read_text())
            per_seed[seed] = (b["rank1"], b["macs"], s["rank1"], s.get("macs") or smaller_macs())
    if not per_seed:
        return None
    return {
        "condition": condition,
        "larger_arch": larger,
        "smaller_arch": SMALLER,
        "recipe": "finetune_then_prune, adapted once, embedding distillation (the default)",
        "larger_pruned_rank1": round(statistics.mean(v[0] for v in per_seed.values()), 4),
        "smaller_rank1": round(statistics.mean(v[2] for v in per_seed.values()), 4),
        "per_seed": per_seed,
        "seeds": sorted(per_seed),
    }


LABELS = {
    "unpruned_adapted": ("unpruned", "adapted once (4) + the recovery epochs", "-", 8),
    "unpruned_source": ("unpruned", "source model + the recovery epochs", "-", 4),
    "ftp_off": ("50% uniform", "prune the adapted model (finetune_then_prune, adapt once)", "off", 8),
    "ftp_logit": ("50% uniform", "prune the adapted model", "logit", 8),
    "ftp_embedding": ("50% uniform", "prune the adapted model", "embedding", 8),
    "ftp_both": ("50% uniform", "prune the adapted model", "logit + embedding", 8),
    "ptf_off": ("50% uniform", "prune the source model (prune_then_finetune)", "off", 4),
    "ptf_both": ("50% uniform", "prune the source model", "logit + embedding", 4),
}


def markdown(data: dict[str, Any]) -> str:
    """The ablation table (validation chooses, test reports) and the trial costs, from the cache."""
    lines = [
        "| model | recipe | distillation | target epochs | val rank-1 | test rank-1 | test mAP | seeds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, (model, rec, dist, epochs) in LABELS.items():
        by_seed = data["cells"].get(name, {})
        seeds = sorted(by_seed)
        if not seeds:
            lines.append(f"| {model} | {rec} | {dist} | {epochs} | not run | | | |")
            continue
        epochs = by_seed[seeds[0]]["target_epochs"]  # the small condition's LABELS figure, or the large one's
        lines.append(
            f"| {model} | {rec} | {dist} | {epochs} | {mean_sd([by_seed[s]['val_rank1'] for s in seeds])} | "
            f"{mean_sd([by_seed[s]['rank1'] for s in seeds])} | {mean_sd([by_seed[s]['mAP'] for s in seeds])} | "
            f"{', '.join(map(str, seeds))} |"
        )
    costs = data["trial_cost"]
    if costs:
        lines += [
            "",
            "| seed | adaptation (4 epochs) s | trial adapting its own copy s | trial with adapt-once s |",
            "| --- | --- | --- | --- |",
        ]
        for seed, c in sorted(costs.items()):
            d = c.get("derived")
            if d:
                lines.append(
                    f"| {seed} | {d['adapt_seconds']:.0f} | {d['per_trial_adaptation']:.0f} | {d['adapt_once']:.0f} |"
                )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--condition", choices=list(CONDITIONS), default="small")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="train and evaluate everything of these seeds (source model included) in this precision",
    )
    p.add_argument("--arch", default=SMALLER, help=f"a larger network pruned to {SMALLER}'s MACs (table 4)")
    p.add_argument("--cells", nargs="+", choices=list(CELLS), help="only these cells, in this order")
    p.add_argument(
        "--recovery-epochs", type=int, help="recovery epochs other than the condition's (cells kept beside, NAME-eN)"
    )
    p.add_argument("--report-only", action="store_true", help="only rewrite the tables from the cache")
    p.add_argument("--trial-cost", action="store_true", help="also time one trial with and without adapt-once")
    args = p.parse_args()
    if not args.report_only:
        for seed in args.seeds:
            s = Seed(seed, args.condition, args.arch, args.precision)
            for k, name in enumerate(args.cells or CELLS):
                s.cell(name, args.recovery_epochs)
                if k == 3 and args.trial_cost and seed == args.seeds[0]:
                    s.trial_cost()
                write(args.seeds)
    write(args.seeds)


if __name__ == "__main__":
    main()
