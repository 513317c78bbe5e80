"""Nothing outside the run directory is read, written or deleted: links and paths read back from files."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from autoprune.cli import main
from autoprune.config import load_config
from autoprune.errors import UserError
from autoprune.rundir import inside, refuse_links_out
from autoprune.search.run import lock_run_dir, prepare_run_dir


def test_inside_accepts_run_files_and_refuses_every_way_out(tmp_path):
    run = tmp_path / "run"
    (run / "trials").mkdir(parents=True)
    assert inside(run, "trials/trial_0001.pt", "x") == (run / "trials" / "trial_0001.pt").resolve()
    (tmp_path / "victim").write_text("keep me")
    (run / "trials" / "link.pt").symlink_to(tmp_path / "victim")
    for rel in ("../victim", str(tmp_path / "victim"), "trials/../../victim", "trials/link.pt", ".", "", None, 3):
        with pytest.raises(UserError, match="report.json"):
            inside(run, rel, "report.json")


def test_a_link_leading_out_of_the_run_directory_is_refused(tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "pruned.pt").symlink_to(tmp_path / "elsewhere.pt")  # dangling is as bad: it would be created
    with pytest.raises(UserError, match="model/pruned.pt, a link to .*elsewhere.pt outside it"):
        refuse_links_out(run)
    (run / "model" / "pruned.pt").unlink()
    (run / "model" / "pruned.pt").symlink_to(run / "report.json")  # a link that stays inside is harmless
    refuse_links_out(run)


@pytest.mark.parametrize("name", [".lock", ".write-test"])
def test_planted_lock_or_write_test_links_never_write_outside(name, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / name).symlink_to(victim)
    rc = main(["search", "--preset", "smoke", "--quiet", "--out", str(run), "--set", f"data.root={tmp_path / 'data'}"])
    assert rc == 2
    assert "outside it" in capsys.readouterr().err
    assert victim.read_text() == "precious"
    assert not (tmp_path / "data").exists()  # refused before any data is made


def test_lock_and_probe_never_follow_a_link_even_inside(tmp_path):
    cfg = load_config(preset="smoke")
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    (run / ".lock").symlink_to(run / "notes.txt")
    with pytest.raises(UserError, match=r"\.lock is a symbolic link"):
        lock_run_dir(cfg, run)
    (run / ".lock").unlink()
    (run / ".write-test").symlink_to(run / "notes.txt")  # a stale probe link is removed, not written through
    prepare_run_dir(cfg, run)
    assert (run / "notes.txt").read_text() == "mine" and not (run / ".write-test").exists()


def test_out_naming_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    rc = main(["search", "--preset", "smoke", "--quiet", "--out", str(tmp_path / "file")])
    assert rc == 2
    assert "is a file, not a directory" in capsys.readouterr().err


@pytest.mark.slow
def test_a_tampered_study_cannot_delete_or_read_files_outside(smoke_run, tmp_path, capsys):
    """study.db says a trial's model is ../victim.pt: the search refuses it and deletes nothing."""
    out, root = smoke_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    victim = tmp_path / "victim.pt"
    victim.write_text("precious")
    best = json.loads((run / "report.json").read_text())["best"]["trial"]
    with sqlite3.connect(run / "study.db") as db:
        rows = db.execute(
            "select a.trial_id, t.number, a.value_json from trial_user_attributes a join trials t "
            "on a.trial_id = t.trial_id where a.key = 'record'"
        ).fetchall()
        tid, number, value = next(r for r in rows if r[1] != best)
        record = json.loads(value)
        record["model"] = "../victim.pt"
        db.execute(
            "update trial_user_attributes set value_json = ? where trial_id = ? and key = 'record'",
            (json.dumps(record), tid),
        )
    rc = main(["search", "--preset", "smoke", "--quiet", "--out", str(run), "--set", f"data.root={root / 'data'}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"the study's record of trial {number} names '../victim.pt', which is outside the run directory" in err
    assert victim.read_text() == "precious"
