"""The example distillation scenario, proven with autoprune.testing (no training, CPU, seconds)."""

from __future__ import annotations

import torch
from autoprune_example.distill import RelationalDistillScenario, RelationalTerm

from autoprune.distill import DistillSettings
from autoprune.testing import ScenarioContract, loss_term_value, scenario_context


class TestRelationalDistillScenario(ScenarioContract):
    scenario_class = RelationalDistillScenario


def test_prunes_the_adapted_model_with_the_relational_term():
    ctx, rec = scenario_context(epochs=3, adapted=True, distill=DistillSettings(embedding=2.0))
    RelationalDistillScenario().run(ctx)
    (call,) = rec.of("prune")
    assert call.model is ctx.adapted and call.domain == "target" and call.epochs == 3
    assert isinstance(call.extra_loss, RelationalTerm) and call.extra_loss.weight == 2.0
    assert not rec.of("finetune")  # adapted once by the host: no adaptation of its own


def test_without_a_teacher_it_prunes_the_source_model_plainly():
    ctx, rec = scenario_context(epochs=3, distill=DistillSettings(embedding=2.0))
    RelationalDistillScenario().run(ctx)
    (call,) = rec.of("prune")
    assert call.model is ctx.model and call.extra_loss is None


def test_the_term_is_zero_for_identical_relations_and_trains_the_student():
    value, student = loss_term_value(RelationalTerm(1.0))
    assert value > 0
    value.backward()
    assert student.backbone.conv1.weight.grad is not None
    same, _ = loss_term_value(lambda b, s, t: RelationalTerm(1.0)(b, s, s))
    assert torch.allclose(same, torch.zeros(()))
