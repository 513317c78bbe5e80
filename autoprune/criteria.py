"""The criterion plugin API: score every channel of a prunable group (higher score = keep)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from autoprune.pruning.groups import PruningGraph

Batch = tuple[torch.Tensor, torch.Tensor]  # (images, labels), already on the device


@dataclass
class CriterionContext:
    """What a criterion may use: the model's graph, and for data-driven criteria batches and a loss."""

    graph: PruningGraph
    device: torch.device
    batches: Callable[[int], Iterator[Batch]] = lambda n: iter(())
    loss: Callable[[nn.Module, Batch], torch.Tensor] | None = None
    num_batches: int = 4
    seed: int = 0
    state: dict[str, Any] = field(default_factory=dict)  # a criterion's scratch space between prepare and score


class BaseCriterion(abc.ABC):
    """Scores channels. Subclasses set ``name`` and implement :meth:`score`.

    ``prepare`` runs once per pruning step before any group is scored; data-driven criteria collect
    gradients or activations there.
    """

    name: str = ""
    # Option name -> default, configured under ``plugins.<name>.<option>``; the instance the host creates
    # sees the merged values as a read-only ``self.options``.
    options: Mapping[str, Any] = MappingProxyType({})
    data_driven: bool = False

    def prepare(self, model: nn.Module, ctx: CriterionContext) -> None:  # noqa: B027 (optional hook, a no-op)
        """Collect what scoring needs (gradients, activations); default: nothing."""

    @abc.abstractmethod
    def score(self, model: nn.Module, group: str, ctx: CriterionContext) -> torch.Tensor:
        """One score per channel of ``group`` (shape ``[channels]``); the lowest are removed first."""
