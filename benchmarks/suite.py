"""The benchmark suite behind benchmarks/RESULTS.md: reproduce the paper, then show what search adds.

    python -m benchmarks.suite --quick      # make bench-quick: 96x48, 2 seeds, 6 trials
    python -m benchmarks.suite --full       # make bench: 96x48, 1,577 test queries, 3 seeds, 20 trials

Every cell is an ordinary autoprune run directory under benchmarks/cache/<scale>/, so an interrupted
suite resumes where it stopped (finished cells are read back, a half-done search resumes its study).
Each run is time-boxed (``--hours``; the scale's default keeps `make bench` within 2 hours and `make
bench-quick` within 20 minutes on 2 CPU cores): after the limit no cell and no trial starts, the search in
flight finishes its trial and final round, table 2 is written from the finished cells with a "not finished"
note, and the same command continues. On 2 cores the full scale takes several such runs (about an hour
per table-2 cell); on a GPU one run does it all.
The same script takes a real dataset and a GPU unchanged, e.g. (extra --set options get their own
cache folder and results_<scale>-<hash>.md):

    python -m benchmarks.suite --full --set data.source=market1501:/data/Market-1501 \
        --set data.target=dukemtmc:/data/DukeMTMC-reID --set model.input_size=[256,128] --set model.last_stride=1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

from autoprune.config import load_config
from autoprune.search.run import run_search, study_identity
from benchmarks.bench_pruning import latency

ROOT = Path(__file__).resolve().parent
# Both scales use 96x48 inputs: at 64x32 ResNet-18 barely learns the synthetic target in a few epochs
# (unpruned rank-1 0.05, so every table was noise), and 128x64 (the demo's) makes `make bench` ~1.8x
# longer than its 2-hour allowance on 2 cores.
# The target of the full scale resolves 2 points: about 1,700 test queries from 450 identities, one query in
# each of up to 5 of an identity's cameras as in Market-1501 (standard error of a rank-1 near 0.4:
# sqrt(0.4 * 0.6 / 1700) = 1.2 points for one model, less for a paired difference), and 150 validation
# identities (about 500 validation queries) to rank policies on. One query per identity would need a
# 1,500-identity gallery, where every model was at the floor (unpruned rank-1 0.06). The source and the 100
# fine-tuning identities stay the size they were, so a trial costs what it did apart from evaluation.
TARGET_2PT = [
    "data.synth.target_num_test_ids=450",
    "data.synth.queries_per_id=5",
    "data.synth.target_num_train_ids=250",
    "data.val_fraction=0.6",
]
# The search: multi-fidelity (successive halving over the trials' epochs, decided on validation), warm-started
# with the uniform and the global-ranking policies (both kept in the final round), a final round of the
# trials within 2 standard errors of the best on validation. The objective is validation mAP: over the six
# searches of table 2 with 3+ complete trials (rank-1 objective, 3 budgets x seeds), Kendall tau with test rank-1
# was 0.71-1.00 (mean 0.90) for validation mAP against 0.33-0.82 (mean 0.59) for validation rank-1, never lower.
# The first rung is at the product's default, epoch 2 (search.min_resource): with it at epoch 1, the earlier
# table-2 cells ranked trials almost at random there (Kendall tau +0.18 against the last epoch on validation);
# those cells are kept under `--set search.min_resource=1` (benchmarks/compare_searches.py compares the two).
SEARCH = [
    "search.objective=mAP",
    "search.pruner=successive_halving",
    "search.warm_start_global=true",
    "search.finalists_se=2",
    "search.finalists=3",
]
SCALES: dict[str, dict[str, Any]] = {
    "quick": {
        "overrides": [
            "model.input_size=[96, 48]",
            "train.epochs=12",
            "trial.finetune_epochs=2",
            "search.final_epochs=4",
        ],
        "n_trials": 6,
        "hours": 0.25,
        "seeds": [0, 1],
        "budgets": [0.5, 0.3, 0.15],
        "random_policies": 12,
        "criteria": ["l1", "taylor", "random"],
        "scenarios": ["prune_then_finetune", "finetune_then_prune"],
    },
    "full": {
        "overrides": [
            "model.input_size=[96, 48]",
            "train.epochs=12",
            "trial.finetune_epochs=4",
            "search.final_epochs=8",
            *TARGET_2PT,
            *SEARCH,
        ],
        "n_trials": 20,
        "hours": 1.6,
        "seeds": [0, 1, 2],
        "budgets": [0.5, 0.3, 0.15],
        "random_policies": 24,
        "global_from_search": True,
        "criteria": ["l1", "l2", "fpgm", "bn_scale", "taylor", "random"],
        "scenarios": ["prune_then_finetune", "finetune_then_prune", "direct_transfer"],
    },
}
# What the unpruned reference of a run (its baseline.json) depends on; runs that agree on these share it.
BASELINE_KEYS = ("model", "data", "train", "seed")
BASELINE_TRIAL_KEYS = ("scenario", "finetune_epochs", "lr")


def finished_trials(report: dict[str, Any]) -> list[dict[str, Any]]:
    """A report's trials that ended (complete, stopped early or failed): what counts toward ``n_trials``."""
    return [t for t in report["trials"] if t["state"] in ("COMPLETE", "PRUNED", "FAIL")]


class NotCached(Exception):
    """A cell that ``--cached-only`` would have had to run."""


class OutOfTime(NotCached):
    """A cell the suite's time limit (``--hours``) left unstarted or unfinished; the next run continues it."""


