from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from autoprune import hookimpl
from autoprune.cli import main
from autoprune.config import load_config
from autoprune.criteria import BaseCriterion, CriterionContext
from autoprune.errors import PluginError, UserError
from autoprune.host import KINDS, PluginHost, catalog_markdown
from autoprune.models import build_model
from autoprune.pruning.groups import PruningGraph
from autoprune.pruning.surgery import score_groups
from autoprune.testing import CriterionContract


def test_builtins_load_as_plugins(host):
    assert "l1" in host.names("criterion")
    assert "one_shot" in host.names("strategy")
    assert "prune_then_finetune" in host.names("scenario")
    assert {"market1501", "synth"} <= set(host.names("dataset"))
    assert {"resnet18", "resnet50", "resnet10"} <= set(host.names("backbone"))
    # first-party plugins are registered as plugins of the autoprune distribution, all five kinds alike
    for kind, name, plugin in (
        ("criterion", "l1", "criteria"),
        ("strategy", "one_shot", "strategies"),
        ("scenario", "prune_then_finetune", "scenarios"),
        ("dataset", "synth", "datasets"),
        ("backbone", "resnet10", "backbones"),
    ):
        assert (host.registry[kind][name].plugin, host.registry[kind][name].distribution) == (
            f"autoprune:{plugin}",
            "autoprune",
        )


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

    with pytest.raises(
        PluginError,
        match="plugin 'typo' implements autoprune_register_criterion, which is not an "
        "autoprune hook \\(did you mean 'autoprune_register_criteria'\\?\\)",
    ):
        host.register_plugin(Typo(), name="typo")
    assert "l1" in host.names("criterion")  # the host is still usable without it


class _EntryPoint:
    """Just enough of importlib.metadata.EntryPoint for the host."""

    def __init__(self, name, obj):
        self.name, self.value, self._obj = name, f"fake_module:{name}", obj
        self.dist = None

    def load(self):
        return self._obj


def test_misspelled_hook_in_an_installed_plugin_is_one_line_exit_2(monkeypatch, capsys):
    from autoprune import host as host_mod
    from autoprune.cli import main

    class Typo:
        @hookimpl
        def autoprune_register_stratgies(self, register):
            pass

    monkeypatch.setattr(host_mod.importlib.metadata, "entry_points", lambda group: [_EntryPoint("typo", Typo())])
    host_mod.reset_host()
    try:
        rc = main(["plugins"])
    finally:
        host_mod.reset_host()
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1
    assert "plugin '?:typo' implements autoprune_register_stratgies" in err and "autoprune_register_strategies" in err


def test_allow_list_naming_nothing_installed_says_the_variable_did_it(monkeypatch, capsys):
    from autoprune import host as host_mod
    from autoprune.cli import main

    monkeypatch.setenv("AUTOPRUNE_LOAD_PLUGINS", "critera")
    host_mod.reset_host()
    try:
        rc = main(["plugins"])
    finally:
        host_mod.reset_host()
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1
    assert "AUTOPRUNE_LOAD_PLUGINS='critera' names critera, which no installed plugin provides" in err
    assert "unset it" in err


