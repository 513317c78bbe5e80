"""The scenario plugin API: where pruning happens relative to source training and target fine-tuning."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable

from torch import nn

from autoprune.data.domain import Domain


@dataclass
class ScenarioContext:
    """A trial's model and the host services a scenario orders.

    - ``prune(model, domain, epochs)``: the configured strategy and criterion prune ``model`` to the
      trial's widths, fine-tuning ``epochs`` on ``domain`` (data-driven criteria also use ``domain``);
    - ``finetune(model, domain, epochs)``: plain fine-tuning, no pruning;
    - ``evaluate(model, domain)``: ``{"rank1", "mAP", ...}`` on the domain's query/gallery.

    ``options`` are the scenario's own options (the same read-only mapping as ``self.options``).
    """

    model: nn.Module
    source: Domain | None              # None when a trained model is pruned without source data
    target: Domain
    epochs: int
    prune: Callable[[nn.Module, Domain, int], nn.Module]
    finetune: Callable[[nn.Module, Domain, int], None]
    evaluate: Callable[[nn.Module, Domain], dict[str, Any]]
    options: Mapping[str, Any] = field(default_factory=dict)


class BaseScenario(abc.ABC):
    """Orders pruning and fine-tuning; returns the final model and its measurements."""

    name: str = ""
    needs_source: bool = False  # True: refused up front when data.source is null (a trained model, no source)
    # Option name -> default, configured under ``plugins.<name>.<option>``; the instance the host creates
    # sees the merged values as a read-only ``self.options``.
    options: Mapping[str, Any] = MappingProxyType({})

    @abc.abstractmethod
    def run(self, ctx: ScenarioContext) -> tuple[nn.Module, dict[str, Any]]:
        """Return ``(model, {"target": metrics, "source": metrics or None})``."""