class Suite:
    def __init__(self, scale: str, extra: list[str]) -> None:
        self.scale = scale
        self.s = SCALES[scale]
        # Extra overrides (a real dataset, another input size) get their own cache and result files: the
        # stale-cell check would otherwise restart the default suite's cells under the new config.
        self.tag = scale if not extra else f"{scale}-{hashlib.sha256(' '.join(extra).encode()).hexdigest()[:8]}"
        self.cache = ROOT / "cache" / self.tag
        self.data_root = ROOT / "cache" / "data"
        self.extra = extra
        self.started = time.perf_counter()
        self.started_at = time.time()
        self.cells_done = 0
        self.cells_seen: set[str] = set()
        self.cached_only = False  # --cached-only: write the tables from finished cells, run nothing
        # --hours: no cell starts after this (perf_counter) time and a search in flight starts no new trial;
        # an interrupted search resumes from its study on the next run.
        self.deadline: float | None = None
        s = self.s
        # t2 (searched + global per budget and seed), t3, t4 (2), t5 screened searches, t6 random searches
        self.cells_total = (
            2 * len(s["budgets"]) * len(s["seeds"]) + len(s["criteria"]) * len(s["scenarios"]) + 2 + 2 * len(s["seeds"])
        )

    def record_wall_time(self, seconds: float) -> float:
        """Add this run's wall time to the scale's ledger (once per run); the seconds of every run so far."""
        path = self.cache / "wall_seconds.json"
        runs = json.loads(path.read_text()) if path.is_file() else {}
        runs[f"{self.started_at:.3f}"] = seconds  # keyed by this run's start: writing twice replaces
        self.cache.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(runs, indent=1))
        return float(sum(runs.values()))

    def time_left(self, name: str) -> float | None:
        """Seconds left before the time limit (None: no limit); ``OutOfTime`` when there are none."""
        if self.deadline is None:
            return None
        left = self.deadline - time.perf_counter()
        if left <= 0:
            raise OutOfTime(name)
        return left

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.0f}s] {msg}", flush=True)

    def config(self, overrides: list[str]) -> dict[str, Any]:
        return load_config(
            preset="demo", overrides=[f"data.root={self.data_root}", *self.s["overrides"], *overrides, *self.extra]
        )

    def cell(self, name: str, overrides: list[str]) -> dict[str, Any]:
        """One search, cached: a finished report with enough trials is read back, anything else resumes."""
        cfg = self.config(overrides)
        out = self.cache / name
        self.cells_seen.add(name)
        label = f"{name} ({len(self.cells_seen)}/{self.cells_total})"
        report_path = out / "report.json"
        identity = out / "identity.json"
        if identity.is_file() and json.loads(identity.read_text())["identity"] != study_identity(cfg):
            if self.cached_only:  # reading only: never delete a cell (a code update can change the identity)
                raise NotCached(name)
            self.log(f"cell {label}: computed with another config (the suite changed); starting it again")
            shutil.rmtree(out)
        if report_path.is_file():
            report = json.loads(report_path.read_text())
            final_epochs = cfg["search"]["final_epochs"]
            if report["best"] and (
                report["best"]["final_epochs"] != final_epochs or (final_epochs and "finalists" not in report)
            ):
                report_path.unlink()  # the search is reused; finish() redoes the final fine-tune
                return self.cell(name, overrides)
            finished = finished_trials(report)
            if len(finished) >= cfg["search"]["n_trials"]:
                self.log(f"cell {label}: cached")
                return report
            if self.cached_only and report["best"]:  # an interrupted search: its report, with the trials it had
                self.log(f"cell {label}: {len(finished)} of {cfg['search']['n_trials']} trials finished (partial)")
                return report
        if self.cached_only:
            raise NotCached(name)
        left = self.time_left(name)
        if left is not None:  # search.timeout is not part of a study's identity: the cell resumes unchanged
            cfg = self.config([*overrides, f"search.timeout={max(left, 0.05):.2f}"])
        self._share_baseline(cfg, out)
        self.log(f"cell {label}: running {cfg['search']['n_trials']} trial(s)")
        report = run_search(
            cfg,
            out,
            progress=False,
            log=lambda m: self.log(f"  {label}: {m}") if m.startswith(("trial", "final")) else None,
        )
        self.cells_done += 1
        finished = finished_trials(report)
        if len(finished) < cfg["search"]["n_trials"]:  # stopped by the time limit
            self.log(f"cell {label}: time limit, {len(finished)} of {cfg['search']['n_trials']} trials finished")
            raise OutOfTime(name)
        return report

    def _share_baseline(self, cfg: dict[str, Any], out: Path) -> None:
        """Seed a new cell with the unpruned reference of an earlier cell that computed the same one.

        The reference is the seeded, deterministic fine-tune of the unpruned model, so reusing it changes no
        figure; it saves one target fine-tune per cell.
        """
        key = json.dumps(
            [{k: cfg[k] for k in BASELINE_KEYS}, {k: cfg["trial"][k] for k in BASELINE_TRIAL_KEYS}], sort_keys=True
        )
        index_path = self.cache / "baselines.json"
        index = json.loads(index_path.read_text()) if index_path.is_file() else {}
        mine = out / "baseline.json"
        if not mine.is_file() and key in index and Path(index[key]).is_file():
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(index[key], mine)
        elif key not in index or not Path(index[key]).is_file():
            index[key] = str(mine)
            self.cache.mkdir(parents=True, exist_ok=True)
            index_path.write_text(json.dumps(index, indent=1))

    def target_query_pids(self) -> list[int]:
        """The identity of each target test query, in the order of the per-query hits (read, not decoded)."""
        from autoprune.data import load_dataset
        from autoprune.data.domain import target_synth

        cfg = self.config([])
        data = cfg["data"]
        return [
            pid
            for _, pid, _ in load_dataset(
                data["target"], data_root=data["root"], synth=target_synth(data["synth"])
            ).query
        ]

    def env(self, overrides: list[str]) -> Any:
        """A SearchEnv for direct use (screening, equal-epoch references), the source baseline cached."""
        from autoprune.data.domain import load_domains
        from autoprune.engine.baseline import get_baseline
        from autoprune.engine.device import resolve_device
        from autoprune.host import get_host
        from autoprune.search.trial import SearchEnv

        cfg = self.config(overrides)
        device = resolve_device(cfg["train"]["device"])
        source, target = load_domains(cfg)
        baseline, _ = get_baseline(cfg, source, device, progress=False, log=lambda m: None)
        return SearchEnv(cfg, get_host(), device, source, target, baseline)


# ---- the tables ---------------------------------------------------------------------------------------