def test_unknown_name_under_an_allow_list_mentions_the_variable(monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_LOAD_PLUGINS", "criteria")
    with pytest.raises(UserError, match="unknown strategy 'third_party'; AUTOPRUNE_LOAD_PLUGINS='criteria' is set"):
        PluginHost().get("strategy", "third_party")


def test_unknown_name_suggests_close_match(host):
    with pytest.raises(UserError, match=r"unknown strategy 'one-shot' \(did you mean 'one_shot'\?\)"):
        host.get("strategy", "one-shot")


def test_allow_list_restricts_third_party_plugins_only(monkeypatch):
    """As llm's default plugins: the built-ins always load; the list picks which installed plugins do."""
    from autoprune import host as host_mod

    monkeypatch.setattr(
        host_mod.importlib.metadata,
        "entry_points",
        lambda group: [_EntryPoint("third", InlinePlugin()), _EntryPoint("other", InlinePlugin())],
    )
    monkeypatch.setenv("AUTOPRUNE_LOAD_PLUGINS", "criteria")  # a built-in's name: still accepted
    h = PluginHost()
    assert "l1" in h.names("criterion") and "one_shot" in h.names("strategy") and "resnet10" in h.names("backbone")
    assert "planted" not in h.names("criterion")  # neither third-party entry point was loaded
    monkeypatch.setenv("AUTOPRUNE_LOAD_PLUGINS", "third")
    h = PluginHost()
    assert "planted" in h.names("criterion") and "one_shot" in h.names("strategy")
    assert h.registry["criterion"]["planted"].plugin == "?:third"  # "other" stayed out (else: registered twice)


def test_builtin_entry_points_of_an_older_install_are_not_registered_twice(monkeypatch):
    """An install from before the built-ins left the entry points still lists them: they load once."""
    from autoprune import host as host_mod

    class Stale(_EntryPoint):
        def __init__(self):
            super().__init__("criteria", None)
            self.value = "autoprune_plugins.criteria"

        def load(self):
            raise AssertionError("a built-in's entry point must not be loaded")

    monkeypatch.setattr(host_mod.importlib.metadata, "entry_points", lambda group: [Stale()])
    assert "l1" in PluginHost().names("criterion")


def test_example_package_is_discovered_with_its_distribution_and_version(example_installed, capsys):
    h = example_installed
    for kind, name in (
        ("criterion", "example_mean_abs"),
        ("strategy", "example_gradual"),
        ("scenario", "example_warmup_then_prune"),
    ):
        reg = h.registry[kind][name]
        assert (reg.distribution, reg.version, reg.plugin) == (
            "autoprune-example-plugin",
            "0.1.0",
            "autoprune-example-plugin:example",
        )
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "example_gradual          autoprune-example-plugin 0.1.0" in out
    assert "options: rounds=2" in out
    model = build_model("resnet10", 4, host=h)
    graph = PruningGraph(model, (64, 32))
    crit = h.create("criterion", "example_mean_abs", {"example_mean_abs": {"bn_weight": 1}})
    assert crit.options == {"bn_weight": 1.0} and isinstance(crit.options["bn_weight"], float)
    s = crit.score(model, "layer2.out", CriterionContext(graph=graph, device=torch.device("cpu")))
    assert s.shape == (graph.groups["layer2.out"].channels,)


def test_example_options_through_config_and_cli(example_installed, capsys):
    cfg = load_config(preset="smoke", overrides=["plugins.example_gradual.rounds=3"])
    assert cfg["plugins"] == {"example_gradual": {"rounds": 3}}
    assert main(["config", "--preset", "smoke", "--set", "plugins.example_gradual.rounds=3"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)["plugins"]
    assert shown["example_gradual"] == {"rounds": 3}  # set
    assert shown["example_mean_abs"] == {"bn_weight": 0.0}  # default
    assert shown["iterative"] == {"steps": 3, "schedule": "linear"}
    assert main(["config", "--set", "plugins.example_gradual.round=3"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "autoprune: error: plugins.example_gradual.round: 'example_gradual' has no option "
        "'round' (did you mean 'rounds'?); its options: rounds"
    )


class OptionsPlugin:
    class WeightedCriterion(BaseCriterion):
        """Scores every channel ``weight``."""

        name = "weighted"
        options = {"weight": 1.0, "mode": "sum", "flag": False, "anything": None}

        def score(self, model, group, ctx):
            return torch.full((ctx.graph.groups[group].channels,), self.options["weight"])

    @hookimpl
    def autoprune_register_criteria(self, register):
        register(self.WeightedCriterion)


def test_options_merge_over_defaults_and_are_read_only(host):
    host.register_plugin(OptionsPlugin(), name="opts")
    crit = host.create("criterion", "weighted", {"weighted": {"weight": 2, "anything": [1, 2]}})
    assert dict(crit.options) == {"weight": 2.0, "mode": "sum", "flag": False, "anything": [1, 2]}
    with pytest.raises(TypeError):
        crit.options["weight"] = 3.0
    assert OptionsPlugin.WeightedCriterion.options["weight"] == 1.0  # the class's defaults are untouched
    assert dict(host.create("criterion", "weighted").options)["weight"] == 1.0


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "plugins.weighted.wieght=2",
            "plugins.weighted.wieght: 'weighted' has no option 'wieght' (did you mean 'weight'?); "
            "its options: weight, mode, flag, anything",
        ),
        (
            "plugins.weighted.weight=heavy",
            "plugins.weighted.weight must be float (the type of its default 1.0), got str 'heavy'",
        ),
        ("plugins.weighted.flag=1", "plugins.weighted.flag must be bool (the type of its default False), got int 1"),
        ("plugins.weighted.mode=3", "plugins.weighted.mode must be str (the type of its default 'sum'), got int 3"),
        ("plugins.weigted.weight=2", "plugins.weigted: no plugin is called 'weigted' (did you mean 'weighted'?)"),
        ("plugins.l1.weight=2", "plugins.l1: 'l1' takes no options"),
        ("plugins.weighted=2", "plugin options are set one at a time, as --set plugins.NAME.OPTION=value"),
        ("plugins.iterative.steps=0", "plugins.iterative: steps must be >= 1, got 0"),
    ],
)
def test_bad_plugin_options_are_user_errors_naming_plugin_and_option(host, override, message):
    host.register_plugin(OptionsPlugin(), name="opts")
    with pytest.raises(UserError) as info:
        load_config(preset="smoke", overrides=[override])
    assert message in str(info.value)


