"""The strategy plugin API: reach target channel counts on a model with a criterion.

A strategy never writes its own training loop: it gets fine-tuning from the host through the context.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable

from torch import nn

from autoprune.criteria import BaseCriterion, CriterionContext
from autoprune.pruning.groups import PruningGraph

FinetuneFn = Callable[..., list]


@dataclass
class StrategyContext:
    """What a strategy works with.

    ``finetune(model, epochs, on_epoch_end=None, on_step_end=None)`` trains on the scenario's domain;
    ``criterion_context()`` gives a fresh context for scoring the model as it is now.
    """

    graph: PruningGraph
    counts: dict[str, int]            # target channels per group
    criterion: BaseCriterion
    criterion_context: Callable[[], CriterionContext]
    finetune: FinetuneFn
    epochs: int                       # fine-tuning epochs the strategy may spend in total
    steps: int = 3                    # for iterative / progressive strategies
    schedule: str = "linear"          # "linear" or "exponential" step schedule


class BaseStrategy(abc.ABC):
    """Prunes ``model`` (in place, through ``ctx.graph``) to ``ctx.counts`` and fine-tunes it."""

    name: str = ""

    @abc.abstractmethod
    def run(self, model: nn.Module, ctx: StrategyContext) -> nn.Module:
        """Return the pruned, fine-tuned model; its group widths must equal ``ctx.counts``."""
