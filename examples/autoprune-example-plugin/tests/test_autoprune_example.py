"""The example plugins against autoprune's contract suites, plus what their options change."""

from __future__ import annotations

import pytest
from autoprune_example import GradualStrategy, MeanAbsCriterion, WarmupThenPruneScenario

from autoprune.errors import UserError
from autoprune.host import instantiate
from autoprune.testing import (
    CriterionContract,
    ScenarioContract,
    StrategyContract,
    scenario_context,
    score_all,
    strategy_context,
    tiny_graph,
    tiny_model,
)


class TestMeanAbsCriterion(CriterionContract):
    criterion_class = MeanAbsCriterion


class TestMeanAbsCriterionWithBN(CriterionContract):
    criterion_class = MeanAbsCriterion
    criterion_options = {"bn_weight": 0.5}


class TestGradualStrategy(StrategyContract):
    strategy_class = GradualStrategy
    criterion_class = MeanAbsCriterion


class TestWarmupThenPruneScenario(ScenarioContract):
    scenario_class = WarmupThenPruneScenario


def test_bn_weight_adds_the_bn_scale():
    model = tiny_model()
    graph = tiny_graph(model)
    plain = score_all(instantiate(MeanAbsCriterion), model, graph)
    with_bn = score_all(instantiate(MeanAbsCriterion, {"bn_weight": 1.0}), model, graph)
    bn = graph.modules["backbone.layer1.0.bn2"]  # one of the BNs of the residual group layer1.out
    assert (with_bn["layer1.out"] - plain["layer1.out"] >= bn.weight.detach().abs() - 1e-6).all()


@pytest.mark.parametrize("rounds", [1, 3])
def test_gradual_prunes_in_its_rounds(rounds):
    model = tiny_model()
    ctx = strategy_context(model, epochs=4)
    instantiate(GradualStrategy, {"rounds": rounds}).run(model, ctx)
    calls = ctx.finetune.calls
    assert len(calls) == rounds and sum(c.epochs for c in calls) == 4
    assert ctx.graph.widths() == ctx.counts


def test_warmup_splits_the_epochs():
    scenario = instantiate(WarmupThenPruneScenario, {"warmup": 0.25})
    ctx, rec = scenario_context(epochs=4, options=scenario.options)
    scenario.run(ctx)
    assert [(c.kind, c.epochs) for c in rec.calls if c.kind != "evaluate"] == [("finetune", 1), ("prune", 3)]


def test_a_warmup_outside_0_1_is_refused():
    with pytest.raises(UserError, match="warmup"):
        instantiate(WarmupThenPruneScenario, {"warmup": 2.0})