def test_plugins_section_in_a_file(host, tmp_path):
    host.register_plugin(OptionsPlugin(), name="opts")
    f = tmp_path / "c.yaml"
    f.write_text("plugins:\n  weighted: {weight: 3}\n  iterative: {schedule: exponential}\n")
    cfg = load_config(f, overrides=["plugins.weighted.mode=max"])
    assert cfg["plugins"] == {"weighted": {"weight": 3.0, "mode": "max"}, "iterative": {"schedule": "exponential"}}
    f.write_text("plugins:\n  weighted: 3\n")
    with pytest.raises(UserError, match="'plugins.weighted' must be a mapping of option names to values"):
        load_config(f)


def test_provenance_names_distribution_version_and_effective_options(host):
    host.register_plugin(OptionsPlugin(), name="opts", distribution="opts-dist", version="1.2.3")
    assert host.provenance("criterion", "weighted", {"weighted": {"mode": "max"}}) == {
        "name": "weighted",
        "kind": "criterion",
        "distribution": "opts-dist",
        "version": "1.2.3",
        "options": {"weight": 1.0, "mode": "max", "flag": False, "anything": None},
    }
    l1 = host.provenance("criterion", "l1")
    assert l1["distribution"] == "autoprune" and l1["version"] == importlib.metadata.version("autoprune")


def test_import_does_not_import_ray():
    code = "import sys, autoprune, autoprune.cli, autoprune.search.run; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_docs_list_every_builtin_as_the_registry_does(host):
    """docs/plugins.md's tables are `autoprune plugins --markdown`: regenerate them when this fails."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text()
    section = text.split("<!-- builtins:start -->\n")[1].split("<!-- builtins:end -->")[0]
    assert section == catalog_markdown(host)
    for kind in KINDS:  # every built-in name is in it, each with a line of its own
        for name in host.names(kind):
            if host.registry[kind][name].distribution == "autoprune":
                assert f"| `{name}` |" in section


def test_a_criterion_returning_channels_by_1_is_refused_by_the_host():
    class Column(BaseCriterion):
        name = "column"

        def score(self, model, group, ctx):
            return torch.ones(ctx.graph.groups[group].channels, 1)

    model = build_model("resnet10", 4)
    graph = PruningGraph(model, (64, 32))
    channels = graph.groups["layer1.out"].channels
    with pytest.raises(
        ValueError,
        match=rf"'column': expected {channels} scores for layer1.out, "
        rf"got a tensor of shape \[{channels}, 1\]",
    ):
        score_groups(model, Column(), CriterionContext(graph=graph, device=torch.device("cpu")))


def test_contract_failures_name_the_group_and_the_counts():
    """Installed packages get no assert rewriting: the kit's messages carry the shapes themselves."""

    class DropsOne(BaseCriterion):
        """One score short in layer1.out."""

        name = "drops_one"

        def score(self, model, group, ctx):
            n = ctx.graph.groups[group].channels
            return torch.ones(n - 1 if group == "layer1.out" else n)

    class TestDropsOne(CriterionContract):
        criterion_class = DropsOne

    with pytest.raises(AssertionError, match=r"^DropsOne: expected 64 scores for layer1.out, got 63$"):
        TestDropsOne().test_one_finite_score_per_channel_of_every_group()
