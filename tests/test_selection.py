"""How trials are judged: the median pruner's warm-up, and the order trials are selected in."""

from __future__ import annotations

import optuna

from autoprune.search.optuna_backend import make_pruner


def test_median_pruner_never_stops_a_trial_after_its_first_epoch() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", multi=False))
    for _ in range(3):  # startup trials, good at every epoch (steps count epochs from 1, as trials report them)
        t = study.ask()
        for step in (1, 2, 3):
            t.report(0.8, step)
        study.tell(t, 0.8)
    poor = study.ask()
    poor.report(0.1, 1)
    assert not poor.should_prune()   # epoch 1: the pruned network has barely started to recover
    poor.report(0.1, 2)
    assert poor.should_prune()       # epoch 2 on: the median rule applies


def test_ties_on_validation_rank1_are_broken_on_validation_map_not_the_test_split() -> None:
    from autoprune.search.records import TrialRecord
    from autoprune.search.run import _ranked

    def record(number: int, val_map: float, test_map: float) -> TrialRecord:
        return TrialRecord(number, "COMPLETE", macs_ratio=0.5, target={"rank1": 0.3, "mAP": test_map},
                           target_val={"rank1": 0.6, "mAP": val_map})

    ranked = _ranked([record(0, val_map=0.50, test_map=0.40), record(1, val_map=0.55, test_map=0.30)], 0.5)
    assert [r.number for r in ranked] == [1, 0]
