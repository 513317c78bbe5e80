"""Shared fixtures: a plugin host, small models, and the smoke run (built once per session)."""

from __future__ import annotations

import os

import pytest

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
