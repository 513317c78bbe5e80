"""The median pruner's warm-up: one epoch after pruning says too little to stop a trial."""

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
