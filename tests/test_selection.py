"""How trials are judged: when the pruners may stop them, and the order trials are selected in."""

from __future__ import annotations

import optuna
import pytest

from autoprune.search.optuna_backend import make_pruner


def test_ties_on_validation_rank1_are_broken_on_validation_map_not_the_test_split() -> None:
    from autoprune.search.records import TrialRecord, ranked

    def record(number: int, val_map: float, test_map: float) -> TrialRecord:
        return TrialRecord(
            number,
            "COMPLETE",
            macs_ratio=0.5,
            target={"rank1": 0.3, "mAP": test_map},
            target_val={"rank1": 0.6, "mAP": val_map},
        )

    order = ranked([record(0, val_map=0.50, test_map=0.40), record(1, val_map=0.55, test_map=0.30)], 0.5)
    assert [r.number for r in order] == [1, 0]


def test_successive_halving_keeps_only_the_best_half_at_each_rung() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        pruner=make_pruner("successive_halving", multi=False, max_epochs=4, reduction_factor=2, min_resource=1),
    )
    first = study.ask()
    for step in (1, 2, 3, 4):
        first.report(0.5, step)
        assert not first.should_prune()  # the first trial at a rung has nothing to lose to
    study.tell(first, 0.5)
    worse = study.ask()
    worse.report(0.3, 1)
    assert worse.should_prune()  # epoch 1 (rung 0): not in the best half of {0.5, 0.3}
    study.tell(worse, state=optuna.trial.TrialState.PRUNED)
    better = study.ask()
    better.report(0.7, 1)
    assert not better.should_prune()


@pytest.mark.parametrize("pruner", ["successive_halving", "median"])
def test_no_pruner_stops_a_trial_before_min_resource(pruner: str) -> None:
    """search.min_resource (default 2): epoch 1 ranks policies almost at random, so the first rung is later."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=make_pruner(pruner, multi=False, max_epochs=4))
    for _ in range(3):  # good at every epoch (the median rule's startup trials; every rung's first entries)
        t = study.ask()
        for step in (1, 2, 3, 4):
            t.report(0.8, step)
            t.should_prune()  # successive halving records a trial's rung values when it asks, as trials do
        study.tell(t, 0.8)
    poor = study.ask()
    poor.report(0.1, 1)
    assert not poor.should_prune()  # epoch 1: before the first rung
    poor.report(0.1, 2)
    assert poor.should_prune()  # epoch 2: the worst of four at the first rung


def test_final_round_takes_the_trials_within_the_noise_of_the_best() -> None:
    from autoprune.search.records import TrialRecord, finalists_by_noise

    hits = "1" * 50 + "0" * 50  # 100 validation queries, best at 0.5: standard error 0.05

    def record(number: int, val: float) -> TrialRecord:
        return TrialRecord(
            number,
            "COMPLETE",
            macs_ratio=0.5,
            target={"rank1": 0.3, "mAP": 0.3},
            target_val={"rank1": val, "mAP": 0.2},
            val_hits=hits,
        )

    ranked = [record(0, 0.50), record(1, 0.46), record(2, 0.41), record(3, 0.30)]
    assert [r.number for r in finalists_by_noise(ranked, 4, se_mult=2)] == [0, 1, 2]  # within 0.10 of 0.50
    assert [r.number for r in finalists_by_noise(ranked, 4, se_mult=1)] == [0, 1]
    assert [r.number for r in finalists_by_noise(ranked, 2, se_mult=2)] == [0, 1]  # never more than asked
    assert [r.number for r in finalists_by_noise(ranked, 3, se_mult=0)] == [0, 1, 2]  # off: the top N


def test_objective_kinds_rank_trials_by_their_own_score() -> None:
    from autoprune.search.records import TrialRecord, ranked

    a = TrialRecord(
        0, "COMPLETE", macs_ratio=0.5, target={"rank1": 0.3, "mAP": 0.3}, target_val={"rank1": 0.60, "mAP": 0.30}
    )
    b = TrialRecord(
        1, "COMPLETE", macs_ratio=0.5, target={"rank1": 0.3, "mAP": 0.3}, target_val={"rank1": 0.55, "mAP": 0.40}
    )
    assert [r.number for r in ranked([a, b], 0.5, "rank1")] == [0, 1]
    assert [r.number for r in ranked([a, b], 0.5, "mAP")] == [1, 0]
    assert [r.number for r in ranked([a, b], 0.5, "mix")] == [1, 0]  # 0.475 vs 0.45


def test_both_backends_build_records_one_way() -> None:
    """records.record_of: the stored record, then the backend's fields, then its number, state and values."""
    from autoprune.search.records import record_of

    stored = {"number": 99, "state": "X", "values": {"a": 0.1}, "macs": 10, "error": "stored", "unknown": 1}
    r = record_of(3, "FAIL", {"g1": 0.5}, stored, error="the backend's", seconds=2.0)
    assert (r.number, r.state, r.values, r.macs, r.error, r.seconds) == (
        3,
        "FAIL",
        {"g1": 0.5},
        10,
        "the backend's",
        2.0,
    )
    assert record_of(4, "RUNNING", {}).to_json()["macs"] is None


