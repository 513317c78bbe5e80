"""Trial records: the backend-neutral shape of one trial in report.json and trials.csv."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TrialRecord:
    number: int
    state: str                         # COMPLETE | PRUNED | FAIL | RUNNING
    policy: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    macs: int | None = None
    params: int | None = None
    macs_ratio: float | None = None
    latency_ms: float | None = None    # under a latency budget: the table's predicted ms per image of ``counts``
    target: dict[str, float] | None = None        # target test split
    target_val: dict[str, float] | None = None    # target validation split (the search objective)
    source: dict[str, float] | None = None
    seconds: float | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    error: str | None = None
    model: str | None = None          # run-directory-relative path of the trial's model, if kept
    values: dict[str, float] = field(default_factory=dict)  # the sampled search-space values
    worker: dict[str, Any] | None = None  # Ray backend: where it ran (host, node_id, pid) and its retries
    hits: str | None = None           # test split: rank-1 hit per query, "0"/"1" in query order (paired tests)
    val_hits: str | None = None       # the same on the validation split

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialRecord:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


    @property
    def objective(self) -> float | None:
        return objective(self.target_val, self.target)


OBJECTIVES = ("rank1", "mAP", "mix")


def score(metrics: dict[str, float], kind: str = "rank1") -> float:
    """One split's objective value: rank-1, mAP, or their mean (``mix``; ``search.objective``)."""
    if kind == "mAP":
        return float(metrics["mAP"])
    if kind == "mix":
        return (float(metrics["rank1"]) + float(metrics["mAP"])) / 2
    return float(metrics["rank1"])


def objective(target_val: dict[str, float] | None, target: dict[str, float] | None,
              kind: str = "rank1") -> float | None:
    """What selects trials: the validation split's ``kind`` score if measured, else the test split's."""
    split = target_val or target
    return score(split, kind) if split else None


def selection_key(target_val: dict[str, float] | None, target: dict[str, float], number: int,
                  kind: str = "rank1") -> tuple:
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
    return {"policy": result.policy, "counts": result.counts, "macs": result.macs, "params": result.params,
            "macs_ratio": result.macs_ratio, "target": metrics_summary(target),
            "target_val": metrics_summary(target.get("val")),
            "source": metrics_summary(result.metrics.get("source")), "seconds": result.seconds,
            "train_seconds": result.train_seconds, "eval_seconds": result.eval_seconds,
            "model": model_path, "error": None, "hits": hits_string(target),
            "val_hits": hits_string(target.get("val"))}
