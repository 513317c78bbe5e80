"""Every built-in strategy against the strategy contract, plus what is specific to each."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autoprune.errors import UserError
from autoprune.host import instantiate
from autoprune.testing import StrategyContract, strategy_context, tiny_model, zeroed_channels
from autoprune_plugins.strategies import (
    GlobalStrategy,
    IterativeStrategy,
    OneShotStrategy,
    ProgressiveSoftStrategy,
    SoftStrategy,
    step_widths,
)


class TestOneShotStrategy(StrategyContract):
    strategy_class = OneShotStrategy


class TestIterativeStrategy(StrategyContract):
    strategy_class = IterativeStrategy
    strategy_options = {"steps": 2}


class TestSoftStrategy(StrategyContract):
    strategy_class = SoftStrategy


class TestProgressiveSoftStrategy(StrategyContract):
    strategy_class = ProgressiveSoftStrategy


class TestGlobalStrategy(StrategyContract):
    strategy_class = GlobalStrategy


def test_every_strategy_is_registered(host):
    assert {"one_shot", "iterative", "soft", "progressive_soft", "global"} <= set(host.names("strategy"))


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(st.sampled_from("abcd"), st.tuples(st.integers(1, 512), st.integers(1, 512)), min_size=1),
    st.integers(1, 6),
    st.sampled_from(["linear", "exponential"]),
)
def test_step_widths_shrink_monotonically_to_the_target(pairs, steps, schedule):
    start = {n: max(a, b) for n, (a, b) in pairs.items()}
    target = {n: min(a, b) for n, (a, b) in pairs.items()}
    stages = step_widths(start, target, steps, schedule)
    assert len(stages) == steps and stages[-1] == target
    previous = start
    for widths in stages:
        assert all(target[n] <= widths[n] <= previous[n] for n in start)
        previous = widths


def test_exponential_schedule_removes_more_early_than_linear():
    start, target = {"g": 512}, {"g": 64}
    linear = [w["g"] for w in step_widths(start, target, 4, "linear")]
    exponential = [w["g"] for w in step_widths(start, target, 4, "exponential")]
    assert linear == [400, 288, 176, 64]
    assert exponential == [304, 181, 108, 64]  # 512 * (1/8) ** (k/4): the same share of what is left each step


def test_unknown_schedule_is_a_user_error():
    with pytest.raises(UserError, match="schedule"):
        step_widths({"g": 8}, {"g": 4}, 2, "cubic")


@pytest.mark.parametrize("schedule", ["linear", "exponential"])
def test_iterative_finetunes_each_step_on_narrower_widths(schedule):
    model = tiny_model()
    ctx = strategy_context(model, epochs=7)
    base = ctx.graph.widths()
    instantiate(IterativeStrategy, {"steps": 3, "schedule": schedule}).run(model, ctx)
    calls = ctx.finetune.calls
    assert [c.epochs for c in calls] == [2, 2, 3]  # the remainder goes to the last step
    totals = [sum(c.widths.values()) for c in calls]
    assert sum(base.values()) > totals[0] > totals[1] > totals[2] == sum(ctx.counts.values())
    assert calls[-1].widths == ctx.counts == ctx.graph.widths()


def test_soft_zeroes_every_epoch_then_removes_exactly_the_zeroed_channels():
    model = tiny_model()
    ctx = strategy_context(model, epochs=3, noise=1e-2)  # noise: zeroed filters regrow, as in training
    base = ctx.graph.widths()
    SoftStrategy().run(model, ctx)
    [call] = ctx.finetune.calls
    assert call.epochs == 3 and call.widths == base  # nothing removed while training
    pruned = {n: base[n] - ctx.counts[n] for n in base}
    assert call.zeroed == [pruned] * 3  # re-zeroed after each epoch, despite regrowth
    assert ctx.graph.widths() == ctx.counts
    assert all(v == 0 for v in zeroed_channels(ctx.graph).values())  # no dead channel was kept


def test_progressive_soft_zeroes_a_growing_share_up_to_the_target():
    model = tiny_model()
    ctx = strategy_context(model, epochs=4, noise=1e-2)
    base = ctx.graph.widths()
    ProgressiveSoftStrategy().run(model, ctx)
    [call] = ctx.finetune.calls
    pruned = {n: base[n] - ctx.counts[n] for n in base}
    totals = [sum(z.values()) for z in call.zeroed]
    assert 0 < totals[0] < totals[1] < totals[2] < totals[3] == sum(pruned.values())
    assert call.zeroed[-1] == pruned
    assert ctx.graph.widths() == ctx.counts
    assert all(v == 0 for v in zeroed_channels(ctx.graph).values())


@pytest.mark.parametrize("strategy", [SoftStrategy, ProgressiveSoftStrategy])
def test_soft_without_epochs_is_one_shot(strategy):
    results = []
    for cls in (strategy, OneShotStrategy):
        model = tiny_model()
        cls().run(model, strategy_context(model, epochs=0))
        results.append(model.state_dict())
    for k, v in results[0].items():
        assert torch.equal(v, results[1][k]), k


def test_global_meets_the_budget_and_prunes_the_weak_group_most():
    model = tiny_model()
    conv = model.backbone.layer3[0].conv1
    with torch.no_grad():
        conv.weight[::2] *= 0.05  # half of this group's filters are weak
    ctx = strategy_context(model, budget_ratio=0.6, epochs=2)
    GlobalStrategy().run(model, ctx)
    widths = ctx.graph.widths()
    assert ctx.cost.macs(widths) <= ctx.budget.macs
    assert ctx.cost.macs(widths) > 0.9 * ctx.budget.macs  # stops as soon as it fits
    ratios = {n: w / ctx.cost.base_widths[n] for n, w in widths.items()}
    assert min(ratios, key=ratios.get) == "layer3.0.conv1"
    assert ratios["layer3.0.conv1"] <= 0.5 < max(ratios.values())
    assert all(w % 8 == 0 for w in widths.values())
    assert [c.epochs for c in ctx.finetune.calls] == [2]


def test_global_keeps_min_keep_of_every_group():
    model = tiny_model()
    ctx = strategy_context(model, budget_ratio=0.3, min_keep=0.25, epochs=0)
    GlobalStrategy().run(model, ctx)
    for name, w in ctx.graph.widths().items():
        assert w >= 0.25 * ctx.cost.base_widths[name], name


def test_global_with_an_impossible_budget_is_a_user_error():
    model = tiny_model()
    ctx = strategy_context(model, budget_ratio=0.6, epochs=0)
    ctx.budget.min_keep = 0.9
    with pytest.raises(UserError, match="min_keep"):
        GlobalStrategy().run(model, ctx)
