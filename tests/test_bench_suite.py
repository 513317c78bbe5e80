"""The benchmark suite (`make bench`) end to end at a toy scale: every table is written, a rerun reads
every cell back, and a changed config is never served from a stale cell."""

from __future__ import annotations

import json

import pytest

from benchmarks import suite

pytestmark = pytest.mark.slow

TOY = {
    "overrides": [
        "model.input_size=[64, 32]",
        "train.epochs=1",
        "train.max_batches_per_epoch=2",
        "trial.finetune_epochs=1",
        "search.final_epochs=1",
        "trial.criterion_batches=1",
        "data.synth.num_train_ids=24",
        "data.synth.num_test_ids=12",
        "data.synth.num_distractors=4",
    ],
    "n_trials": 2,
    "hours": 0,  # no time limit
    "seeds": [0],
    "budgets": [0.5, 0.3],
    "random_policies": 3,
    "criteria": ["l1"],
    "scenarios": ["prune_then_finetune"],
}


class Stop(Exception):
    pass


def _stop(*args: object) -> None:
    raise Stop


def test_suite_writes_every_table_and_resumes_from_its_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(suite, "ROOT", tmp_path)
    monkeypatch.setitem(suite.SCALES, "quick", TOY)
    assert suite.main(["--quick"]) == 0
    text = (tmp_path / "results_quick.md").read_text()
    for n in range(1, 9):
        assert f"### {n}." in text
    assert "| 50% |" in text and "| 30% |" in text
    assert (tmp_path / "plots" / "t2_quick.png").is_file() and (tmp_path / "plots" / "t6_t7_quick.png").is_file()
    first = capsys.readouterr().out
    assert "(9/9): running" in first  # t2: 2 budgets x 2, t3: 1, t4: 2, t5: 1, t6: 1 -> 9 cells

    assert suite.main(["--quick"]) == 0  # everything cached: nothing trained again, same tables
    second = capsys.readouterr().out
    assert "0 cells computed this time" in second and "running" not in second
    assert (tmp_path / "results_quick.md").read_text() == text

    toy_changed = {**TOY, "overrides": [*TOY["overrides"][:-1], "data.synth.num_distractors=5"]}
    monkeypatch.setitem(suite.SCALES, "quick", toy_changed)
    # another config must not read the old cells back (the data changed, so every cell is redone);
    # table 2's cells show it, so the run stops after them
    monkeypatch.setattr(suite, "t1_unpruned_equal_epochs", _stop)
    with pytest.raises(Stop):
        suite.main(["--quick"])
    third = capsys.readouterr().out
    assert "computed with another config" in third


def test_paired_difference_and_its_interval_over_queries_and_seeds():
    same = ["1010" * 50, "1100" * 50]
    d = suite.paired_diff(same, same)
    assert d["mean"] == 0 and d["ci95"] == [0.0, 0.0] and d["queries"] == 200 and d["seeds"] == 2
    better = ["1110" * 50, "1101" * 50]  # +1 query in 4, on both seeds
    d = suite.paired_diff(better, same)
    assert d["mean"] == pytest.approx(0.25) and 0 < d["ci95"][0] < 0.25 < d["ci95"][1] < 0.5
    assert suite.paired_diff(better, [same[0], None]) is None  # a seed without hits: no paired figure
    assert suite.paired_diff(["11"], ["101"]) is None  # not the same queries


def test_paired_interval_draws_an_identitys_queries_together():
    """Queries of one identity that succeed or fail together: resampling identities gives a wider interval
    than resampling the queries as if they were independent; the mean is the same."""
    rng = __import__("random").Random(0)
    wins = [rng.random() < 0.6 for _ in range(60)]  # per identity: does the searched model win its queries
    a = ["".join("1" if w else "0" for w in wins for _ in range(5))]
    b = ["".join("0" if w else "1" for w in wins for _ in range(5))]
    pids = [pid for pid in range(60) for _ in range(5)]
    flat, grouped = suite.paired_diff(a, b), suite.paired_diff(a, b, groups=pids)
    assert flat["mean"] == grouped["mean"] and grouped["resampled"] == "identities"
    width = lambda d: d["ci95"][1] - d["ci95"][0]  # noqa: E731
    assert width(grouped) > 1.8 * width(flat)  # 5 queries per identity: about sqrt(5) = 2.2 times wider
    assert suite.paired_diff(a, b, groups=pids[:-1])["resampled"] == "queries"  # not this split's queries


def test_taus_compare_each_validation_objective_with_test_rank1():
    trials = [
        {"state": "COMPLETE", "target": {"rank1": r}, "target_val": {"rank1": v, "mAP": m}}
        for r, v, m in [(0.1, 0.3, 0.4), (0.2, 0.2, 0.5), (0.3, 0.1, 0.6)]
    ]
    taus = suite.search_taus({"trials": trials + [{"state": "PRUNED", "target": None, "target_val": None}]})
    assert taus["n"] == 3 and taus["rank1"] == pytest.approx(-1) and taus["mAP"] == pytest.approx(1)


def test_rung_taus_rank_early_epochs_against_the_last_from_the_study(tmp_path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = tmp_path / "study.db"
    study = optuna.create_study(storage=f"sqlite:///{db}", direction="maximize")
    # epoch 1 ranks the trials backwards, epoch 2 as the last epoch does; the third trial stopped at epoch 2
    for values in ([0.3, 0.1, 0.2], [0.2, 0.2, 0.4], [0.1, 0.3, 0.6], [0.4, 0.05]):
        t = study.ask()
        for step, v in enumerate(values, start=1):
            t.report(v, step)
        study.tell(
            t,
            values[-1] if len(values) == 3 else None,
            state=None if len(values) == 3 else optuna.trial.TrialState.PRUNED,
        )
    taus = suite.rung_taus(db)
    assert taus["last_epoch"] == 3 and taus["n1"] == 3 and taus["n2"] == 3
    assert taus["epoch1"] == pytest.approx(-1) and taus["epoch2"] == pytest.approx(1)
    assert suite.rung_taus(tmp_path / "missing.db") == {}


def test_time_limit_stops_the_suite_and_the_next_run_continues(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(suite, "ROOT", tmp_path)
    monkeypatch.setitem(suite.SCALES, "quick", TOY)
    assert suite.main(["--quick", "--hours", "1e-9"]) == 0  # over before anything starts: nothing runs
    out = capsys.readouterr().out
    assert "running" not in out and "run `make bench-quick` again to continue" in out
    assert "**Not finished**" in (tmp_path / "results_quick_t2.md").read_text()

    calls = []

    def one_second_then_over(self: suite.Suite, name: str) -> float:
        calls.append(name)
        if len(calls) > 1:
            raise suite.OutOfTime(name)
        return 0.05  # the first cell's search gets search.timeout=0.05: it stops after its first trial

    monkeypatch.setattr(suite.Suite, "time_left", one_second_then_over)
    assert suite.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "time limit, 1 of 2 trials finished" in out and out.count("running") == 1
    first = tmp_path / "cache" / "quick" / calls[0]
    assert [t["number"] for t in json.loads((first / "report.json").read_text())["trials"]] == [0]

    monkeypatch.undo()
    monkeypatch.setattr(suite, "ROOT", tmp_path)
    monkeypatch.setitem(suite.SCALES, "quick", TOY)
    assert suite.main(["--quick", "--table", "2", "--budget", "0.5", "--hours", "0"]) == 0  # the cut search goes on
    report = json.loads((first / "report.json").read_text())
    assert [t["number"] for t in report["trials"]] == [0, 1]
    assert "Not finished" not in (tmp_path / "results_quick_t2.md").read_text()
