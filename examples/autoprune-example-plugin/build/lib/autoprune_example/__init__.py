"""A third-party autoprune plugin: the mean absolute weight of each filter as a criterion."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from autoprune import hookimpl
from autoprune.criteria import BaseCriterion, CriterionContext


class MeanAbsCriterion(BaseCriterion):
    """Mean |w| over each filter of the convs producing a channel (size-normalised L1)."""

    name = "example_mean_abs"

    def score(self, model: nn.Module, group: str, ctx: CriterionContext) -> torch.Tensor:
        modules = ctx.graph.modules
        convs = [modules[n] for n in ctx.graph.groups[group].out_modules if isinstance(modules[n], nn.Conv2d)]
        return sum(c.weight.detach().flatten(1).abs().mean(dim=1) for c in convs)


@hookimpl
def autoprune_register_criteria(register: Callable[..., None]) -> None:
    register(MeanAbsCriterion)
