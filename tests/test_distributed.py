"""Shared Optuna studies: two `autoprune worker` processes on one journal file, and on a real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pg import PostgresServer, find_bin_dir

pytestmark = pytest.mark.slow

N_TRIALS = 4


def _start_worker(storage: str, out: Path, data_root: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "autoprune.cli", "worker", "--preset", "smoke", "--quiet",
           "--storage", storage, "--n-trials", str(N_TRIALS), "--out", str(out),
           "--set", f"data.root={data_root}", "--set", "train.threads=1"]  # two workers, two cores
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


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
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in trials] == list(range(N_TRIALS))
    assert all(t.state.is_finished() for t in trials)
    policies = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(policies)) == N_TRIALS
    # Every trial was run (and printed) by exactly one of the workers.
    ran = [[n for n in range(N_TRIALS) if f"trial {n:3d} " in out] for out in outputs]
    assert sorted(ran[0] + ran[1]) == list(range(N_TRIALS))
    # Each worker's report covers the whole study as it stood when that worker finished.
    reports = [json.loads((tmp_path / f"worker{i}" / "report.json").read_text()) for i in range(2)]
    last = max(reports, key=lambda r: sum(t["state"] != "RUNNING" for t in r["trials"]))
    assert [t["number"] for t in last["trials"]] == list(range(N_TRIALS))
    assert last["best"] is not None and last["best"]["macs"] <= last["budget"]["macs"]
    for t in last["trials"]:
        if t["state"] == "COMPLETE":
            assert t["macs"] <= last["budget"]["macs"]


def test_two_workers_share_a_journal_study(smoke_run, tmp_path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    _, root = smoke_run                      # the smoke run's data and cached baseline
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

    assert main(["worker", "--preset", "smoke", "--storage", f"journal:{tmp_path / 's.log'}",
                 "--set", "search.backend=ray", "--out", str(tmp_path / "w")]) == 2
    assert "search.backend ray" in capsys.readouterr().err
    # Nothing listens on port 9: the error names the storage without its password.
    assert main(["worker", "--preset", "smoke", "--storage", "postgresql://u:hunter2@127.0.0.1:9/db",
                 "--out", str(tmp_path / "w2"), "--set", f"data.root={tmp_path / 'data'}"]) == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err and "127.0.0.1:9" in err
