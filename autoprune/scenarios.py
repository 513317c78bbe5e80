"""The scenario plugin API: where pruning happens relative to source training and target fine-tuning."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import nn

from autoprune.data.domain import Domain
from autoprune.distill import DistillSettings


@dataclass
class ScenarioContext:
    """A trial's model and the host services a scenario orders.

    Models: ``model`` is this trial's own copy of the source-trained model. ``adapted`` is this trial's
    own copy of the *target-adapted* unpruned model (the source model fine-tuned ``adapt_epochs`` on the
    target, computed once per search and shared by every trial and worker), ``None`` when
    ``trial.adapt_epochs`` is 0. ``teacher`` is that same adapted model, shared and frozen (eval mode): read
    it, never train or prune it. ``distill`` is the configured ``trial.distill``.

    Services (``extra_loss`` is optional everywhere; see below):
    - ``prune(model, domain, epochs, extra_loss=None)``: the configured strategy and criterion prune
      ``model`` *in place* to the trial's widths, fine-tuning ``epochs`` on ``domain`` (data-driven criteria
      also use ``domain``), and return it (the same object; use the returned one);
    - ``finetune(model, domain, epochs, extra_loss=None)``: plain fine-tuning in place, no pruning;
    - ``evaluate(model, domain)``: ``{"rank1", "mAP", ...}`` on the domain's query/gallery.

    ``options`` are the scenario's own options (the same read-only mapping as ``self.options``).

    ``extra_loss(batch, student, teacher) -> scalar tensor`` is added to the re-ID loss at every step:
    ``batch`` is ``(images, pids)``, ``student`` the :class:`autoprune.models.reid.Outputs` of the model
    being trained, ``teacher`` those of ``teacher`` on the same images, computed without gradients
    (``None`` when there is no teacher). :class:`autoprune.distill.Distillation` is one.
    """

    model: nn.Module
    source: Domain | None  # None when a trained model is pruned without source data
    target: Domain
    epochs: int
    prune: Callable[..., nn.Module]
    finetune: Callable[..., None]
    evaluate: Callable[[nn.Module, Domain], dict[str, Any]]
    options: Mapping[str, Any] = field(default_factory=dict)
    teacher: nn.Module | None = None
    adapted: nn.Module | None = None
    adapt_epochs: int = 0
    distill: DistillSettings = field(default_factory=DistillSettings)


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
