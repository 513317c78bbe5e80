"""The Ray Tune backend end to end: a local Ray, two trials at a time, interrupted with Ctrl-C and resumed."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

N_TRIALS = 4


def test_import_autoprune_does_not_import_ray():
    code = "import autoprune, autoprune.cli, autoprune.search.run, sys; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (starting Ray takes seconds); runs join it and leave it running."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _args(out: Path, data_root: Path, *extra: str) -> list[str]:
    return [
        "search",
        "--preset",
        "smoke",
        "--quiet",
        "--out",
        str(out),
        "--set",
        f"data.root={data_root}",
        "--set",
        "search.backend=ray",
        "--set",
        "search.ray.max_concurrent=2",
        "--set",
        "search.ray.cpus_per_trial=1",
        "--set",
        f"search.n_trials={N_TRIALS}",
        *extra,
    ]


def _search_until_uniform_trial_then_ctrl_c(args: list[str]) -> tuple[int, str]:
    """`autoprune search` in a subprocess, sent SIGINT (Ctrl-C) once trial 0 (the uniform policy) finished."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoprune.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("trial   0 "):
            proc.send_signal(signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=120)
    return proc.returncode, "".join(lines) + rest


def test_ray_search_interrupted_then_resumed(smoke_run, local_ray, tmp_path, capsys):
    from autoprune.cli import main

    _, root = smoke_run  # reuses the smoke run's synthetic data and cached baseline
    out = tmp_path / "run"
    # First run: a driver process joining the running Ray (search.ray.address), stopped with Ctrl-C.
    rc, printed = _search_until_uniform_trial_then_ctrl_c(
        _args(out, root / "data", "--set", f"search.ray.address={local_ray}")
    )
    assert rc == 130, printed
    first = json.loads((out / "report.json").read_text())
    done_before = {t["number"]: t for t in first["trials"] if t["state"] in ("COMPLETE", "PRUNED")}
    assert 1 <= len(done_before) < N_TRIALS
    assert (out / "ray" / "autoprune" / "tuner.pkl").is_file()

    # Ray Tune fixes the number of trials when an experiment starts: another n_trials is a clear error.
    capsys.readouterr()
    assert main(_args(out, root / "data", "--set", f"search.n_trials={N_TRIALS + 1}")) == 2
    assert f"search.n_trials={N_TRIALS}" in capsys.readouterr().err

    # Second run, in this process on the same Ray: the experiment is restored and finished.
    assert main(_args(out, root / "data")) == 0
    printed = capsys.readouterr().out
    assert "ray: resuming the experiment" in printed
    report = json.loads((out / "report.json").read_text())
    trials = report["trials"]
    assert [t["number"] for t in trials] == list(range(N_TRIALS))
    assert {t["state"] for t in trials} <= {"COMPLETE", "PRUNED"}
    # Trials finished before the interruption were kept, not run again.
    for number, before in done_before.items():
        assert trials[number] == before
        assert f"trial {number:3d} " not in printed
    # Trial 0 is the uniform warm start, as with the Optuna backend.
    assert set(trials[0]["values"].values()) == {1.0}
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    assert complete and trials[0]["state"] == "COMPLETE"
    budget = report["budget"]["macs"]
    for t in complete:
        assert t["macs"] <= budget and t["macs_ratio"] <= report["budget"]["macs_ratio"] + 1e-9
        assert 0.0 <= t["target"]["rank1"] <= 1.0
        assert t["target_val"] is not None  # chosen on the validation split, as with the Optuna backend
    for t in trials:
        if t["state"] == "PRUNED":
            assert "stopped early" in t["error"]
    assert report["config"]["backend"] == "ray"
    best = report["best"]
    assert best["macs"] <= budget and (out / best["model"]).is_file()
    assert best["trial"] in {t["number"] for t in complete}
    # Each trial's record is its Tune checkpoint.
    with_record = {p.parent.parent.name for p in (out / "ray" / "autoprune").glob("trial_*/checkpoint_*/record.json")}
    assert with_record == {f"trial_{t['number']:04d}" for t in complete}


