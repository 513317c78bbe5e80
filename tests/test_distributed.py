"""Shared Optuna studies: two `autoprune worker` processes on one journal file, and on a real PostgreSQL;
many workers racing for the last trials of a study (the count must be exact under any timing)."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pg import PostgresServer, find_bin_dir

pytestmark = pytest.mark.slow

N_TRIALS = 4


def _start_worker(storage: str, out: Path, data_root: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "autoprune.cli",
        "worker",
        "--preset",
        "smoke",
        "--quiet",
        "--storage",
        storage,
        "--n-trials",
        str(N_TRIALS),
        "--out",
        str(out),
        "--set",
        f"data.root={data_root}",
        "--set",
        "train.threads=1",
    ]  # two workers, two cores
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )


def _run_two_workers(storage: str, tmp_path: Path, data_root: Path) -> list[str]:
    procs = [_start_worker(storage, tmp_path / f"worker{i}", data_root) for i in range(2)]
    outputs = []
    for p in procs:
        out, _ = p.communicate(timeout=240)
        outputs.append(out)
        assert p.returncode == 0, out
    return outputs


def _check_study(storage, outputs: list[str], tmp_path: Path) -> None:
    """Exactly N_TRIALS finished, each trial run by one worker, no policy evaluated twice, reports agree."""
    import optuna

    study = optuna.load_study(study_name="autoprune", storage=storage)
    every = study.get_trials(deepcopy=False)
    trials = [t for t in every if not t.user_attrs.get("given_back")]
    assert all(not t.params for t in every if t.user_attrs.get("given_back")), "a given-back trial ran"
    # Exactly N_TRIALS kept. Their numbers need not be 0..N-1: trial numbers are never reused, and when both
    # workers queue the uniform warm start at once, the second copy is given back (seen: kept [0, 2, 3, 4]).
    kept = [t.number for t in trials]
    assert len(kept) == N_TRIALS and kept == sorted(kept) and kept[0] == 0
    assert all(t.state.is_finished() for t in trials)
    policies = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(policies)) == N_TRIALS
    # Every trial was run (and printed) by exactly one of the workers.
    ran = [[n for n in kept if f"trial {n:3d} " in out] for out in outputs]
    assert sorted(ran[0] + ran[1]) == kept
    # Each worker's report covers the whole study as it stood when that worker finished.
    reports = [json.loads((tmp_path / f"worker{i}" / "report.json").read_text()) for i in range(2)]
    last = max(reports, key=lambda r: sum(t["state"] != "RUNNING" for t in r["trials"]))
    assert [t["number"] for t in last["trials"]] == kept
    assert last["best"] is not None and last["best"]["macs"] <= last["budget"]["macs"]
    for t in last["trials"]:
        if t["state"] == "COMPLETE":
            assert t["macs"] <= last["budget"]["macs"]


def test_two_workers_share_a_journal_study(smoke_run, tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    _, root = smoke_run  # the smoke run's data and cached baseline
    log = tmp_path / "study.log"
    outputs = _run_two_workers(f"journal:{log}", tmp_path, root / "data")
    _check_study(JournalStorage(JournalFileBackend(str(log))), outputs, tmp_path)


@pytest.fixture
def postgres():
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries not found (/usr/lib/postgresql/*/bin/initdb): apt-get install -y postgresql")
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()


def test_two_workers_share_a_postgresql_study(smoke_run, postgres, tmp_path):
    from pg import PASSWORD

    _, root = smoke_run
    outputs = _run_two_workers(postgres.url, tmp_path, root / "data")
    _check_study(postgres.url.replace("postgresql://", "postgresql+psycopg2://"), outputs, tmp_path)
    # The storage password is never printed or written to a report.
    for i, out in enumerate(outputs):
        assert PASSWORD not in out
        run_dir = tmp_path / f"worker{i}"
        for name in ("report.json", "config.yaml", "trials.csv"):
            assert PASSWORD not in (run_dir / name).read_text(), name


def test_worker_refuses_a_ray_config_and_hides_a_bad_password(tmp_path, capsys):
    from autoprune.cli import main

    assert (
        main(
            [
                "worker",
                "--preset",
                "smoke",
                "--storage",
                f"journal:{tmp_path / 's.log'}",
                "--set",
                "search.backend=ray",
                "--out",
                str(tmp_path / "w"),
            ]
        )
        == 2
    )
    assert "search.backend ray" in capsys.readouterr().err
    # Nothing listens on port 9: the error names the storage without its password.
    assert (
        main(
            [
                "worker",
                "--preset",
                "smoke",
                "--storage",
                "postgresql://u:hunter2@127.0.0.1:9/db",
                "--out",
                str(tmp_path / "w2"),
                "--set",
                f"data.root={tmp_path / 'data'}",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "hunter2" not in err and "127.0.0.1:9" in err


# -- many workers racing for the last trials ---------------------------------------------------------

# Six workers, 20 trials of 10 ms each: the workers spend their time in the storage, checking the count and
# creating trials, so their checks interleave. A count checked before a trial is created (the bug this
# guards against) ran 22-24 trials in 6 runs of 6 here; claiming in the storage runs 20 every time.
RACE_WORKERS = 6
RACE_TRIALS = 20
TRIAL_SECONDS = 0.01


class RaceEnv:
    """What OptunaBackend needs of a SearchEnv (config, typed search section, device, space), with a trial
    that only sleeps: the race is all there is."""

    def __init__(self, cfg: dict) -> None:
        from autoprune.config import SearchSettings, TrialSettings
        from autoprune.search.space import Param, SearchSpace

        self.cfg = cfg
        self.search = SearchSettings.from_config(cfg)
        self.trial = TrialSettings.from_config(cfg)
        self.device = None
        names = ("layer1.out", "layer2.out", "layer3.out")  # continuous: no two sampled policies are equal
        self.space = SearchSpace("race", "group", {n: Param(n, 0.1, 1.0, None, [n]) for n in names})

    def run(self, values: dict, report=None, screen=None):
        from autoprune.search.trial import TrialResult

        time.sleep(TRIAL_SECONDS)
        return TrialResult(
            counts={},
            policy=dict(values),
            macs=1,
            params=1,
            macs_ratio=0.5,
            metrics={"target": {"rank1": sum(values.values()) / 3, "mAP": 0.1}},
            seconds=TRIAL_SECONDS,
        )


def _race_config(storage: str, n_trials: int) -> dict:
    from autoprune.config import load_config

    cfg = load_config(
        preset="smoke", overrides=["search.sampler=random", "search.pruner=none", f"search.n_trials={n_trials}"]
    )
    cfg["search"]["storage"] = storage
    return cfg


def _race_worker(storage: str, run_dir: str, start, ran: str) -> None:
    """One worker process: wait for the start signal, run the study to RACE_TRIALS, write what it ran."""
    from autoprune.search.optuna_backend import OptunaBackend

    numbers = []
    backend = OptunaBackend(
        RaceEnv(_race_config(storage, RACE_TRIALS)), Path(run_dir), on_trial=lambda r: numbers.append(r.number)
    )
    start.wait()
    backend.run(RACE_TRIALS)
    Path(ran).write_text(json.dumps(numbers))


def _race(storage: str, tmp_path: Path) -> list[list[int]]:
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [
        ctx.Process(target=_race_worker, args=(storage, str(tmp_path), start, str(tmp_path / f"ran{i}.json")))
        for i in range(RACE_WORKERS)
    ]
    for p in procs:
        p.start()
    time.sleep(1.0)  # every worker has opened the study; then they all start at once
    start.set()
    for p in procs:
        p.join(timeout=180)
        assert p.exitcode == 0
    return [json.loads((tmp_path / f"ran{i}.json").read_text()) for i in range(RACE_WORKERS)]


@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_racing_workers_finish_exactly_n_trials(kind, tmp_path, request):
    """Workers racing for the last trials of a study run exactly n_trials, each once, the uniform policy
    once (every worker queues it), and a resumed or extended study reads the given-back trials right."""
    from autoprune.search.optuna_backend import OptunaBackend, counted, given_back

    storage = f"journal:{tmp_path / 'study.log'}"
    if kind == "postgresql":
        storage = request.getfixturevalue("postgres").url
    ran = _race(storage, tmp_path)
    backend = OptunaBackend(RaceEnv(_race_config(storage, RACE_TRIALS)), tmp_path)
    trials = backend.study.get_trials(deepcopy=False)
    kept = [t for t in trials if not given_back(t)]
    assert counted(trials) == RACE_TRIALS == len(kept)
    assert all(t.state.name == "COMPLETE" for t in kept)
    assert sorted(n for numbers in ran for n in numbers) == [t.number for t in kept]  # each run by one worker
    assert len({tuple(sorted(t.params.items())) for t in kept}) == RACE_TRIALS  # no policy twice
    uniform = backend.env.space.uniform_values()
    assert sum(t.params == uniform for t in kept) == 1
    for t in trials:
        if given_back(t):
            assert t.state.name == "FAIL" and not t.params and "record" not in t.user_attrs
    assert [r.number for r in backend.records()] == [t.number for t in kept]
    # Resumed: nothing to run. Extended by two: two more trials run, the count is exact again.
    assert len(backend.run(RACE_TRIALS)) == RACE_TRIALS
    assert len(backend.run(RACE_TRIALS + 2)) == RACE_TRIALS + 2
    assert counted(backend.study.get_trials(deepcopy=False)) == RACE_TRIALS + 2


def test_queued_policies_the_study_has_no_room_for_are_given_back(tmp_path):
    """Three policies queued for a one-trial study: the first runs, the two others end given back (not left
    WAITING, where they would hold a place and show up as kept trials), and a later run has nothing to do."""
    from autoprune.search.optuna_backend import OptunaBackend, counted, given_back

    cfg = _race_config(f"journal:{tmp_path / 'study.log'}", 1)
    cfg["search"]["warm_start"] = [{"layer1.out": 0.5}, {"layer2.out": 0.5}]
    backend = OptunaBackend(RaceEnv(cfg), tmp_path)
    assert [r.number for r in backend.run(1)] == [0]
    trials = backend.study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL"]
    assert [given_back(t) for t in trials] == [False, True, True] and counted(trials) == 1
    assert [r.number for r in backend.run(1)] == [0] and len(backend.study.get_trials()) == 3
