"""Nothing outside the run directory is read, written or deleted: links and paths read back from files."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import pytest
import torch

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


# -- links and hard links at a name autoprune writes: the name is replaced, never written through ---------


def _one_line(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_report_replaces_a_link_or_hard_link_at_report_md(finished_run, tmp_path):
    report = (finished_run / "report.json").read_text()
    (finished_run / "report.md").symlink_to("report.json")  # a link that stays inside
    assert main(["report", str(finished_run)]) == 0
    assert (finished_run / "report.json").read_text() == report
    assert (
        not (finished_run / "report.md").is_symlink() and "autoprune report" in (finished_run / "report.md").read_text()
    )
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (finished_run / "report.md").unlink()
    os.link(victim, finished_run / "report.md")  # a hard link to a file outside
    assert main(["report", str(finished_run)]) == 0
    assert victim.read_text() == "precious" and os.stat(victim).st_nlink == 1


def test_export_replaces_a_link_at_its_output(finished_run):
    model = (finished_run / "model" / "pruned.pt").read_bytes()
    (finished_run / "model" / "pruned.torchscript.pt").symlink_to("pruned.pt")
    assert main(["export", str(finished_run)]) == 0
    assert (finished_run / "model" / "pruned.pt").read_bytes() == model
    assert not (finished_run / "model" / "pruned.torchscript.pt").is_symlink()
    assert [p.name for p in (finished_run / "model").iterdir() if p.name.startswith(".")] == []  # no temp left


def _writers(tmp_path):
    """Every way autoprune writes a file in a run directory, each given the path to write."""
    from conftest import FINISHED_REPORT

    from autoprune.export import save_torchscript
    from autoprune.models import build_model
    from autoprune.pruning.serialize import save_pruned
    from autoprune.rundir import copy_file
    from autoprune.search.records import TrialRecord
    from autoprune.search.report import write_json, write_markdown, write_plots, write_trials_csv

    model = build_model("resnet10", 2)
    record = TrialRecord(
        number=0, state="COMPLETE", policy={"a": 0.5}, macs_ratio=0.5, macs=1, target={"rank1": 0.4, "mAP": 0.2}
    )
    (tmp_path / "src").write_text("copied")

    def plot(path):
        write_plots(path.parent, {"budget": {"macs_ratio": 0.5}}, [record])  # writes progress.png

    return {
        "json": lambda p: write_json(p, {"a": 1}),
        "csv": lambda p: write_trials_csv(p, [record]),
        "png": plot,
        "md": lambda p: write_markdown(p.parent, FINISHED_REPORT),
        "model": lambda p: save_pruned(model, p),
        "torchscript": lambda p: save_torchscript(model, p, torch.zeros(1, 3, 32, 16)),
        "copy": lambda p: copy_file(tmp_path / "src", p),
    }


@pytest.mark.parametrize(
    "kind, name",
    [
        ("json", "report.json"),
        ("csv", "trials.csv"),
        ("png", "progress.png"),
        ("md", "report.md"),
        ("model", "pruned.pt"),
        ("torchscript", "pruned.torchscript.pt"),
        ("copy", "pruned.pt"),
    ],
)
@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_every_writer_replaces_a_link_at_its_name(kind, name, link, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    victim = run / "victim.txt"
    victim.write_text("precious")
    if link == "symlink":
        (run / name).symlink_to("victim.txt")
    else:
        os.link(victim, run / name)
    _writers(tmp_path)[kind](run / name)
    assert victim.read_text() == "precious"
    assert not (run / name).is_symlink() and os.stat(run / name).st_nlink == 1
    assert sorted(p.name for p in run.iterdir()) == sorted({name, "victim.txt"})  # no temp file left


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    from autoprune.rundir import replacing

    (tmp_path / "f").write_text("old")
    with pytest.raises(ZeroDivisionError), replacing(tmp_path / "f", text=True) as f:
        f.write("half")
        raise ZeroDivisionError
    assert (tmp_path / "f").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f"]


# -- link loops: one line, exit 2, for every command that walks the run directory ---------------------------


def _loop(run, kind):
    if kind == "self":
        (run / "trials").mkdir(exist_ok=True)
        (run / "trials" / "loop").symlink_to("loop")
        return "trials/loop"
    (run / "a").symlink_to("b")
    (run / "b").symlink_to("a")
    return "a"


@pytest.mark.parametrize("kind", ["self", "pair"])
@pytest.mark.parametrize("command", ["report", "export", "search"])
def test_a_link_loop_in_the_run_directory_is_one_line(command, kind, finished_run, tmp_path, capsys):
    name = _loop(finished_run, kind)
    argv = [command, str(finished_run)]
    if command == "search":
        argv = ["search", "--preset", "smoke", "--quiet", "--out", str(finished_run)]
        argv += ["--set", f"data.root={tmp_path / 'data'}"]
    err = _one_line(capsys, argv)
    assert f"{finished_run} holds " in err and "a link loop; remove it" in err
    assert name.split("/")[-1] in err and not (tmp_path / "data").exists()


def test_inside_refuses_a_path_through_a_link_loop(tmp_path):
    _loop(tmp_path, "self")
    with pytest.raises(UserError, match="trials/loop/x.pt, a link loop"):
        inside(tmp_path, "trials/loop/x.pt", "report.json")


# -- JSON files read back from a run directory ------------------------------------------------------------


@pytest.mark.parametrize("content", [b'{"ident', b"", b"[1]", b'"x"', b"\xff\xfe{}", b"[" * 100000])
def test_a_corrupt_identity_json_is_one_line(content, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "identity.json").write_bytes(content)
    argv = ["search", "--preset", "smoke", "--quiet", "--out", str(run), "--set", f"data.root={tmp_path / 'data'}"]
    err = _one_line(capsys, argv)
    assert f"{run / 'identity.json'} is " in err and f"delete {run} or use another --out" in err
    assert not (tmp_path / "data").exists()


def test_read_json_refuses_links_fifos_and_big_files(tmp_path):
    from autoprune.rundir import read_json

    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert read_json(tmp_path / "ok.json", "fix") == {"a": 1}
    (tmp_path / "link.json").symlink_to("ok.json")
    with pytest.raises(UserError, match=r"link.json cannot be read \(a symbolic link\); fix"):
        read_json(tmp_path / "link.json", "fix")
    os.mkfifo(tmp_path / "fifo.json")  # would block a plain open for reading
    with pytest.raises(UserError, match="fifo.json is not a plain file; fix"):
        read_json(tmp_path / "fifo.json", "fix")
    with pytest.raises(UserError, match="ok.json holds 0 MiB, more than"):
        read_json(tmp_path / "ok.json", "fix", limit=4)


def test_a_corrupt_final_or_baseline_json_on_resume_is_one_line(tmp_path):
    from autoprune.search.run import _final_marker, _unpruned_reference

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "final.json").write_text('{"trial": ')
    with pytest.raises(UserError, match=r"final.json is truncated or not JSON; delete .*final.json to choose"):
        _final_marker(tmp_path / "model")
    (tmp_path / "baseline.json").write_bytes(b"\xff")
    cfg = load_config(preset="smoke")
    with pytest.raises(UserError, match=r"baseline.json is truncated or not JSON; delete .*baseline.json to"):
        _unpruned_reference(cfg, tmp_path, None, {}, print)  # type: ignore[arg-type]


# -- dashboard -----------------------------------------------------------------------------------------------


def test_dashboard_refuses_links_out_bad_ports_and_a_port_in_use(tmp_path, capsys, monkeypatch):
    import socket
    import socketserver

    import optuna

    monkeypatch.setattr(socketserver.BaseServer, "serve_forever", lambda *a, **k: pytest.fail("served"))

    run = tmp_path / "run"
    run.mkdir()
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'elsewhere.db'}", study_name="autoprune")
    (run / "study.db").symlink_to(tmp_path / "elsewhere.db")
    assert "study.db, a link to" in _one_line(capsys, ["dashboard", str(run)])
    for port in ("99999", "-1"):
        assert f"--port must be in 0..65535 (0: any free port), got {port}" in _one_line(
            capsys, ["dashboard", str(run), "--port", port]
        )
    (run / "study.db").unlink()
    shutil.copyfile(tmp_path / "elsewhere.db", run / "study.db")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = _one_line(capsys, ["dashboard", str(run), "--port", str(port)])
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use); choose another --port" in err
