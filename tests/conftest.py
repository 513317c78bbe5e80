"""Shared fixtures: a plugin host, small models, and the smoke run (built once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tomllib

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def host():
    """A fresh plugin host; inline plugins registered in a test are gone after it."""
    from autoprune import host as host_mod

    host_mod.reset_host()
    h = host_mod.get_host()
    yield h
    host_mod.reset_host()


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One end-to-end smoke search (tiny ResNet, tiny synthetic data, 3 trials), shared by several tests."""
    from autoprune.cli import main

    root = tmp_path_factory.mktemp("smoke")
    out = root / "run"
    rc = main(["search", "--preset", "smoke", "--quiet", "--out", str(out), "--set", f"data.root={root / 'data'}"])
    assert rc == 0
    return out, root


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "autoprune-example-plugin"


def install_entry_points(package: Path, site: Path) -> None:
    """What ``pip install`` does for discovery, without building anything: a dist-info folder with the
    package's name, version and entry points on ``site``, next to its importable source."""
    project = tomllib.loads((package / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (info / "entry_points.txt").write_text(
        "[autoprune]\n" + "".join(f"{k} = {v}\n" for k, v in project["entry-points"]["autoprune"].items())
    )


@pytest.fixture
def example_installed(tmp_path, monkeypatch):
    """The examples/ package installed (entry points and all) for this test; a fresh process-wide host."""
    from autoprune import host as host_mod

    install_entry_points(EXAMPLE, tmp_path / "site")
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    host_mod.reset_host()
    yield host_mod.get_host()
    host_mod.reset_host()


FINISHED_REPORT = {
    "budget": {"macs_ratio": 0.5, "macs": 10**12, "input_size": [32, 16]},
    "baseline": {
        "macs": 2.0e8,
        "params": 5.0e6,
        "target": {"rank1": 0.5, "mAP": 0.3},
        "direct_transfer": {"rank1": 0.2},
    },
    "config": {"finetune_epochs": 1},
    "trials": [{"number": 0, "state": "COMPLETE", "macs_ratio": 0.5, "target": {"rank1": 0.4, "mAP": 0.2}}],
    "best": {
        "trial": 0,
        "macs": 1.0e8,
        "params": 2.5e6,
        "target": {"rank1": 0.4, "mAP": 0.2},
        "policy": {"layer1.out": 0.5},
        "final_epochs": 0,
    },
    "plots": [],
}


@pytest.fixture
def finished_run(tmp_path):
    """A finished run directory without a search: an unpruned resnet10 as model/pruned.pt and a report.json
    that `autoprune report` and `export` accept (a budget far above the model, input 32x16)."""
    import json

    from autoprune.models import build_model
    from autoprune.pruning.serialize import save_pruned

    run = tmp_path / "run"
    save_pruned(build_model("resnet10", 2), run / "model" / "pruned.pt")
    (run / "report.json").write_text(json.dumps(FINISHED_REPORT))
    return run