def mean_sd(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def t2_search_vs_uniform(
    suite: Suite, budgets: list[float] | None = None, seeds: list[int] | None = None
) -> dict[Any, Any]:
    """Searched vs uniform vs global per (budget, seed), with the per-query test hits of each model.

    The global ranking comes from its own cell (the ``global`` strategy, one trial and the same final
    fine-tune); with ``global_from_search`` in the scale, from the search's global-ranking warm start, which
    gets the same final fine-tune in the search's final round.
    """
    rows = {}
    for budget in budgets or suite.s["budgets"]:
        for seed in seeds or suite.s["seeds"]:
            try:
                rows[(budget, seed)] = t2_row(suite, budget, seed)
            except NotCached as exc:  # either of the row's cells: the row is left out
                why = "the time limit" if isinstance(exc, OutOfTime) else "--cached-only"
                suite.log(f"cell {exc}: not finished, left out ({why})")
    return rows


def t2_row(suite: Suite, budget: float, seed: int) -> dict[str, Any]:
    """One (budget, seed) of table 2: the search's cell, and the global ranking's (its own cell, or the search's
    warm start with ``global_from_search``)."""
    tag = f"b{int(budget * 100)}_s{seed}"
    searched = suite.cell(
        f"t2_search_{tag}",
        [f"budget.macs_ratio={budget}", f"seed={seed}", f"search.n_trials={suite.s['n_trials']}"],
    )
    uniform = searched["uniform"] or {}
    trial_hits = {t["number"]: t.get("hits") for t in searched["trials"]}
    if suite.s.get("global_from_search"):
        g = searched.get("global") or {}
        glob_rank1 = (g.get("final_target") or g.get("target") or {}).get("rank1")
        glob_hits = g.get("final_hits") or trial_hits.get(g.get("trial"))
    else:
        glob = suite.cell(
            f"t2_global_{tag}",
            [
                f"budget.macs_ratio={budget}",
                f"seed={seed}",
                "search.n_trials=1",
                "search.space=uniform",
                "trial.strategy=global",
            ],
        )
        glob_rank1 = glob["best"]["target"]["rank1"] if glob["best"] else None
        glob_hits = glob["best"].get("hits") if glob["best"] else None
    return {
        "searched": searched["best"]["target"]["rank1"],
        # what the search alone picked (best on validation after the trials' epochs)
        "top_trial": (searched.get("finalists") or [searched["best"]])[0]["target"]["rank1"],
        # the same final fine-tune as the searched best, when there is one
        "uniform": (uniform.get("final_target") or uniform["target"])["rank1"],
        "global": glob_rank1,
        "hits": {
            "searched": searched["best"].get("hits"),
            "uniform": uniform.get("final_hits") or trial_hits.get(uniform.get("trial")),
            "global": glob_hits,
        },
        "report": searched,
        "rung_tau": rung_taus(suite.cache / f"t2_search_{tag}" / "study.db"),
    }


def paired_diff(
    a: list[str | None], b: list[str | None], n_boot: int = 4000, seed: int = 0, groups: list[int] | None = None
) -> dict[str, Any] | None:
    """Mean of a - b (fractions) over the queries and seeds, with a 95% bootstrap interval.

    ``a[i]``/``b[i]``: seed i's per-query rank-1 hits ("0"/"1" strings, the same queries in the same order)
    of the two models. Each bootstrap sample redraws the seeds and, within them, the queries (the same
    query indices for every drawn seed: the test split is shared), so the interval covers both the
    query sampling and the seed-to-seed (training) variation. ``groups`` (one identity per query): the
    queries of one identity are drawn together, since they succeed or fail together more often than
    independent queries would (Market-style splits have several queries per identity), which widens the
    interval honestly. None when a vector is missing.
    """
    import numpy as np

    pairs = [(x, y) for x, y in zip(a, b) if x and y]
    if not pairs or len(pairs) < len(a) or len({len(x) for x, y in pairs} | {len(y) for x, y in pairs}) != 1:
        return None
    d = np.array([[int(c) for c in x] for x, _ in pairs], dtype=np.float64) - np.array(
        [[int(c) for c in y] for _, y in pairs], dtype=np.float64
    )  # seeds x queries
    n_seeds, n_q = d.shape
    if groups is not None and len(groups) != n_q:
        groups = None  # not this split's queries: fall back to independent queries
    labels = np.unique(np.asarray(groups), return_inverse=True)[1] if groups is not None else np.arange(n_q)
    n_groups = int(labels.max()) + 1
    sums = np.stack([np.bincount(labels, weights=row, minlength=n_groups) for row in d])  # seeds x groups
    sizes = np.bincount(labels, minlength=n_groups)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for i in range(n_boot):
        rows = rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else np.zeros(1, dtype=int)
        cols = rng.integers(0, n_groups, n_groups)
        means[i] = sums[np.ix_(rows, cols)].sum() / (len(rows) * sizes[cols].sum())
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {
        "mean": float(d.mean()),
        "ci95": [float(lo), float(hi)],
        "queries": n_q,
        "seeds": n_seeds,
        "resampled": "identities" if groups is not None else "queries",
    }


def search_taus(report: dict[str, Any]) -> dict[str, float | None]:
    """Kendall tau between each candidate validation objective and test rank-1 over a search's complete trials."""
    from scipy.stats import kendalltau

    from autoprune.choices import OBJECTIVES
    from autoprune.search.records import score

    done = [t for t in report["trials"] if t["state"] == "COMPLETE" and t.get("target") and t.get("target_val")]
    out: dict[str, float | None] = {"n": len(done)}
    for kind in OBJECTIVES:
        tau = kendalltau([score(t["target_val"], kind) for t in done], [t["target"]["rank1"] for t in done])
        out[kind] = None if len(done) < 3 or tau.statistic != tau.statistic else float(tau.statistic)
    return out


def rung_taus(study_db: Path) -> dict[str, Any]:
    """Kendall tau, on validation, between a search's trials at epoch 1 (and 2) and at its last epoch, over the
    trials that reached both: whether an early rung of successive halving ranks policies as the end does.
    Read from the cell's Optuna study (the intermediate values every trial reports, stopped ones too), with
    ``trial_epochs``, the fine-tuning epochs the trials trained in all."""
    import optuna
    from scipy.stats import kendalltau

    out: dict[str, Any] = {}
    if not study_db.is_file():
        return out
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{study_db}")
    steps = [t.intermediate_values for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    last = max((max(v) for v in steps), default=0)
    for early in (1, 2):
        pairs = [(v[early], v[last]) for v in steps if early in v and last in v]
        tau = kendalltau(*zip(*pairs)).statistic if len(pairs) >= 3 and early < last else None
        out[f"epoch{early}"] = None if tau is None or tau != tau else float(tau)
        out[f"n{early}"] = len(pairs)
    out["last_epoch"] = last
    out["trial_epochs"] = sum(len(v) for v in steps)  # every epoch a trial trained reports once
    return out


def t2_summary(suite: Suite, t2: dict[Any, Any]) -> dict[str, Any]:
    """Table 2 as data: per budget the three rank-1 means, the paired searched - uniform difference and
    its interval, the taus; the scale's query counts and standard error."""
    budgets = sorted({b for b, _ in t2}, reverse=True)
    groups = suite.target_query_pids()
    rows = []
    for budget in budgets:
        cells = [(seed, t2[(b, seed)]) for b, seed in sorted(t2) if b == budget]

        def mean(key: str, cells: list = cells) -> float | None:
            values = [r[key] for _, r in cells if r[key] is not None]
            return statistics.mean(values) if values else None

        diff = paired_diff(
            [r["hits"]["searched"] for _, r in cells], [r["hits"]["uniform"] for _, r in cells], groups=groups
        )
        diff_g = paired_diff(
            [r["hits"]["searched"] for _, r in cells], [r["hits"]["global"] for _, r in cells], groups=groups
        )
        rep = cells[0][1]["report"]
        rows.append(
            {
                "macs_ratio": budget,
                "seeds": [seed for seed, _ in cells],
                "achieved_macs_ratio": statistics.mean(r["report"]["best"]["macs_ratio"] for _, r in cells),
                "searched_rank1": mean("searched"),
                "uniform_rank1": mean("uniform"),
                "global_rank1": mean("global"),
                "top_trial_rank1": mean("top_trial"),
                "per_seed": [
                    {
                        "seed": seed,
                        "searched": r["searched"],
                        "uniform": r["uniform"],
                        "global": r["global"],
                        "chosen_trial": r["report"]["best"]["trial"],
                        "uniform_trial": (r["report"]["uniform"] or {}).get("trial"),
                        "global_trial": (r["report"].get("global") or {}).get("trial"),
                        "trials": len(r["report"]["trials"]),
                        "complete": sum(t["state"] == "COMPLETE" for t in r["report"]["trials"]),
                        "search_seconds": trial_seconds(r["report"]),
                        "tau": search_taus(r["report"]),
                        "rung_tau": r["rung_tau"],
                    }
                    for seed, r in cells
                ],
                "diff": diff["mean"] if diff else None,
                "diff_ci95": diff["ci95"] if diff else None,
                "diff_global": diff_g["mean"] if diff_g else None,
                "diff_global_ci95": diff_g["ci95"] if diff_g else None,
                "uniform_trial_epochs": rep["config"]["finetune_epochs"],
            }
        )
    any_hits = next((r["hits"]["uniform"] for r in t2.values() if r["hits"]["uniform"]), None)
    any_val = next(
        (f.get("val_hits") for r in t2.values() for f in r["report"].get("finalists", []) if f.get("val_hits")), None
    )
    n_q = len(any_hits) if any_hits else None
    p = statistics.mean(r["uniform"] for r in t2.values()) if t2 else None
    return {
        "scale": {
            "target_test_queries": n_q,
            "target_val_queries": len(any_val) if any_val else None,
            "rank1_standard_error": (p * (1 - p) / n_q) ** 0.5 if n_q and p is not None else None,
            "at_rank1": p,
            "n_trials": suite.s["n_trials"],
            "overrides": suite.s["overrides"] + suite.extra,
        },
        "table2": rows,
    }


def points_ci(mean: float | None, ci95: list[float] | None) -> str:
    """A difference of fractions and its 95% interval, in points: ``+1.5 [+0.0, +3.3]``."""
    if mean is None or ci95 is None:
        return "-"
    return f"{100 * mean:+.1f} [{100 * ci95[0]:+.1f}, {100 * ci95[1]:+.1f}]"


def t2_markdown(summary: dict[str, Any]) -> list[str]:
    """Table 2 with the paired difference and its interval, and the validation/test taus."""
    sc = summary["scale"]
    if not summary["table2"]:
        return ["No cell of table 2 has finished yet."]
    lines = [
        f"Target test split: {sc['target_test_queries']} queries (standard error of one model's rank-1 near "
        f"{sc['at_rank1']:.2f}: {100 * (sc['rank1_standard_error'] or 0):.1f} points); validation: "
        f"{sc['target_val_queries']} queries. *searched - uniform*: paired on the same test queries and "
        f"seeds, mean and 95% bootstrap interval over queries and seeds.",
        "",
        "| MACs budget | seeds | searched | top trial | uniform (paper) | global ranking | searched - uniform (points, 95% CI) | searched - global |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in summary["table2"]:
        lines.append(
            f"| {r['macs_ratio']:.0%} | {len(r['seeds'])} | {f(r['searched_rank1'])} | {f(r['top_trial_rank1'])} | "
            f"{f(r['uniform_rank1'])} | {f(r['global_rank1'])} | {points_ci(r['diff'], r['diff_ci95'])} | "
            f"{points_ci(r['diff_global'], r['diff_global_ci95'])} |"
        )
    lines += [
        "",
        "Per search: trials (complete), the final choice, Kendall tau between the validation objective "
        "(rank-1 / mAP / mix) and test rank-1 over its complete trials, and (*rungs*) Kendall tau on validation "
        "between the trials' objective at epoch 1, and at epoch 2, and at their last epoch, over the trials "
        "that reached both (how well an early successive-halving rung ranks):",
        "",
        "| budget | seed | searched | uniform | global | trials (complete) | chosen trial | tau rank-1 | tau mAP | tau mix "
        "| rungs: epoch 1 vs last (trials) | epoch 2 vs last (trials) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    t = lambda v: "-" if v is None else f"{v:+.2f}"  # noqa: E731
    rung = lambda g, e: "-" if not g.get(f"n{e}") else f"{t(g[f'epoch{e}'])} ({g[f'n{e}']})"  # noqa: E731
    for r in summary["table2"]:
        for p in r["per_seed"]:
            lines.append(
                f"| {r['macs_ratio']:.0%} | {p['seed']} | {f(p['searched'])} | {f(p['uniform'])} | "
                f"{f(p['global'])} | {p['trials']} ({p['complete']}) | {p['chosen_trial']} | "
                f"{t(p['tau']['rank1'])} | {t(p['tau']['mAP'])} | {t(p['tau']['mix'])} | "
                f"{rung(p['rung_tau'], 1)} | {rung(p['rung_tau'], 2)} |"
            )
    rungs = [p["rung_tau"] for r in summary["table2"] for p in r["per_seed"]]
    means = [
        f"epoch {e} vs last: mean {statistics.mean(vals):+.2f}, median {statistics.median(vals):+.2f} "
        f"({len(vals)} searches)"
        for e in (1, 2)
        if (vals := [g[f"epoch{e}"] for g in rungs if g.get(f"epoch{e}") is not None])
    ]
    if means:
        lines += ["", f"Rungs, Kendall tau on validation: {'; '.join(means)}."]
    return lines


def write_json_results(suite: Suite, t2: dict[Any, Any], command: str, full: bool) -> dict[str, Any]:
    """benchmarks/results_<tag>.json: table 2 as data, the command, this run's wall time and all runs' together."""
    path = ROOT / f"results_{suite.tag}.json"
    out = t2_summary(suite, t2)
    seconds = time.perf_counter() - suite.started
    out.update(
        command=command,
        seconds_total=seconds,
        seconds_all_runs=suite.record_wall_time(seconds),
        complete_suite=full,
        cells_computed=suite.cells_done,
        date=date.today().isoformat(),
    )
    # other benchmarks own other keys of the same file (benchmarks.recovery: table1, recovery): keep them
    kept = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**kept, **out}, indent=1))
    return out


def write_table2(suite: Suite, t2: dict[Any, Any], command: str, note: str = "") -> None:
    """results_<tag>_t2.md/.json from the table-2 cells at hand (``--table 2``, or a run the time limit cut)."""
    out = write_json_results(suite, t2, command, full=False)
    plot_t2_paired(suite, out)
    lines = [
        f"## Table 2 only, scale `{suite.tag}`",
        "",
        f"Command: `{command}`  ",
        f"Wall time of this run: {out['seconds_total']:.0f} s ({out['cells_computed']} cells computed, the rest "
        f"read from the cache; {out['seconds_all_runs']:.0f} s over every run of this scale); "
        f"{suite.s['n_trials']} trials per search.",
        *([f"\n{note}"] if note else []),
        "",
        *t2_markdown(out),
        "",
    ]
    (ROOT / f"results_{suite.tag}_t2.md").write_text("\n".join(lines))
    suite.log(f"wrote benchmarks/results_{suite.tag}_t2.md and results_{suite.tag}.json")


def table2_only(suite: Suite, budgets: list[float] | None, seeds: list[int] | None, command: str) -> int:
    """``--table 2 [--budget B] [--seed S]``: those cells only, then results_<tag>_t2.md/.json from them."""
    write_table2(suite, t2_search_vs_uniform(suite, budgets, seeds), command)
    return 0


def t1_unpruned_equal_epochs(suite: Suite) -> dict[int, float]:
    """The unpruned model fine-tuned on the target for as many epochs as the searched best gets at the end."""
    path = suite.cache / "t1_unpruned.json"
    out = {int(k): v for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}
    for seed in suite.s["seeds"]:
        if seed not in out:
            suite.time_left(f"t1 seed {seed}")
            env = suite.env([f"seed={seed}"])
            epochs = env.cfg["search"]["final_epochs"]
            out[seed] = env.unpruned(epochs=epochs).metrics["target"]["rank1"]
            path.write_text(json.dumps(out))
            suite.log(f"  t1 seed {seed}: unpruned after {epochs} target epochs, rank-1 {out[seed]:.3f}")
    return out


def t3_criteria_scenarios(suite: Suite) -> dict[tuple[str, str], float]:
    out = {}
    for scenario in suite.s["scenarios"]:
        for criterion in suite.s["criteria"]:
            r = suite.cell(
                f"t3_{criterion}_{scenario}",
                [
                    "budget.macs_ratio=0.5",
                    "search.space=uniform",
                    "search.n_trials=1",
                    "search.final_epochs=0",
                    f"trial.criterion={criterion}",
                    f"trial.scenario={scenario}",
                ],
            )
            out[(criterion, scenario)] = r["best"]["target"]["rank1"] if r["best"] else None
    return out


def t4_larger_pruned(suite: Suite) -> dict[str, Any]:
    from autoprune.models import build_model
    from autoprune.pruning.flops import count_macs

    cfg = suite.config([])
    size = tuple(cfg["model"]["input_size"])
    r18_macs = count_macs(build_model("resnet18", 2, last_stride=cfg["model"]["last_stride"]), size)[0]
    # Both get the trials' target fine-tuning and nothing more (no final epochs): trained the same way.
    r34 = suite.cell(
        "t4_r34_at_r18",
        [
            "model.arch=resnet34",
            f"budget.gmacs={r18_macs / 1e9}",
            "search.space=uniform",
            "search.n_trials=1",
            "search.final_epochs=0",
        ],
    )
    r18 = suite.cell(
        "t4_r18_unpruned_ref",
        ["budget.macs_ratio=0.99", "search.space=uniform", "search.n_trials=1", "search.final_epochs=0"],
    )
    return {
        "r34_pruned": r34["best"]["target"]["rank1"],
        "r34_macs": r34["best"]["macs"],
        "r34_unpruned": r34["baseline"]["target"]["rank1"],
        "r18": r18["baseline"]["target"]["rank1"],
        "r18_macs": r18_macs,
    }


def t5_screening(suite: Suite) -> dict[str, Any]:
    """Adaptive-BN score vs rank-1 after fine-tuning over random policies at 30% MACs."""
    import random

    from scipy.stats import kendalltau

    path = suite.cache / "t5_screening.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    if len(rows) < suite.s["random_policies"]:
        suite.time_left("t5 screening")
        env = suite.env(["budget.macs_ratio=0.3"])
        rng = random.Random(123)
        policies = [
            {p.name: rng.uniform(p.low, p.high) for p in env.space.params.values()}
            for _ in range(suite.s["random_policies"])
        ]
        while len(rows) < suite.s["random_policies"]:
            values = policies[len(rows)]  # a resumed run continues the same sequence
            suite.time_left(f"t5 policy {len(rows) + 1}")
            counts = env.counts_for(values)
            t0 = time.perf_counter()
            score = env.screen_score(counts)
            screen_s = time.perf_counter() - t0
            result = env.run(values, counts=counts)
            rows.append(
                {
                    "screen": score,
                    "val": result.metrics["target"]["val"]["rank1"],
                    "test": result.metrics["target"]["rank1"],
                    "screen_seconds": screen_s,
                    "trial_seconds": result.seconds,
                }
            )
            path.write_text(json.dumps(rows))
            suite.log(f"  t5 policy {len(rows)}: adaptive-BN {score:.3f}, after fine-tune val {rows[-1]['val']:.3f}")
    tau_val = kendalltau([r["screen"] for r in rows], [r["val"] for r in rows])
    tau_test = kendalltau([r["screen"] for r in rows], [r["test"] for r in rows])
    cost = statistics.mean(r["screen_seconds"] for r in rows) / statistics.mean(r["trial_seconds"] for r in rows)
    with_screening = []
    for seed in suite.s["seeds"]:
        plain = suite.cell(
            f"t2_search_b30_s{seed}",
            ["budget.macs_ratio=0.3", f"seed={seed}", f"search.n_trials={suite.s['n_trials']}"],
        )
        screened = suite.cell(
            f"t5_screened_b30_s{seed}",
            [
                "budget.macs_ratio=0.3",
                f"seed={seed}",
                f"search.n_trials={suite.s['n_trials']}",
                "search.screening.enabled=true",
            ],
        )
        with_screening.append(
            {
                "seed": seed,
                "plain": plain["best"]["target"]["rank1"],
                "plain_s": trial_seconds(plain),
                "screened": screened["best"]["target"]["rank1"],
                "screened_s": trial_seconds(screened),
            }
        )
    return {
        "n": len(rows),
        "searches": with_screening,
        "tau_val": tau_val.statistic,
        "p_val": tau_val.pvalue,
        "tau_test": tau_test.statistic,
        "p_test": tau_test.pvalue,
        "cost_ratio": cost,
    }


def trial_seconds(report: dict[str, Any]) -> float:
    """The search's own time, the sum of its trials' (report["seconds"] is the last run's, which a resumed
    cell makes short)."""
    return sum(t["seconds"] or 0.0 for t in report["trials"])


def t6_sampler(suite: Suite, t2: dict) -> dict[str, Any]:
    out: dict[str, list[list[float]]] = {"tpe": [], "random": []}
    for seed in suite.s["seeds"]:
        tpe = t2[(0.3, seed)]["report"]
        rnd = suite.cell(
            f"t6_random_b30_s{seed}",
            [
                "budget.macs_ratio=0.3",
                f"seed={seed}",
                "search.sampler=random",
                f"search.n_trials={suite.s['n_trials']}",
            ],
        )
        for name, report in (("tpe", tpe), ("random", rnd)):
            best, curve = float("-inf"), []
            for t in sorted(report["trials"], key=lambda t: t["number"]):
                if t["state"] == "COMPLETE":
                    best = max(best, t["target_val"]["rank1"])
                curve.append(best)
            out[name].append(curve)
    return out


def t7_latency(suite: Suite, t2: dict) -> list[dict[str, Any]]:
    """Pruned / unpruned CPU latency of seed 0's best policies; cached, since timings need a quiet machine."""
    import autoprune
    from autoprune.models import build_model

    path = suite.cache / "t7_latency.json"
    cached = {r["key"]: r for r in json.loads(path.read_text())} if path.is_file() else {}
    cfg = suite.config([])
    size = tuple(cfg["model"]["input_size"])
    # Latency does not depend on the weights: the unpruned architecture as the model was built.
    base = build_model(cfg["model"]["arch"], 2, last_stride=cfg["model"]["last_stride"]).eval()
    rows = []
    for budget in suite.s["budgets"]:
        best_report = t2[(budget, 0)]["report"]["best"]
        key = f"b{int(budget * 100)}_s0_trial{best_report['trial']}_macs{best_report['macs']}"
        if key not in cached:
            best = autoprune.load_pruned(str(suite.cache / f"t2_search_b{int(budget * 100)}_s0" / best_report["model"]))
            row = {"key": key, "budget": budget, "macs_ratio": best_report["macs_ratio"]}
            for b in (1, 32):
                row[f"ratio_b{b}"] = latency(best, size, b, 20) / latency(base, size, b, 20)
            cached[key] = row
            path.write_text(json.dumps(list(cached.values()), indent=1))
        rows.append(cached[key])
    return rows


def t8_overhead(t2: dict) -> dict[str, float]:
    shares = []
    for row in t2.values():
        for t in row["report"]["trials"]:
            if t["state"] == "COMPLETE" and t.get("train_seconds") is not None and t["seconds"]:
                shares.append((t["seconds"] - t["train_seconds"] - t["eval_seconds"]) / t["seconds"])
    return {"n": len(shares), "mean": statistics.mean(shares), "max": max(shares)}


# ---- the write-up -------------------------------------------------------------------------------------


def write_results(suite: Suite, t1, t2, t3, t4, t5, t6, t7, t8, command: str) -> Path:
    s = suite.s
    lines = [
        f"## Scale `{suite.tag}`",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, CPU only. Date: {date.today().isoformat()}. Seeds: {s['seeds']}.  ",
        f"Setup: demo preset (ResNet-18, synthetic source A -> target B) with {' '.join(s['overrides'] + suite.extra)}; "
        f"searches run {s['n_trials']} Optuna trials (TPE, groupwise space; trial 0 is the uniform policy); "
        f"trials are selected on held-out target identities (validation) and every figure below is target "
        f"*test* rank-1.",
        "",
    ]
    lines += [
        "### 1. Headline: 50% MACs, searched policy vs unpruned",
        "",
        f"Both get the same target fine-tuning: the searched best is retrained from the pruned source model "
        f"for `search.final_epochs` = {suite.config([])['search']['final_epochs']} epochs, the unpruned model "
        f"for as many. Goal: within 1 point.",
        "",
        "| seed | unpruned rank-1 | searched rank-1 | gap (points) | uniform rank-1 | gap (points) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for seed in s["seeds"]:
        r, u = t2[(0.5, seed)], t1[seed]
        lines.append(
            f"| {seed} | {u:.3f} | {r['searched']:.3f} | {100 * (r['searched'] - u):+.1f} | "
            f"{r['uniform']:.3f} | {100 * (r['uniform'] - u):+.1f} |"
        )
    gaps = [100 * (t2[(0.5, seed)]["searched"] - t1[seed]) for seed in s["seeds"]]
    lines.append(
        f"| mean | {statistics.mean(t1[x] for x in s['seeds']):.3f} | "
        f"{statistics.mean(t2[(0.5, x)]['searched'] for x in s['seeds']):.3f} | {statistics.mean(gaps):+.1f} | "
        f"{statistics.mean(t2[(0.5, x)]['uniform'] for x in s['seeds']):.3f} | "
        f"{statistics.mean(100 * (t2[(0.5, x)]['uniform'] - t1[x]) for x in s['seeds']):+.1f} |"
    )
    lines += [
        "",
        "### 2. Search vs hand-picked (uniform) vs global ranking",
        "",
        "Mean ± standard deviation over the seeds of target test rank-1; every policy gets the same final "
        "fine-tune. *searched*: autoprune's result (the final round picks, on validation, among the top "
        "trials and the uniform policy); *top trial*: the search's best trial on validation, had it been "
        "taken as is.",
        "",
        "| MACs budget | searched | top trial | uniform (paper) | global ranking | searched - uniform (points) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for budget in s["budgets"]:
        rows = [t2[(budget, seed)] for seed in s["seeds"]]
        diff = [100 * (r["searched"] - r["uniform"]) for r in rows]
        lines.append(
            f"| {budget:.0%} | {mean_sd([r['searched'] for r in rows])} | {mean_sd([r['top_trial'] for r in rows])} | "
            f"{mean_sd([r['uniform'] for r in rows])} | "
            f"{mean_sd([r['global'] for r in rows])} | {statistics.mean(diff):+.1f} (per seed: "
            f"{', '.join(f'{d:+.1f}' for d in diff)}) |"
        )
    lines += [
        "",
        *t2_markdown(t2_summary(suite, t2)),
        "",
        f"![search vs uniform](plots/t2_{suite.tag}.png)",
        "",
        "### 3. Criteria x scenarios at 50% MACs (uniform policy, seed 0)",
        "",
        "| criterion | " + " | ".join(s["scenarios"]) + " |",
        "| --- |" + " --- |" * len(s["scenarios"]),
    ]
    for c in s["criteria"]:
        lines.append(
            f"| {c} | "
            + " | ".join(f"{t3[(c, sc)]:.3f}" if t3[(c, sc)] is not None else "-" for sc in s["scenarios"])
            + " |"
        )
    lines += [
        "",
        "### 4. Larger pruned vs smaller trained",
        "",
        f"ResNet-34 pruned (uniform) to ResNet-18's {t4['r18_macs'] / 1e6:.1f} MMACs: rank-1 {t4['r34_pruned']:.3f} "
        f"({t4['r34_macs'] / 1e6:.1f} MMACs); ResNet-18 trained the same way: {t4['r18']:.3f}; unpruned ResNet-34: "
        f"{t4['r34_unpruned']:.3f}.",
        "",
        "### 5. Adaptive-BN screening",
        "",
        f"{t5['n']} random policies at 30% MACs: Kendall tau between the adaptive-BN score and rank-1 after "
        f"fine-tuning = {t5['tau_val']:.2f} (validation, p={t5['p_val']:.3f}), {t5['tau_test']:.2f} (test, "
        f"p={t5['p_test']:.3f}); screening costs {t5['cost_ratio']:.1%} of one trial.",
        "",
        f"Search with and without screening ({s['n_trials']} trials at 30% MACs; test rank-1 of the best, "
        f"after the final fine-tune; search time = the sum of its trials' times):",
        "",
        "| seed | without: rank-1 | without: search s | with: rank-1 | with: search s |",
        "| --- | --- | --- | --- | --- |",
        *[
            f"| {r['seed']} | {r['plain']:.3f} | {r['plain_s']:.0f} | {r['screened']:.3f} | {r['screened_s']:.0f} |"
            for r in t5["searches"]
        ],
        "",
        "### 6. Sample efficiency at 30% MACs (best validation rank-1 after N trials, mean of seeds)",
        "",
        "| N | " + " | ".join(str(i + 1) for i in range(s["n_trials"])) + " |",
        "| --- |" + " --- |" * s["n_trials"],
    ]
    for name in ("tpe", "random"):
        curves = t6[name]
        means = [statistics.mean(c[i] for c in curves) for i in range(min(len(c) for c in curves))]
        lines.append(f"| {name} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    lines += [
        "",
        "### 7. CPU latency vs MACs (best policy of seed 0; pruned / unpruned)",
        "",
        "| budget | MACs ratio | latency ratio, batch 1 | latency ratio, batch 32 |",
        "| --- | --- | --- | --- |",
    ]
    for r in t7:
        lines.append(f"| {r['budget']:.0%} | {r['macs_ratio']:.3f} | {r['ratio_b1']:.3f} | {r['ratio_b32']:.3f} |")
    lines += [
        "",
        f"![sample efficiency and latency](plots/t6_t7_{suite.tag}.png)",
        "",
        "### 8. Framework overhead per trial",
        "",
        f"Time outside training and evaluation (projection, surgery, MACs counting, storage, saving): "
        f"{t8['mean']:.1%} of trial time on average, {t8['max']:.1%} at most, over {t8['n']} trials.",
        "",
    ]
    return "\n".join(lines)


def save_plot(fig: Any, name: str) -> None:
    """``fig`` laid out and written to benchmarks/plots/``name``, then closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    (ROOT / "plots").mkdir(exist_ok=True)
    fig.savefig(ROOT / "plots" / name, dpi=110)
    plt.close(fig)


def plot_t2(suite: Suite, t1: dict, t2: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (
        ("searched", "searched (groupwise TPE + final round)"),
        ("top_trial", "top trial, no final round"),
        ("uniform", "uniform (paper)"),
        ("global", "global ranking"),
    ):
        xs, ys, es = [], [], []
        for budget in suite.s["budgets"]:
            vals = [t2[(budget, s)][key] for s in suite.s["seeds"] if t2[(budget, s)][key] is not None]
            xs.append(budget)
            ys.append(statistics.mean(vals))
            es.append(statistics.stdev(vals) if len(vals) > 1 else 0)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label)
    ax.axhline(statistics.mean(t1[s] for s in suite.s["seeds"]), ls="--", c="gray", label="unpruned (same epochs)")
    ax.set_xlabel("MACs budget (fraction of unpruned)")
    ax.set_ylabel("target test rank-1")
    ax.legend(fontsize=8)
    save_plot(fig, f"t2_{suite.tag}.png")


def plot_t2_paired(suite: Suite, summary: dict[str, Any]) -> None:
    """plots/t2_<tag>_paired.png: per budget, the three policies' rank-1 (mean and each seed) and searched -
    uniform with its paired 95% interval, from the table-2 cells at hand."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["table2"] if r["diff"] is not None]
    if not rows:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for k, (key, label) in enumerate((("searched", "searched"), ("uniform", "uniform (paper)"), ("global", "global"))):
        xs = [r["macs_ratio"] + (k - 1) * 0.01 for r in rows]
        a.plot(xs, [r[f"{key}_rank1"] for r in rows], marker="o", label=f"{label}, mean of seeds")
        for x, r in zip(xs, rows):
            a.scatter([x] * len(r["per_seed"]), [c[key] for c in r["per_seed"]], s=10, c=f"C{k}", alpha=0.5)
    a.set_xlabel("MACs budget (fraction of unpruned)")
    a.set_ylabel("target test rank-1")
    a.legend(fontsize=8)
    ys = [100 * r["diff"] for r in rows]
    lo = [y - 100 * r["diff_ci95"][0] for y, r in zip(ys, rows)]
    hi = [100 * r["diff_ci95"][1] - y for y, r in zip(ys, rows)]
    b.errorbar([r["macs_ratio"] for r in rows], ys, yerr=[lo, hi], marker="o", capsize=4, ls="none")
    for r, y in zip(rows, ys):
        b.annotate(f"{len(r['seeds'])} seed(s)", (r["macs_ratio"], y), textcoords="offset points", xytext=(6, 4))
    b.axhline(0, c="gray", lw=1)
    b.axhline(2, c="gray", ls="--", lw=1, label="goal: +2 points")
    b.set_xlabel("MACs budget (fraction of unpruned)")
    b.set_ylabel("searched - uniform, points (paired 95% CI)")
    b.legend(fontsize=8)
    save_plot(fig, f"t2_{suite.tag}_paired.png")


def plot_t6_t7(suite: Suite, t6: dict, t7: list[dict[str, Any]]) -> None:
    """Sample efficiency (best validation rank-1 after N trials) and latency vs MACs, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("tpe", "random"):
        curves = t6[name]
        n = min(len(c) for c in curves)
        a.plot(range(1, n + 1), [statistics.mean(c[i] for c in curves) for i in range(n)], marker="o", label=name)
    a.set_xlabel("trials")
    a.set_ylabel("best validation rank-1 so far (mean of seeds)")
    a.set_title("sample efficiency, 30% MACs")
    a.legend()
    xs = [r["macs_ratio"] for r in t7]
    for key, label in (("ratio_b1", "batch 1"), ("ratio_b32", "batch 32")):
        b.plot(xs, [r[key] for r in t7], marker="o", label=label)
    b.plot([0, 1], [0, 1], ls="--", c="gray", label="latency = MACs")
    b.set_xlabel("MACs ratio (pruned / unpruned)")
    b.set_ylabel("CPU latency ratio")
    b.set_title("latency vs MACs, best policies")
    b.legend()
    save_plot(fig, f"t6_t7_{suite.tag}.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--quick", action="store_true")
    group.add_argument("--full", action="store_true")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra config overrides")
    parser.add_argument("--table", type=int, choices=[2], help="run only this table (its cells resume from the cache)")
    parser.add_argument("--budget", type=float, action="append", help="with --table 2: only this MACs budget")
    parser.add_argument("--seed", type=int, action="append", help="with --table 2: only this seed")
    # A reduced run: these change no cell's identity, so the full run later continues the same cells.
    parser.add_argument("--trials", type=int, help="trials per search (default: the scale's)")
    parser.add_argument("--final-epochs", type=int, help="final-round epochs (default: the scale's)")
    parser.add_argument("--finalists", type=int, help="most top trials in the final round (default: the scale's)")
    parser.add_argument("--threads", type=int, help="CPU threads per process (train.threads)")
    parser.add_argument(
        "--hours",
        type=float,
        help="start no cell and no trial after this many hours (default: the scale's, so that `make bench` ends "
        "within 2 hours and `make bench-quick` within 20 minutes); rerun to continue; 0: no limit",
    )
    parser.add_argument(
        "--cached-only",
        action="store_true",
        help="with --table 2: tables from the finished cells only (e.g. while other processes run)",
    )
    args = parser.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    suite = Suite("quick" if args.quick else "full", args.extra)
    if args.trials:
        suite.s = {**suite.s, "n_trials": args.trials}
    for flag, key in (
        (args.final_epochs, "search.final_epochs"),
        (args.finalists, "search.finalists"),
        (args.threads, "train.threads"),
    ):
        if flag is not None:
            suite.s = {**suite.s, "overrides": [*suite.s["overrides"], f"{key}={flag}"]}
    suite.cached_only = args.cached_only
    hours = suite.s["hours"] if args.hours is None else args.hours
    if hours > 0 and not args.cached_only:
        suite.deadline = suite.started + hours * 3600
    if args.table == 2:
        return table2_only(
            suite, args.budget, args.seed, command=" ".join(["python -m benchmarks.suite", *(argv or sys.argv[1:])])
        )
    command = "make bench-quick" if args.quick else "make bench"
    t2 = t2_search_vs_uniform(suite)
    try:
        return all_tables(suite, t2, command)
    except OutOfTime as exc:
        note = (
            f"**Not finished**: the time limit ({hours:g} h) stopped the suite at {exc}; `{command}` again "
            f"continues where it stopped. Table 2 below has the cells finished so far."
        )
        write_table2(suite, t2, command, note)
        suite.log(f"time limit reached at {exc}: run `{command}` again to continue (the cells resume)")
        return 0


def all_tables(suite: Suite, t2: dict[Any, Any], command: str) -> int:
    """Tables 1 and 3-8 (table 2 at hand), their plots, results_<tag>.md and .json."""
    if len(t2) < len(suite.s["budgets"]) * len(suite.s["seeds"]):
        raise OutOfTime("table 2")  # a cell of it was left out by the time limit
    t1 = t1_unpruned_equal_epochs(suite)
    plot_t2(suite, t1, t2)
    t3 = t3_criteria_scenarios(suite)
    t4 = t4_larger_pruned(suite)
    t5 = t5_screening(suite)
    t6 = t6_sampler(suite, t2)
    t7 = t7_latency(suite, t2)
    t8 = t8_overhead(t2)
    plot_t6_t7(suite, t6, t7)
    section = write_results(suite, t1, t2, t3, t4, t5, t6, t7, t8, command)
    (ROOT / f"results_{suite.tag}.md").write_text(section)
    write_json_results(suite, t2, command, full=True)
    suite.log(f"wrote benchmarks/results_{suite.tag}.md; {suite.cells_done} cells computed this time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
