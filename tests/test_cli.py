"""The command line: help on every subcommand, user mistakes exit 2 with one line and no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from autoprune.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoprune.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("cmd", [[], ["search"], ["train"], ["plugins"], ["data", "synth"], ["config"]])
def test_help_on_every_subcommand(cmd):
    r = run(*cmd, "--help")
    assert r.returncode == 0 and "usage: autoprune" in r.stdout


def test_plugins_lists_names_and_distributions():
    r = run("plugins")
    assert r.returncode == 0
    assert "criterion:" in r.stdout and "l1" in r.stdout and "autoprune" in r.stdout
    assert "resnet50" in r.stdout


def test_user_error_is_one_line_exit_2_no_traceback(tmp_path):
    r = run("search", "--preset", "smoke", "--set", "trial.criterion=nope", "--out", str(tmp_path / "r"),
            "--set", f"data.root={tmp_path / 'd'}")
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


@pytest.mark.parametrize("argv, message", [
    (["plugin", "new", "sampler", "x"], "KIND must be one of criterion, strategy, scenario"),
    (["plugin", "new", "criterion", "My-Crit"], "NAME 'My-Crit' must be lower-case"),
])
def test_plugin_new_refuses_bad_kinds_and_names(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "p")]) == 2
    assert message in capsys.readouterr().err
