"""Trial records and their ranking: the backend-neutral shape of one trial in report.json and trials.csv
(both backends build theirs with :func:`record_of`), and the order that selects the reported one."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TrialRecord:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING
    policy: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    macs: int | None = None
    params: int | None = None
    macs_ratio: float | None = None
    latency_ms: float | None = None  # under a latency budget: the table's predicted ms per image of ``counts``
    target: dict[str, float] | None = None  # target test split
    target_val: dict[str, float] | None = None  # target validation split (the search objective)
    source: dict[str, float] | None = None
    seconds: float | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    error: str | None = None
    model: str | None = None  # run-directory-relative path of the trial's model, if kept
    values: dict[str, float] = field(default_factory=dict)  # the sampled search-space values
    worker: dict[str, Any] | None = None  # Ray backend: where it ran (host, node_id, pid) and its retries
    hits: str | None = None  # test split: rank-1 hit per query, "0"/"1" in query order (paired tests)
    val_hits: str | None = None  # the same on the validation split

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialRecord:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def objective(self) -> float | None:
        return objective(self.target_val, self.target)


def score(metrics: dict[str, float], kind: str = "rank1") -> float:
    """One split's objective value: rank-1, mAP, or their mean (``mix``; ``search.objective``)."""
    if kind == "mAP":
        return float(metrics["mAP"])
    if kind == "mix":
        return (float(metrics["rank1"]) + float(metrics["mAP"])) / 2
    return float(metrics["rank1"])


def objective(
    target_val: dict[str, float] | None, target: dict[str, float] | None, kind: str = "rank1"
) -> float | None:
    """What selects trials: the validation split's ``kind`` score if measured, else the test split's."""
    split = target_val or target
    return score(split, kind) if split else None


def selection_key(
    target_val: dict[str, float] | None, target: dict[str, float], number: int, kind: str = "rank1"
) -> tuple:
    """Order of trials and finalists, best last: the objective, then mAP of the same split, then the
    earlier trial. Ties are broken on the split that selects, never on the test split it reports."""
    split = target_val or target
    return objective(target_val, target, kind), split.get("mAP", 0.0), -number


def hits_string(metrics: dict[str, Any] | None) -> str | None:
    """Per-query rank-1 hits of an evaluation (``evaluate_domain``'s ``hits``) as a "0"/"1" string."""
    if not metrics or metrics.get("hits") is None:
        return None
    return "".join("1" if h else "0" for h in metrics["hits"])


def metrics_summary(metrics: dict[str, Any] | None) -> dict[str, float] | None:
    if not metrics:
        return None
    return {k: float(metrics[k]) for k in ("rank1", "rank5", "rank10", "mAP") if k in metrics}


def result_record(result: Any, model_path: str | None) -> dict[str, Any]:
    """The record of a finished trial (a ``TrialResult``), as every backend stores it."""
    target = result.metrics.get("target") or {}
    return {
        "policy": result.policy,
        "counts": result.counts,
        "macs": result.macs,
        "params": result.params,
        "macs_ratio": result.macs_ratio,
        "target": metrics_summary(target),
        "target_val": metrics_summary(target.get("val")),
        "source": metrics_summary(result.metrics.get("source")),
        "seconds": result.seconds,
        "train_seconds": result.train_seconds,
        "eval_seconds": result.eval_seconds,
        "model": model_path,
        "error": None,
        "hits": hits_string(target),
        "val_hits": hits_string(target.get("val")),
    }


def record_of(
    number: int, state: str, values: dict[str, Any], stored: dict[str, Any] | None = None, **fields: Any
) -> TrialRecord:
    """One trial's record, whichever backend ran it: what the trial stored (:func:`result_record`, or only its
    error), then ``fields``, then the backend's number, state and sampled search-space values."""
    return TrialRecord.from_json({**(stored or {}), **fields, "number": number, "state": state, "values": dict(values)})


def ranked(records: list[TrialRecord], budget_ratio: float, kind: str = "rank1") -> list[TrialRecord]:
    """Complete trials within the budget, best first (``selection_key``: the test split only reports)."""
    done = [
        r
        for r in records
        if r.state == "COMPLETE" and r.target and r.macs_ratio is not None and r.macs_ratio <= budget_ratio + 1e-9
    ]
    return sorted(done, key=lambda r: selection_key(r.target_val, r.target or {}, r.number, kind), reverse=True)


def finalists_by_noise(ranked: list[TrialRecord], most: int, se_mult: float, kind: str = "rank1") -> list[TrialRecord]:
    """The top trials for the final round: at most ``most``, and with ``se_mult`` > 0 only those whose
    validation objective is within ``se_mult`` standard errors of the best's.

    The standard error is sqrt(p(1-p)/n) at the best's score p over the n validation queries (exact for
    rank-1, an upper bound for any per-query score in [0, 1] such as AP): trials further behind than the
    noise are not worth a final fine-tune, trials within it cannot be told apart without one.
    """
    top = ranked[:most]
    if se_mult <= 0 or not top or not top[0].val_hits:
        return top
    best = objective(top[0].target_val, top[0].target, kind) or 0.0
    se = math.sqrt(max(best * (1 - best), 1e-12) / len(top[0].val_hits))
    return [r for r in top if (objective(r.target_val, r.target, kind) or 0.0) >= best - se_mult * se]


def same_values(r: TrialRecord, values: dict[str, float] | None) -> bool:
    """Whether trial ``r`` sampled ``values`` (the MACs target of Pareto mode aside)."""
    mine = {k: v for k, v in r.values.items() if k != "macs_ratio"}
    return values is not None and mine.keys() == values.keys() and all(abs(mine[k] - values[k]) < 1e-6 for k in mine)
