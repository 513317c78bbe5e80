"""Distillation: the loss terms, the model's outputs they read, and fine-tuning with an extra loss term."""

from __future__ import annotations

import pytest
import torch

from autoprune.distill import Distillation, DistillSettings
from autoprune.engine.losses import embedding_distill_loss, kd_logit_loss
from autoprune.engine.train import TrainSettings, fit
from autoprune.models.reid import Outputs, outputs
from autoprune.testing import loss_term_value, tiny_model
from tests.test_engine import _store


@pytest.mark.parametrize("training", [True, False])
def test_outputs_are_what_forward_computes(training):
    model = tiny_model().train(training)
    x = torch.randn(4, 3, 64, 32)
    out = outputs(model, x)
    if training:  # train-mode BN moves its running statistics: compare on a copy in the same state
        model = tiny_model().train()
        logits, feat = model(x)
        torch.testing.assert_close(out.logits, logits)
        torch.testing.assert_close(out.features, feat)
        torch.testing.assert_close(out.embedding, tiny_model().train().bnneck(feat))  # batch statistics
    else:
        torch.testing.assert_close(out.embedding, model(x))
    assert out.embedding.shape == out.features.shape == (4, model.feat_dim)


def test_kd_logit_loss_is_zero_only_when_the_distributions_agree():
    t = torch.randn(6, 5)
    assert kd_logit_loss(t.clone(), t, 4.0).abs() < 1e-6
    assert kd_logit_loss(t + 3.0, t, 4.0).abs() < 1e-5  # softmax ignores a shift
    assert kd_logit_loss(torch.randn(6, 5), t, 4.0) > 0.01
    # T^2 scaling: the same logits at T=1 give the plain KL
    s = torch.randn(6, 5)
    plain = torch.nn.functional.kl_div(s.log_softmax(1), t.softmax(1), reduction="batchmean")
    torch.testing.assert_close(kd_logit_loss(s, t, 1.0), plain)


def test_embedding_loss_compares_directions():
    e = torch.randn(5, 8)
    assert embedding_distill_loss(3 * e, e) < 1e-6
    torch.testing.assert_close(embedding_distill_loss(-e, e), torch.tensor(4.0))


def _outs(seed: int) -> Outputs:
    g = torch.Generator().manual_seed(seed)
    return Outputs(torch.randn(4, 3, generator=g), torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g))


def test_distillation_weights_each_term():
    s, t, batch = _outs(0), _outs(1), (torch.zeros(4, 3, 8, 4), torch.zeros(4, dtype=torch.long))
    logit = kd_logit_loss(s.logits, t.logits, 2.0)
    emb = embedding_distill_loss(s.embedding, t.embedding)
    torch.testing.assert_close(Distillation(DistillSettings(logit=0.5, temperature=2.0))(batch, s, t), 0.5 * logit)
    torch.testing.assert_close(Distillation(DistillSettings(embedding=3.0))(batch, s, t), 3.0 * emb)
    torch.testing.assert_close(Distillation(DistillSettings(1.0, 1.0, 2.0))(batch, s, t), logit + emb)
    with pytest.raises(ValueError, match="teacher's outputs"):
        Distillation(DistillSettings(logit=1.0))(batch, s, None)
    wider = Outputs(torch.randn(4, 5), t.features, t.embedding)
    with pytest.raises(ValueError, match="5 identities"):
        Distillation(DistillSettings(logit=1.0))(batch, s, wider)


def test_distillation_back_propagates_into_the_student_only():
    value, student = loss_term_value(Distillation(DistillSettings(1.0, 1.0)))
    value.backward()
    assert value > 0
    assert student.backbone.conv1.weight.grad is not None and student.classifier.weight.grad is not None


def test_fit_adds_the_extra_term_with_the_teachers_outputs_and_leaves_the_teacher_alone(tmp_path):
    store = _store(tmp_path)
    s = TrainSettings(epochs=1, batch_size=8, num_instances=4, warmup_epochs=0, seed=1)
    torch.manual_seed(0)
    teacher = tiny_model(num_classes=4).eval().requires_grad_(False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    seen = []

    def term(batch, student, teach):
        x, _ = batch
        seen.append((x.shape[0], teach.logits.requires_grad, student.logits.requires_grad))
        assert torch.equal(teach.embedding, outputs(teacher, x).embedding)  # same images, eval mode
        return 10.0 * embedding_distill_loss(student.embedding, teach.embedding)

    def train(extra):
        torch.manual_seed(0)
        model = tiny_model(num_classes=4)
        hist = fit(
            model, store, s, torch.device("cpu"), progress=False, extra_loss=extra, teacher=teacher if extra else None
        )
        return hist, model

    plain, _ = train(None)
    distilled, _ = train(term)
    assert seen == [(8, False, True)] * 2  # every step, teacher without gradients
    assert distilled[0]["loss"] > plain[0]["loss"]  # the term is part of the loss that was optimised
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert not teacher.training


def test_fit_refuses_an_extra_term_that_is_not_a_scalar(tmp_path):
    store = _store(tmp_path)
    s = TrainSettings(epochs=1, batch_size=8, num_instances=4, warmup_epochs=0)
    with pytest.raises(TypeError, match="scalar tensor"):
        fit(
            tiny_model(num_classes=4),
            store,
            s,
            torch.device("cpu"),
            progress=False,
            extra_loss=lambda b, st, t: st.logits,
        )


def test_interrupted_fit_resumes_to_the_same_weights(tmp_path):
    """The checkpoint carries the augmentation RNG: epoch 2 after a resume is epoch 2 of the straight run."""
    store = _store(tmp_path)
    s = TrainSettings(epochs=2, batch_size=8, num_instances=4, warmup_epochs=0, seed=2)
    torch.manual_seed(0)
    straight = tiny_model(num_classes=4)
    fit(straight, store, s, torch.device("cpu"), progress=False)

    states = []
    torch.manual_seed(0)
    first = tiny_model(num_classes=4)

    def stop_after_one(state):
        states.append(state)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(first, store, s, torch.device("cpu"), progress=False, checkpoint=stop_after_one)
    fit(first, store, s, torch.device("cpu"), progress=False, resume=states[0])
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(first.state_dict()[k], v, rtol=0, atol=0, msg=k)
