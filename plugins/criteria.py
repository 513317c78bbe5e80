"""First-party criteria: how to score channels (higher score = keep)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from autoprune import hookimpl
from autoprune.criteria import BaseCriterion, CriterionContext


def _filters(model: nn.Module, group: str, ctx: CriterionContext) -> list[torch.Tensor]:
    """Weights of every conv whose output channels are the group's, as [channels, -1] matrices."""
    modules = ctx.graph.modules
    return [modules[name].weight.detach().flatten(1) for name in ctx.graph.groups[group].out_modules
            if isinstance(modules[name], nn.Conv2d)]


class L1Criterion(BaseCriterion):
    """L1 norm of each filter (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017).

    score_c = sum over convs producing channel c of ||W_c||_1; residual-coupled convs add up.
    """

    name = "l1"

    def score(self, model: nn.Module, group: str, ctx: CriterionContext) -> torch.Tensor:
        return sum(w.abs().sum(dim=1) for w in _filters(model, group, ctx))


@hookimpl
def autoprune_register_criteria(register: Callable[..., None]) -> None:
    register(L1Criterion)