def test_a_record_tune_never_registered_is_found_and_links_out_are_not(tmp_path):
    """Ctrl-C between a trial's last report and the experiment's snapshot leaves a record Tune does not know;
    the restored trial replays it instead of training again (a rerun that ASHA stopped read back as PRUNED)."""
    from autoprune.search.ray_backend import RECORD, unregistered_record

    exp = tmp_path / "ray" / "autoprune"
    assert unregistered_record(str(exp), 1) is None
    assert unregistered_record(None, 1) is None
    for index in (0, 1):
        d = exp / "trial_0001" / f"checkpoint_00000{index}"
        d.mkdir(parents=True)
        (d / RECORD).write_text(json.dumps({"index": index}))
    assert unregistered_record(str(exp), 1) == (exp / "trial_0001" / "checkpoint_000001" / RECORD).resolve()
    assert unregistered_record(str(exp), 2) is None  # another trial's folder is not this trial's record
    # A record planted as a link (to a file outside the experiment) is not read.
    outside = tmp_path / "elsewhere.json"
    outside.write_text("{}")
    d = exp / "trial_0002" / "checkpoint_000000"
    d.mkdir(parents=True)
    (d / RECORD).symlink_to(outside)
    assert unregistered_record(str(exp), 2) is None


def test_a_saved_record_that_is_not_one_is_run_again(tmp_path):
    """A record cut short or edited is not replayed (the trial trains again), and not a worker error."""
    from autoprune.config import SearchSettings, load_config
    from autoprune.search.ray_backend import _read_record

    search = SearchSettings.from_config(load_config(preset="smoke"))
    path = tmp_path / "record.json"
    for text in ("", "{not json", "[1, 2]", json.dumps({"macs": "many", "target": 3})):
        path.write_text(text)
        assert _read_record(path, 1, search) is None, text
    assert _read_record(tmp_path / "missing.json", 1, search) is None
    path.write_text(
        json.dumps({"macs": 10, "target": {"rank1": 0.25, "mAP": 0.2}, "target_val": {"rank1": 0.5, "mAP": 0.4}})
    )
    values, data = _read_record(path, 1, search)
    assert values == {"rank1": 0.5, "macs": 10.0} and data == path.read_bytes()  # chosen on validation


def test_asha_rungs_follow_min_resource_and_reduction_factor():
    """Ray's early stopping reads search.min_resource and search.reduction_factor, as Optuna's pruners do."""
    from types import SimpleNamespace

    from autoprune.config import SearchSettings, load_config
    from autoprune.search.ray_backend import RayBackend

    cfg = load_config(preset="smoke", overrides=["search.min_resource=3", "search.reduction_factor=4"])
    stub = SimpleNamespace(
        multi=False,
        search=SearchSettings.from_config(cfg),
        env=SimpleNamespace(trial=SimpleNamespace(finetune_epochs=4)),
        _points_to_evaluate=lambda: [{}],
    )
    scheduler = RayBackend._scheduler(stub)  # type: ignore[arg-type]
    milestones = sorted(m for m, _ in scheduler._brackets[0]._rungs)  # Ray keeps no public view of its rungs
    assert milestones[:3] == [3, 12, 48]


def test_asha_never_stops_a_trial_at_its_last_epoch():
    """As the Optuna backend: the last epoch's training is paid for, so the trial completes."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from autoprune.search.ray_backend import NUMBER, WarmStartASHA

    asha = WarmStartASHA(
        1, 4, metric="rank1", mode="max", time_attr="training_iteration", grace_period=1, reduction_factor=2
    )
    trials = [SimpleNamespace(trial_id=f"t{i}", config={NUMBER: i}) for i in range(4)]
    for t in trials:
        asha.on_trial_add(None, t)

    def result(t, step: int, rank1: float) -> str:
        return asha.on_trial_result(None, t, {"training_iteration": step, "step": step, "rank1": rank1})

    for t in trials[:2]:  # two good trials through every rung
        assert all(result(t, step, 0.9) == TrialScheduler.CONTINUE for step in (1, 2, 3, 4))
    fades = trials[2]  # the best until its last epoch, then the worst of the rung at epoch 4
    assert all(result(fades, step, 0.95) == TrialScheduler.CONTINUE for step in (1, 2, 3))
    assert result(fades, 4, 0.1) == TrialScheduler.CONTINUE
    assert result(trials[3], 1, 0.05) == TrialScheduler.STOP  # stopping early still works
