"""The strategy plugin API: reach target channel counts on a model with a criterion.

A strategy never writes its own training loop: it gets fine-tuning from the host through the context.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import nn

from autoprune.criteria import BaseCriterion, CriterionContext
from autoprune.pruning.budget import Budget
from autoprune.pruning.flops import CostModel
from autoprune.pruning.groups import PruningGraph

FinetuneFn = Callable[..., list]


@dataclass
class StrategyContext:
    """What a strategy works with.

    ``finetune(model, epochs, on_epoch_end=None, on_step_end=None)`` trains on the scenario's domain;
    ``criterion_context()`` gives a fresh context for scoring the model as it is now.
    """

    graph: PruningGraph
    counts: dict[str, int]  # target channels per group
    criterion: BaseCriterion
    criterion_context: Callable[[], CriterionContext]
    finetune: FinetuneFn
    epochs: int  # fine-tuning epochs the strategy may spend in total
    cost: CostModel | None = None  # MACs of any widths (for strategies that set widths themselves)
    budget: Budget | None = None


class BaseStrategy(abc.ABC):
    """Prunes ``model`` (in place, through ``ctx.graph``) to ``ctx.counts`` and fine-tunes it."""

    name: str = ""
    # Option name -> default, configured under ``plugins.<name>.<option>``; the instance the host creates
    # sees the merged values as a read-only ``self.options``.
    options: Mapping[str, Any] = MappingProxyType({})
    # False for strategies that choose the widths themselves (global ranking against the budget):
    # the host then checks the budget instead of the per-group widths.
    follows_policy: bool = True

    @abc.abstractmethod
    def run(self, model: nn.Module, ctx: StrategyContext) -> nn.Module:
        """Return the pruned, fine-tuned model; its group widths must equal ``ctx.counts``."""
