from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from autoprune import hookimpl
from autoprune.criteria import BaseCriterion
from autoprune.errors import PluginError, UserError
from autoprune.host import PluginHost


def test_builtins_load_through_entry_points(host):
    assert "l1" in host.names("criterion")
    assert "one_shot" in host.names("strategy")
    assert "prune_then_finetune" in host.names("scenario")
    assert {"market1501", "synth"} <= set(host.names("dataset"))
    assert {"resnet18", "resnet50", "resnet10"} <= set(host.names("backbone"))
    # first-party plugins come from the autoprune distribution's entry points, not a direct import
    assert host.registry["criterion"]["l1"].plugin == "autoprune:criteria"


class PlantedCriterion(BaseCriterion):
    name = "planted"

    def score(self, model, group, ctx):
        return torch.arange(ctx.graph.groups[group].channels, dtype=torch.float)


class InlinePlugin:
    @hookimpl
    def autoprune_register_criteria(self, register):
        register(PlantedCriterion)


def test_inline_third_party_plugin_registers_and_unregisters(host):
    host.register_plugin(InlinePlugin(), name="inline")
    assert host.get("criterion", "planted") is PlantedCriterion
    assert host.registry["criterion"]["planted"].distribution == "<inline>"
    host.unregister_plugin("inline")
    with pytest.raises(UserError, match="unknown criterion 'planted'"):
        host.get("criterion", "planted")


def test_duplicate_name_names_both_plugins(host):
    class Dup:
        @hookimpl
        def autoprune_register_criteria(self, register):
            register("l1", PlantedCriterion)

    host.register_plugin(Dup(), name="dup-plugin")
    with pytest.raises(PluginError, match=r"criterion 'l1' is registered twice: by 'autoprune:criteria'.*'dup-plugin'"):
        host.names("criterion")


def test_hook_that_raises_names_plugin_and_hook(host):
    class Broken:
        @hookimpl
        def autoprune_register_strategies(self, register):
            raise RuntimeError("boom")

    host.register_plugin(Broken(), name="broken")
    with pytest.raises(PluginError, match="'broken'.*autoprune_register_strategies: RuntimeError: boom"):
        host.names("strategy")


def test_misspelled_hook_fails_loudly(host):
    class Typo:
        @hookimpl
        def autoprune_register_criterion(self, register):  # missing the final "a"
            pass

    with pytest.raises(Exception, match="autoprune_register_criterion"):
        host.register_plugin(Typo(), name="typo")


def test_unknown_name_suggests_close_match(host):
    with pytest.raises(UserError, match=r"unknown strategy 'one-shot' \(did you mean 'one_shot'\?\)"):
        host.get("strategy", "one-shot")


def test_allow_list_restricts_entry_points(monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_LOAD_PLUGINS", "criteria")
    h = PluginHost()
    assert "l1" in h.names("criterion")
    assert h.names("strategy") == []  # the strategies entry point was not loaded


def test_example_package_installs_and_is_used(tmp_path, monkeypatch):
    """The examples/ third-party package, installed with pip, is discovered through its entry point."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), "examples/autoprune-example-plugin"], check=True)
    monkeypatch.syspath_prepend(str(target))
    h = PluginHost()
    reg = h.registry["criterion"]["example_mean_abs"]
    assert reg.distribution == "autoprune-example-plugin"
    from autoprune.models import build_model
    from autoprune.pruning.groups import PruningGraph
    from autoprune.criteria import CriterionContext

    model = build_model("resnet10", 4, host=h)
    graph = PruningGraph(model, (64, 32))
    crit = h.create("criterion", "example_mean_abs")
    s = crit.score(model, "layer2.out", CriterionContext(graph=graph, device=torch.device("cpu")))
    assert s.shape == (graph.groups["layer2.out"].channels,)


def test_import_does_not_import_ray():
    code = "import sys, autoprune, autoprune.cli, autoprune.search.run; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
