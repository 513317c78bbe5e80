"""Every built-in scenario against the scenario contract, plus the order of what each asks the host."""

from __future__ import annotations

from autoprune.testing import ScenarioContract, scenario_context
from autoprune_plugins.scenarios import (
    DirectTransferScenario,
    FinetuneThenPruneScenario,
    PruneDuringFinetuneScenario,
    PruneThenFinetuneScenario,
)


class TestPruneThenFinetuneScenario(ScenarioContract):
    scenario_class = PruneThenFinetuneScenario


class TestFinetuneThenPruneScenario(ScenarioContract):
    scenario_class = FinetuneThenPruneScenario


class TestPruneDuringFinetuneScenario(ScenarioContract):
    scenario_class = PruneDuringFinetuneScenario


class TestDirectTransferScenario(ScenarioContract):
    scenario_class = DirectTransferScenario


def _trace(scenario):
    ctx, rec = scenario_context(epochs=3)
    scenario().run(ctx)
    return [(c.kind, c.domain, c.epochs) for c in rec.calls], ctx, rec


def test_every_scenario_is_registered(host):
    expected = {"prune_then_finetune", "finetune_then_prune", "prune_during_finetune", "direct_transfer"}
    assert expected <= set(host.names("scenario"))


def test_prune_then_finetune_prunes_on_the_target():
    trace, _, _ = _trace(PruneThenFinetuneScenario)
    assert trace == [("prune", "target", 3), ("evaluate", "source", None), ("evaluate", "target", None)]


def test_finetune_then_prune_adapts_the_unpruned_model_first():
    trace, ctx, rec = _trace(FinetuneThenPruneScenario)
    assert trace[:2] == [("finetune", "target", 3), ("prune", "target", 3)]
    assert rec.of("finetune")[0].model is ctx.model and rec.of("prune")[0].model is ctx.model


def test_prune_during_finetune_is_one_strategy_run_on_the_target():
    trace, _, _ = _trace(PruneDuringFinetuneScenario)
    assert [t for t in trace if t[0] != "evaluate"] == [("prune", "target", 3)]


def test_direct_transfer_never_trains_on_the_target():
    trace, _, rec = _trace(DirectTransferScenario)
    assert [t for t in trace if t[0] != "evaluate"] == [("prune", "source", 3)]
    assert {c.domain for c in rec.of("evaluate")} == {"source", "target"}


def test_finetune_then_prune_prunes_the_adapted_model_when_the_host_has_one():
    from autoprune.testing import scenario_context

    ctx, rec = scenario_context(epochs=3, adapted=True)
    FinetuneThenPruneScenario().run(ctx)
    assert [(c.kind, c.domain, c.epochs) for c in rec.calls if c.kind != "evaluate"] == [("prune", "target", 3)]
    assert rec.of("prune")[0].model is ctx.adapted


def test_built_in_scenarios_distil_through_the_extra_loss_api_when_asked():
    from autoprune.distill import Distillation, DistillSettings
    from autoprune.testing import scenario_context

    on = DistillSettings(logit=1.0, embedding=0.5)
    for scenario in (PruneThenFinetuneScenario, FinetuneThenPruneScenario, PruneDuringFinetuneScenario):
        ctx, rec = scenario_context(adapted=True, distill=on)
        scenario().run(ctx)
        term = rec.of("prune")[0].extra_loss
        assert isinstance(term, Distillation) and term.settings == on, scenario.name
        for ctx, rec in (scenario_context(adapted=True), scenario_context(distill=on)):  # off, or no teacher
            scenario().run(ctx)
            assert all(c.extra_loss is None for c in rec.of("prune") + rec.of("finetune")), scenario.name
    ctx, rec = scenario_context(adapted=True, distill=on)
    DirectTransferScenario().run(ctx)  # the teacher saw target labels: never on the source-only scenario
    assert rec.of("prune")[0].extra_loss is None
