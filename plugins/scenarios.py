"""First-party scenarios: where pruning happens relative to source training and target fine-tuning.

Every scenario scores the final model on the target, and on the source too when the source has a
query set (how much of the source accuracy survives pruning and adaptation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from autoprune import hookimpl
from autoprune.distill import Distillation
from autoprune.engine.train import LossTerm
from autoprune.scenarios import BaseScenario, ScenarioContext


def _metrics(model: nn.Module, ctx: ScenarioContext) -> dict[str, Any]:
    """``{"target": ..., "source": ... or None}`` for the final model."""
    source = ctx.evaluate(model, ctx.source) if ctx.source is not None and len(ctx.source.query) > 0 else None
    return {"target": ctx.evaluate(model, ctx.target), "source": source}


def distillation(ctx: ScenarioContext) -> LossTerm | None:
    """The configured distillation from ``ctx.teacher`` (``trial.distill``), or None when it is off."""
    return Distillation(ctx.distill) if ctx.distill.enabled and ctx.teacher is not None else None


class PruneThenFinetuneScenario(BaseScenario):
    """Prune the source-trained model, then fine-tune it on the target (the strategy's fine-tuning).

    The recovery distils from the adapted teacher when ``trial.distill`` asks for it.
    """

    name = "prune_then_finetune"

    def run(self, ctx: ScenarioContext) -> tuple[nn.Module, dict[str, Any]]:
        model = ctx.prune(ctx.model, ctx.target, ctx.epochs, extra_loss=distillation(ctx))
        return model, _metrics(model, ctx)


class FinetuneThenPruneScenario(BaseScenario):
    """Prune the target-adapted unpruned model on the target, recovering ``ctx.epochs`` (+ distillation).

    The adapted model is the one the host computed once per search (``ctx.adapted``, ``trial.adapt_epochs``
    epochs); without it (``trial.adapt_epochs: 0``) every trial adapts its own copy first, for ``ctx.epochs``.
    """

    name = "finetune_then_prune"

    def run(self, ctx: ScenarioContext) -> tuple[nn.Module, dict[str, Any]]:
        model = ctx.adapted
        if model is None:
            model = ctx.model
            ctx.finetune(model, ctx.target, ctx.epochs)
        model = ctx.prune(model, ctx.target, ctx.epochs, extra_loss=distillation(ctx))
        return model, _metrics(model, ctx)


class PruneDuringFinetuneScenario(PruneThenFinetuneScenario):
    """Prune while adapting to the target: one strategy run whose fine-tuning is the adaptation.

    Meant for strategies that interleave pruning with training (``iterative``, ``soft``,
    ``progressive_soft``); with ``one_shot`` it is the same as ``prune_then_finetune``.
    """

    # The same run as prune_then_finetune (one ctx.prune on the target, inherited): a name of its own says
    # what the pairing with an interleaving strategy means, and keeps configs and studies that use it valid.
    name = "prune_during_finetune"


class DirectTransferScenario(BaseScenario):
    """Prune and fine-tune on the source only, then score on the target: no target label is used.

    So no distillation either: the teacher was adapted with target labels.
    """

    name = "direct_transfer"
    needs_source = True

    def run(self, ctx: ScenarioContext) -> tuple[nn.Module, dict[str, Any]]:
        assert ctx.source is not None  # needs_source: the search refuses a null data.source first
        model = ctx.prune(ctx.model, ctx.source, ctx.epochs)
        return model, _metrics(model, ctx)


@hookimpl
def autoprune_register_scenarios(register: Callable[..., None]) -> None:
    for cls in (
        PruneThenFinetuneScenario,
        FinetuneThenPruneScenario,
        PruneDuringFinetuneScenario,
        DirectTransferScenario,
    ):
        register(cls)
