"""A third-party autoprune plugin: a criterion, a strategy and a scenario, each with an option.

Everything autoprune needs is the entry point in pyproject.toml and the three ``@hookimpl`` functions at
the bottom; the options are the classes' ``options`` attributes, set by users under
``plugins.<name>.<option>``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from autoprune import hookimpl
from autoprune.criteria import BaseCriterion, CriterionContext
from autoprune.pruning.surgery import prune_to_counts, score_groups
from autoprune.scenarios import BaseScenario, ScenarioContext
from autoprune.strategies import BaseStrategy, StrategyContext


class MeanAbsCriterion(BaseCriterion):
    """Mean |w| of each filter of the convs producing a channel, plus ``bn_weight`` times |gamma|."""

    name = "example_mean_abs"
    options = {"bn_weight": 0.0}

    def score(self, model: nn.Module, group: str, ctx: CriterionContext) -> torch.Tensor:
        modules = [ctx.graph.modules[n] for n in ctx.graph.groups[group].out_modules]
        score = torch.zeros(ctx.graph.groups[group].channels)
        for m in modules:
            if isinstance(m, nn.Conv2d):
                score += m.weight.detach().flatten(1).abs().mean(dim=1).cpu()
            elif isinstance(m, nn.BatchNorm2d) and self.options["bn_weight"]:
                score += self.options["bn_weight"] * m.weight.detach().abs().cpu()
        return score


class GradualStrategy(BaseStrategy):
    """Remove the channels in ``rounds`` equal rounds, re-scoring before and fine-tuning after each."""

    name = "example_gradual"
    options = {"rounds": 2}

    @staticmethod
    def validate_options(options: Any) -> None:
        if options["rounds"] < 1:
            raise ValueError(f"rounds must be >= 1, got {options['rounds']}")

    def run(self, model: nn.Module, ctx: StrategyContext) -> nn.Module:
        start, rounds = ctx.graph.widths(), self.options["rounds"]
        per_round, remainder = divmod(ctx.epochs, rounds)
        for k in range(1, rounds + 1):
            widths = {n: start[n] - (start[n] - ctx.counts[n]) * k // rounds for n in start}
            prune_to_counts(ctx.graph, widths, score_groups(model, ctx.criterion, ctx.criterion_context()))
            epochs = per_round + (remainder if k == rounds else 0)
            if epochs:
                ctx.finetune(model, epochs)
        return model


class WarmupThenPruneScenario(BaseScenario):
    """Adapt the unpruned model to the target for ``warmup`` of the epochs, then prune there with the rest."""

    name = "example_warmup_then_prune"
    options = {"warmup": 0.5}

    @staticmethod
    def validate_options(options: Any) -> None:
        if not 0.0 <= options["warmup"] <= 1.0:
            raise ValueError(f"warmup is a fraction of the epochs, in [0, 1]; got {options['warmup']}")

    def run(self, ctx: ScenarioContext) -> tuple[nn.Module, dict[str, Any]]:
        warmup = round(ctx.epochs * self.options["warmup"])
        if warmup:
            ctx.finetune(ctx.model, ctx.target, warmup)
        model = ctx.prune(ctx.model, ctx.target, ctx.epochs - warmup)
        # ctx.source is None when the user prunes a trained checkpoint with data.source: null
        source = ctx.evaluate(model, ctx.source) if ctx.source is not None and len(ctx.source.query) > 0 else None
        return model, {"target": ctx.evaluate(model, ctx.target), "source": source}


@hookimpl
def autoprune_register_criteria(register: Callable[..., None]) -> None:
    register(MeanAbsCriterion)


@hookimpl
def autoprune_register_strategies(register: Callable[..., None]) -> None:
    register(GradualStrategy)


@hookimpl
def autoprune_register_scenarios(register: Callable[..., None]) -> None:
    register(WarmupThenPruneScenario)
