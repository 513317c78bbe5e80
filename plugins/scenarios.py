"""First-party scenarios: where pruning happens relative to source training and target fine-tuning."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from autoprune import hookimpl
from autoprune.scenarios import BaseScenario, ScenarioContext


class PruneThenFinetuneScenario(BaseScenario):
    """Prune the source-trained model, then fine-tune it on the target (the strategy's fine-tuning)."""

    name = "prune_then_finetune"

    def run(self, ctx: ScenarioContext) -> tuple[nn.Module, dict[str, Any]]:
        model = ctx.prune(ctx.model, ctx.target, ctx.epochs)
        return model, {"target": ctx.evaluate(model, ctx.target)}


@hookimpl
def autoprune_register_scenarios(register: Callable[..., None]) -> None:
    register(PruneThenFinetuneScenario)
