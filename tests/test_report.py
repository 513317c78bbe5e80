"""The figures written after a search: which ones, and the numbers they draw."""

from __future__ import annotations

import pytest

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


# -- `autoprune report` / `export` on an edited report.json, a read-only run, a bad --out -------------------


def _one_line(capsys, argv):
    from autoprune.cli import main

    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return out, err


def _edit(run, **top):
    import json

    report = json.loads((run / "report.json").read_text())
    for dotted, value in top.items():
        *parents, key = dotted.split("__")
        entry = report
        for p in parents:
            entry = entry[p]
        entry[key] = value
    (run / "report.json").write_text(json.dumps(report))


@pytest.mark.parametrize(
    "edit, field",
    [
        ({"recipe": "x"}, "recipe: "),
        ({"recipe": [1]}, "recipe: "),
        ({"baseline__checkpoint": "x"}, "baseline.checkpoint: "),
        ({"baseline__checkpoint": {"arch": "r"}}, "baseline.checkpoint: "),
        ({"baseline__latency_ms": "fast"}, "baseline.latency_ms: not a number"),
        (
            {"baseline__latency_ms": 1, "baseline__latency_measured": True, "baseline__latency_spread_ms": 5},
            "baseline.latency_spread_ms: ",
        ),
        (
            {"best__latency_ms": 1, "best__latency_measured": True, "best__latency_spread_ms": [1]},
            "best.latency_spread",
        ),
        ({"budget__latency_ms": 3}, "budget.latency_batch: missing"),
        ({"budget__latency_ms": 3, "budget__latency_batch": 1}, "budget.latency_device: missing"),
        ({"budget__latency_ms": "3"}, "budget.latency_ms: not a number"),
    ],
)
def test_report_on_an_edited_report_json_names_the_field(edit, field, finished_run, capsys):
    _edit(finished_run, **edit)
    _, err = _one_line(capsys, ["report", str(finished_run)])
    assert f"{finished_run / 'report.json'} is incomplete or was edited ({field}" in err
    assert not (finished_run / "report.md").exists()


def test_report_renders_every_field_it_accepts(finished_run, capsys):
    """The checks accept what a search writes: a checkpoint, a recipe, latency measured and budgeted."""
    from autoprune.cli import main

    _edit(
        finished_run,
        recipe={"summary": "prune_then_finetune"},
        baseline__checkpoint={"arch": "resnet10", "format": "torchreid", "path": "m.pth", "sha256": "ab" * 32},
        baseline__latency_ms=2.0,
        baseline__latency_measured=True,
        baseline__latency_spread_ms=[1.9, 2.1],
        best__latency_ms=1.0,
        budget__latency_ms=1.5,
        budget__latency_batch=1,
        budget__latency_device="cpu",
    )
    assert main(["report", str(finished_run)]) == 0
    out = capsys.readouterr().out
    assert "recovery recipe: prune_then_finetune" in out and "2.00 ±0.10" in out and "~1.00" in out


def test_report_refuses_a_huge_report_json_without_reading_it(finished_run, capsys, monkeypatch):
    import pathlib

    with open(finished_run / "report.json", "r+b") as f:
        f.truncate(65 * 2**20)  # sparse: no 65 MiB written
    monkeypatch.setattr(pathlib.Path, "read_text", lambda *a, **k: pytest.fail("read the whole file"))
    _, err = _one_line(capsys, ["report", str(finished_run)])
    assert "report.json holds 65 MiB, more than the 64 MiB autoprune ever writes there" in err


def test_report_checks_links_before_reading_report_json(finished_run, tmp_path, capsys):
    (finished_run / "report.json").write_text("{ not json")
    (finished_run / "plot.png").symlink_to(tmp_path / "elsewhere.png")
    _, err = _one_line(capsys, ["report", str(finished_run)])
    assert "plot.png, a link to" in err and "not JSON" not in err


def test_report_on_a_read_only_run_prints_the_summary_then_one_line(finished_run, capsys, monkeypatch):
    import errno

    import autoprune.search.report as report_mod

    def read_only(path, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(report_mod, "write_file", read_only)  # root writes in a read-only folder: simulate it
    out, err = _one_line(capsys, ["report", str(finished_run)])
    assert "unpruned" in out and "best (#0)" in out
    assert f"{finished_run / 'report.md'} could not be written (Permission denied)" in err


@pytest.mark.parametrize("where", ["/proc/x.pt"])
def test_export_to_an_unwritable_folder_is_refused_up_front(where, finished_run, capsys, monkeypatch):
    import autoprune.export as export

    monkeypatch.setattr(export, "load_pruned", lambda *a, **k: pytest.fail("loaded the model before checking --out"))
    _, err = _one_line(capsys, ["export", str(finished_run), "--out", where])
    assert f"--out {where}" in err and "choose another path" in err


@pytest.mark.parametrize("name", ["model/pruned.pt", "report.json", "notes.txt"])
def test_export_never_overwrites_the_runs_own_files(name, finished_run, tmp_path, capsys):
    (finished_run / "notes.txt").write_text("mine")
    before = (finished_run / name).read_bytes()
    _, err = _one_line(capsys, ["export", str(finished_run), "--out", str(finished_run / name)])
    assert f"is {name}, a file of the run" in err
    (tmp_path / "via.pt").symlink_to(finished_run / name)  # a link outside that resolves into the run
    _, err = _one_line(capsys, ["export", str(finished_run), "--out", str(tmp_path / "via.pt")])
    assert f"is {name}, a file of the run" in err
    assert (finished_run / name).read_bytes() == before


def test_export_turns_a_failed_write_into_one_line(finished_run, capsys, monkeypatch):
    import errno

    import autoprune.export as export

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "write_file", full)
    _, err = _one_line(capsys, ["export", str(finished_run)])
    assert "pruned.torchscript.pt could not be written (No space left on device)" in err
