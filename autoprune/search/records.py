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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrialRecord":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


    @property
    def objective(self) -> float | None:
        return objective(self.target_val, self.target)


def objective(target_val: dict[str, float] | None, target: dict[str, float] | None) -> float | None:
    """What selects trials: validation rank-1 if measured, else test rank-1."""
    if target_val:
        return target_val["rank1"]
    return target["rank1"] if target else None


def selection_key(target_val: dict[str, float] | None, target: dict[str, float], number: int) -> tuple:
    """Order of trials and finalists, best last: the objective, then mAP of the same split, then the
    earlier trial. Ties are broken on the split that selects, never on the test split it reports."""
    split = target_val or target
    return objective(target_val, target), split.get("mAP", 0.0), -number


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
            "model": model_path, "error": None}
