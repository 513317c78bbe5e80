"""The figures written after a search: which ones, and the numbers they draw."""

from __future__ import annotations

from autoprune.search.records import TrialRecord
from autoprune.search.report import comparison_rows, progress_series, write_plots


def _record(number, state, val=None, test=None, macs_ratio=0.5):
    m = (lambda r: {"rank1": r, "mAP": r / 2}) if val is not None else (lambda r: None)
    return TrialRecord(
        number=number,
        state=state,
        policy={"layer1.out": 0.5},
        counts={"layer1.out": 32},
        macs_ratio=macs_ratio if state == "COMPLETE" else None,
        macs=100,
        target=m(test) if test is not None else None,
        target_val=m(val),
    )


RECORDS = [
    _record(0, "COMPLETE", 0.40, 0.30),
    _record(1, "PRUNED"),
    _record(2, "COMPLETE", 0.55, 0.35),
    _record(3, "FAIL"),
    _record(4, "COMPLETE", 0.50, 0.45),
]
REPORT = {
    "budget": {"macs_ratio": 0.5},
    "config": {"finetune_epochs": 2},
    "baseline": {"target": {"rank1": 0.6}, "target_val": {"rank1": 0.7}},
    "uniform": {"trial": 0, "policy": {"layer1.out": 0.5}, "target": {"rank1": 0.30}, "target_val": {"rank1": 0.40}},
    "finalists": [
        {"trial": 2, "target": {"rank1": 0.38}, "target_val": {"rank1": 0.58}, "chosen": True},
        {"trial": 4, "target": {"rank1": 0.50}, "target_val": {"rank1": 0.52}, "chosen": False},
        {"trial": 0, "target": {"rank1": 0.33}, "target_val": {"rank1": 0.45}, "chosen": False},
    ],
    "best": {
        "trial": 2,
        "policy": {"layer1.out": 0.5},
        "target": {"rank1": 0.38},
        "target_val": {"rank1": 0.58},
        "final_epochs": 8,
    },
}


def test_progress_is_validation_rank1_in_trial_order_with_stopped_trials():
    s = progress_series(RECORDS)
    assert s["number"] == [0, 2, 4]
    assert s["rank1"] == [0.40, 0.55, 0.50]  # validation, not the test split
    assert s["best"] == [0.40, 0.55, 0.55]
    assert s["pruned"] == [1] and s["failed"] == [3]


def test_comparison_labels_validation_and_test_after_their_fine_tuning():
    assert comparison_rows(REPORT) == [
        ("unpruned", 0.7, 0.6),
        ("uniform (#0)", 0.45, 0.33),  # its final round
        ("chosen (#2)", 0.58, 0.38),
    ]


def test_single_budget_plots_and_pareto_adds_the_front(tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    assert write_plots(single, REPORT, RECORDS) == ["progress.png", "finalists.png", "comparison.png", "policy.png"]
    assert sorted(p.name for p in single.iterdir()) == sorted(
        ["progress.png", "finalists.png", "comparison.png", "policy.png"]
    )
    pareto = tmp_path / "pareto"
    pareto.mkdir()
    no_final = {**REPORT, "finalists": None, "pareto_front": [2, 4]}
    assert write_plots(pareto, no_final, RECORDS) == [
        "progress.png",
        "comparison.png",
        "policy.png",
        "rank1_vs_macs.png",
    ]
    assert write_plots(tmp_path, REPORT, [_record(0, "FAIL")]) == []
