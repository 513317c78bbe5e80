"""Distillation from the target-adapted unpruned model: the loss term a recovering pruned model adds.

:class:`Distillation` is an extra loss term as :meth:`ScenarioContext.finetune` and ``prune`` take it
(``term(batch, student, teacher) -> scalar``): a logit term, KL divergence to the teacher's softened
class distribution (Hinton et al. 2015), and an embedding term, the squared distance between the
L2-normalised BNNeck embeddings (pruning keeps their width, so teacher and student match). The
built-in scenarios use it through the same API a third-party scenario has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from autoprune.engine.losses import embedding_distill_loss, kd_logit_loss
from autoprune.models.reid import Outputs


@dataclass(frozen=True)
class DistillSettings:
    """``trial.distill``: the weight of each term (0 turns it off) and the logit term's temperature."""

    logit: float = 0.0
    embedding: float = 0.0
    temperature: float = 4.0

    @property
    def enabled(self) -> bool:
        return self.logit > 0 or self.embedding > 0

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> DistillSettings:
        d = cfg["trial"]["distill"]
        return cls(logit=d["logit"], embedding=d["embedding"], temperature=d["temperature"])

    def describe(self) -> str:
        """One phrase for summaries: which terms, with their weights."""
        if not self.enabled:
            return "no distillation"
        parts = [f"logit KL x{self.logit:g} at T={self.temperature:g}"] if self.logit else []
        parts += [f"embedding x{self.embedding:g}"] if self.embedding else []
        return "distillation (" + ", ".join(parts) + ")"


class Distillation:
    """The distillation loss term: ``logit * KL_T(teacher || student) + embedding * |e_s - e_t|^2``."""

    def __init__(self, settings: DistillSettings) -> None:
        self.settings = settings

    def __call__(
        self, batch: tuple[torch.Tensor, torch.Tensor], student: Outputs, teacher: Outputs | None
    ) -> torch.Tensor:
        if teacher is None:
            raise ValueError(
                "distillation needs the teacher's outputs; fine-tune through the host's services, "
                "which pass them when the search has an adapted model (trial.adapt_epochs > 0)"
            )
        s = self.settings
        loss = student.logits.new_zeros(())
        if s.logit:
            if student.logits.shape != teacher.logits.shape:
                raise ValueError(
                    f"the teacher scores {teacher.logits.shape[1]} identities and the student "
                    f"{student.logits.shape[1]}: logit distillation needs both on the target"
                )
            loss = loss + s.logit * kd_logit_loss(student.logits.float(), teacher.logits.float(), s.temperature)
        if s.embedding:
            loss = loss + s.embedding * embedding_distill_loss(student.embedding.float(), teacher.embedding.float())
        return loss
