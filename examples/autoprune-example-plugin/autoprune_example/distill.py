"""A third-party scenario that distils with its own loss term, through the scenario API only.

``example_relational`` prunes the target-adapted model (``ctx.adapted``) and lets it recover while
matching the teacher's *relations*: the cosine similarity of every pair of images in the batch (relational
knowledge distillation, Park et al. CVPR 2019), which is what retrieval ranks by. Set its weight with
``trial.distill.embedding`` (the scenario reuses that key; 0 turns the term off).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autoprune import hookimpl
from autoprune.models.reid import Outputs
from autoprune.scenarios import BaseScenario, ScenarioContext


class RelationalTerm:
    """``weight * mean((S_student - S_teacher)^2)`` over the batch's pairwise cosine similarities."""

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def __call__(
        self, batch: tuple[torch.Tensor, torch.Tensor], student: Outputs, teacher: Outputs | None
    ) -> torch.Tensor:
        if teacher is None:
            return student.embedding.sum() * 0.0  # no teacher: the term vanishes, training goes on
        s = F.normalize(student.embedding.float(), dim=1)
        t = F.normalize(teacher.embedding.float(), dim=1)
        return self.weight * (s @ s.T - t @ t.T).pow(2).mean()


class RelationalDistillScenario(BaseScenario):
    """Prune the adapted model on the target; recover with relational distillation from the teacher."""

    name = "example_relational"

    def run(self, ctx: ScenarioContext) -> tuple[nn.Module, dict[str, Any]]:
        model = ctx.adapted if ctx.adapted is not None else ctx.model
        term = RelationalTerm(ctx.distill.embedding) if ctx.teacher is not None and ctx.distill.embedding else None
        model = ctx.prune(model, ctx.target, ctx.epochs, extra_loss=term)
        has_source = ctx.source is not None and len(ctx.source.query) > 0
        source = ctx.evaluate(model, ctx.source) if has_source else None
        return model, {"target": ctx.evaluate(model, ctx.target), "source": source}


@hookimpl
def autoprune_register_scenarios(register: Callable[..., None]) -> None:
    register(RelationalDistillScenario)