def test_trial_lines_log_the_objective_the_search_selects_on() -> None:
    from autoprune.search.records import TrialRecord
    from autoprune.search.run import _TrialLines

    lines: list[str] = []
    log = _TrialLines(lines.append, "mAP")
    for number, val in ((0, {"rank1": 0.9, "mAP": 0.2}), (1, {"rank1": 0.1, "mAP": 0.3})):
        log(TrialRecord(number, "COMPLETE", {"g": 0.5}, {"g": 8}, 100, 10, 0.5, target=val, target_val=val))

    # the best so far is the best validation mAP (trial 1), not the best rank-1 (trial 0)
    assert "val rank-1 0.900 mAP 0.200" in lines[0] and lines[0].endswith("best mAP 0.200")
    assert "val rank-1 0.100 mAP 0.300" in lines[1] and lines[1].endswith("best mAP 0.300")


@pytest.mark.parametrize(
    "pruner, min_resource, same_study",
    [("median", 2, True), ("successive_halving", 1, True), ("successive_halving", 2, False), ("none", 5, True)],
)
def test_studies_from_before_min_resource_keep_their_identity(pruner: str, min_resource: int, same_study: bool) -> None:
    """A run directory resumes where the key changes nothing the pruner did before it existed, and only there."""
    import copy

    from autoprune.config import load_config
    from autoprune.search.run import study_identity

    cfg = load_config(preset="smoke", overrides=[f"search.pruner={pruner}", f"search.min_resource={min_resource}"])
    before = copy.deepcopy(cfg)
    del before["search"]["min_resource"]
    assert (study_identity(cfg) == study_identity(before)) is same_study


class ScriptedEnv:
    """What OptunaBackend needs of a SearchEnv, with trials that report a scripted validation score per epoch."""

    def __init__(self, cfg: dict, scripts: list[list[float]]) -> None:
        from autoprune.config import SearchSettings, TrialSettings
        from autoprune.search.space import Param, SearchSpace

        self.cfg, self.scripts = cfg, iter(scripts)
        self.search = SearchSettings.from_config(cfg)
        self.trial = TrialSettings.from_config(cfg)
        self.device = None
        self.space = SearchSpace("scripted", "group", {"g": Param("g", 0.1, 1.0, None, ["g"])})

    def run(self, values: dict, report=None, screen=None):
        from autoprune.search.trial import TrialResult

        scores = next(self.scripts)
        for step, score in enumerate(scores, 1):
            report(step, score)
        metrics = {"target": {"rank1": 0.0, "mAP": 0.0, "val": {"rank1": scores[-1], "mAP": scores[-1]}}}
        return TrialResult(counts={}, policy=dict(values), macs=1, params=1, macs_ratio=0.5, metrics=metrics, seconds=0)


# (The median rule compares a trial's best epoch so far, so a trial good until its last epoch never risked it.)
@pytest.mark.parametrize("pruner", ["successive_halving", "hyperband"])
def test_no_pruner_stops_a_trial_at_its_last_epoch(pruner: str, tmp_path) -> None:
    """A rung at the last epoch would throw away a trial whose training is already paid for (2-5 of the
    trials of every table-2 search were stopped there): it completes, and the ranking decides."""
    from autoprune.config import load_config
    from autoprune.search.optuna_backend import OptunaBackend

    cfg = load_config(
        preset="smoke",
        overrides=[
            "search.sampler=random",
            f"search.pruner={pruner}",
            "search.min_resource=1",
            "search.reduction_factor=2",
            "trial.finetune_epochs=4",
            "search.n_trials=6",
        ],
    )
    flat = [[0.5] * 4, [0.9] * 4, [0.8] * 4, [0.7] * 4]
    fades = [0.95, 0.95, 0.95, 0.1]  # the best of every rung until its last epoch, then the worst
    backend = OptunaBackend(ScriptedEnv(cfg, [*flat, fades, [0.05] * 4]), tmp_path)
    backend.run(6)
    states = [t.state.name for t in backend.study.get_trials(deepcopy=False)]
    assert states[4] == "COMPLETE"
    if pruner != "hyperband":  # Hyperband puts trials in brackets by a hash: the last one may be alone in its own
        assert states[5] == "PRUNED"  # the worst at every epoch is still stopped early
