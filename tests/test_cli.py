"""The command line: help on every subcommand, user mistakes exit 2 with one line and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from autoprune.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoprune.cli", *args], capture_output=True, text=True, timeout=120)


HELP_COMMANDS = [
    [],
    ["search"],
    ["train"],
    ["worker"],
    ["latency"],
    ["plugins"],
    ["plugin"],
    ["plugin", "new"],
    ["dashboard"],
    ["report"],
    ["export"],
    ["config"],
    ["data"],
    ["data", "synth"],
]


@pytest.mark.parametrize("cmd", HELP_COMMANDS)
def test_help_on_every_subcommand(cmd):
    """Every subcommand of `autoprune --help` (a test below checks the list is complete) answers --help."""
    r = run(*cmd, "--help")
    assert r.returncode == 0 and "usage: autoprune" in r.stdout


def test_help_list_names_every_subcommand():
    import argparse

    from autoprune.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {cmd[0] for cmd in HELP_COMMANDS if cmd}


def test_plugins_lists_names_and_distributions():
    r = run("plugins")
    assert r.returncode == 0
    assert "criterion:" in r.stdout and "l1" in r.stdout and "autoprune" in r.stdout
    assert "resnet50" in r.stdout


def test_user_error_is_one_line_exit_2_no_traceback(tmp_path):
    r = run(
        "search",
        "--preset",
        "smoke",
        "--set",
        "trial.criterion=nope",
        "--out",
        str(tmp_path / "r"),
        "--set",
        f"data.root={tmp_path / 'd'}",
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "unknown criterion 'nope'" in r.stderr
    # a typo costs nothing: no data generated, no baseline trained
    assert not (tmp_path / "d").exists()


def test_debug_shows_traceback(tmp_path):
    r = run("--debug", "config", "--set", "search.n_trials=-1")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_run_dir_from_another_config_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "identity.json").write_text('{"identity": "something-else"}')
    rc = main(["search", "--preset", "smoke", "--out", str(out), "--set", f"data.root={tmp_path / 'd'}"])
    assert rc == 2
    assert "holds a search with another config" in capsys.readouterr().err


def test_unwritable_run_dir_is_refused_up_front(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    rc = main(["search", "--preset", "smoke", "--out", str(blocker / "run"), "--set", f"data.root={tmp_path / 'd'}"])
    assert rc == 2
    assert "is not writable" in capsys.readouterr().err


def _suggested_commands() -> set[str]:
    """Every `autoprune ...` command an error message or hint in the package tells a user to run."""
    import re
    from pathlib import Path

    import autoprune

    found = set()
    for path in Path(autoprune.__file__).parent.rglob("*.py"):
        found |= set(re.findall(r"`(autoprune [^`]+)`", path.read_text()))
    return found


def test_every_command_a_message_suggests_exists(capsys):
    from autoprune.cli import build_parser

    commands = _suggested_commands()
    assert {"autoprune plugins", "autoprune config"} <= commands
    for command in sorted(commands):
        argv = [w if "{" not in w else "x" for w in command.split()[1:] if w != "..."]
        try:
            _, extra = build_parser().parse_known_args(argv)
        except SystemExit as exc:  # only a placeholder's missing argument is acceptable
            assert exc.code == 2 and "are required" in capsys.readouterr().err, command
            continue
        assert extra == [], f"{command!r}: autoprune has no {' '.join(extra)}"
    for command in ("autoprune plugins", "autoprune config"):  # the cheap ones, run for real
        assert main(command.split()[1:]) == 0, command


@pytest.mark.parametrize("kind", ["criterion", "strategy", "scenario"])
def test_plugin_new_writes_a_package_whose_tests_pass(kind, tmp_path, monkeypatch):
    import tomllib

    out = tmp_path / "pkg"
    assert main(["plugin", "new", kind, f"my_{kind}", "--out", str(out)]) == 0
    project = tomllib.loads((out / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["autoprune"] == {f"my_{kind}": f"autoprune_my_{kind}"}
    monkeypatch.syspath_prepend(str(out))
    # its own tests, as written, in this process: the contract suite for its kind
    assert pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", str(out), str(out / "tests")]) == 0
    from autoprune.host import PluginHost

    h = PluginHost(load_entry_points=False)
    h.register_plugin(__import__(f"autoprune_my_{kind}"), name="skeleton")
    assert f"my_{kind}" in h.names(kind) and h.registry[kind][f"my_{kind}"].options


@pytest.mark.parametrize(
    "argv, message",
    [
        (["plugin", "new", "sampler", "x"], "KIND must be one of criterion, strategy, scenario"),
        (["plugin", "new", "criterion", "My-Crit"], "NAME 'My-Crit' must be lower-case"),
    ],
)
def test_plugin_new_refuses_bad_kinds_and_names(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "p")]) == 2
    assert message in capsys.readouterr().err


# -- commands on bad paths and damaged files: exit 2, one line, before any work ----------------------


def _one_line_error(capsys, argv):
    from autoprune.cli import main

    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda text: text[: len(text) // 2], "is truncated or not JSON"),
        (
            lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "baseline"}),
            "is incomplete or was edited (baseline metrics missing)",
        ),
        (lambda text: json.dumps({**json.loads(text), "best": {"trial": 0}}), "best is missing its trial"),
        (lambda text: json.dumps({**json.loads(text), "plots": ["../../etc/passwd"]}), "plots must be file names"),
        (lambda text: "[]", "is not a JSON object"),
    ],
)
def test_report_on_a_damaged_report_json(smoke_run, tmp_path, capsys, damage, fragment):
    out, _ = smoke_run
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(damage((out / "report.json").read_text()))
    err = _one_line_error(capsys, ["report", str(run)])
    assert f"{run / 'report.json'} " in err and fragment in err and "rerun the same `autoprune search`" in err
    assert not (run / "report.md").exists()


def test_report_budget_must_be_a_ratio(smoke_run, capsys):
    out, _ = smoke_run
    assert "--budget is a MACs ratio in (0, 1], got nan" in _one_line_error(
        capsys, ["report", str(out), "--budget", "nan"]
    )


def test_train_out_naming_an_existing_file(tmp_path, capsys):
    (tmp_path / "model.pt").write_text("mine")
    err = _one_line_error(
        capsys,
        ["train", "--preset", "smoke", "--out", str(tmp_path / "model.pt"), "--set", f"data.root={tmp_path / 'data'}"],
    )
    assert f"--out {tmp_path / 'model.pt'} is a file" in err and "give a folder path" in err
    assert (tmp_path / "model.pt").read_text() == "mine" and not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "where, fragment",
    [
        ("missing/model.onnx", "the folder {tmp}/missing does not exist; create it or choose another path"),
        (".", "is a folder; give a file path, e.g. {tmp}/pruned.onnx"),
    ],
)
def test_export_out_into_a_missing_folder_or_onto_a_folder(smoke_run, tmp_path, capsys, monkeypatch, where, fragment):
    out, _ = smoke_run
    import autoprune.export as export

    monkeypatch.setattr(export, "load_pruned", lambda *a, **k: pytest.fail("loaded the model before checking --out"))
    err = _one_line_error(capsys, ["export", str(out), "--format", "onnx", "--out", str(tmp_path / where)])
    assert fragment.format(tmp=tmp_path) in err
