"""First-party strategies: how to reach the target widths."""

from __future__ import annotations

from typing import Callable

from torch import nn

from autoprune import hookimpl
from autoprune.pruning.surgery import prune_to_counts, score_groups
from autoprune.strategies import BaseStrategy, StrategyContext


class OneShotStrategy(BaseStrategy):
    """Score once, remove every pruned channel at once, then fine-tune for all the epochs."""

    name = "one_shot"

    def run(self, model: nn.Module, ctx: StrategyContext) -> nn.Module:
        scores = score_groups(model, ctx.criterion, ctx.criterion_context())
        prune_to_counts(ctx.graph, ctx.counts, scores)
        if ctx.epochs:
            ctx.finetune(model, ctx.epochs)
        return model


@hookimpl
def autoprune_register_strategies(register: Callable[..., None]) -> None:
    register(OneShotStrategy)
