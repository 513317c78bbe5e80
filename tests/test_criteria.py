"""Every built-in criterion against the criterion contract, plus what is specific to each."""

from __future__ import annotations

import torch

from autoprune.pruning.surgery import lowest
from autoprune.testing import CriterionContract, classification_loss, criterion_context, tiny_graph, tiny_model
from autoprune_plugins.criteria import (
    BNScaleCriterion,
    FPGMCriterion,
    GradientCriterion,
    L1Criterion,
    L2Criterion,
    RandomCriterion,
    TaylorActivationCriterion,
    TaylorCriterion,
)


class TestL1Criterion(CriterionContract):
    criterion_class = L1Criterion


class TestL2Criterion(CriterionContract):
    criterion_class = L2Criterion


class TestFPGMCriterion(CriterionContract):
    criterion_class = FPGMCriterion


class TestBNScaleCriterion(CriterionContract):
    criterion_class = BNScaleCriterion


class TestTaylorCriterion(CriterionContract):
    criterion_class = TaylorCriterion


class TestTaylorActivationCriterion(CriterionContract):
    criterion_class = TaylorActivationCriterion


class TestGradientCriterion(CriterionContract):
    criterion_class = GradientCriterion


class TestRandomCriterion(CriterionContract):
    criterion_class = RandomCriterion
    ranks_planted = False


def _scores(criterion, model, graph, **ctx_options):
    ctx = criterion_context(graph, **ctx_options)
    criterion.prepare(model, ctx)
    return {name: criterion.score(model, name, ctx) for name in graph.groups}


def _one_batch_gradients(model, graph):
    """Gradients of one random batch, with BN in eval mode as the data-driven criteria take them."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    batch = next(criterion_context(graph, num_batches=1).batches(1))
    model.zero_grad()
    classification_loss(model, batch).backward()


def test_every_criterion_is_registered(host):
    expected = {"l1", "l2", "fpgm", "bn_scale", "taylor", "taylor_activation", "gradient", "random"}
    assert expected <= set(host.names("criterion"))


def test_fpgm_ranks_a_duplicated_filter_lowest():
    model = tiny_model()
    graph = tiny_graph(model)
    conv = model.backbone.layer2[0].conv1
    out_channels, fan_in = conv.weight.flatten(1).shape
    # orthonormal filters are all equally far apart (and equally large), so only the duplicate stands out
    q, _ = torch.linalg.qr(torch.randn(fan_in, out_channels, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        conv.weight.copy_(q.T.reshape(conv.weight.shape))
        conv.weight[7] = conv.weight[20]
    scores = _scores(FPGMCriterion(), model, graph)["layer2.0.conv1"]
    assert set(lowest(scores, 2)) == {7, 20}


def test_bn_scale_sums_gamma_over_a_coupled_group():
    model = tiny_model()
    graph = tiny_graph(model)
    block = model.backbone.layer2[0]
    expected = block.bn2.weight.abs() + block.downsample[1].weight.abs()
    torch.testing.assert_close(_scores(BNScaleCriterion(), model, graph)["layer2.out"], expected.detach())


def test_taylor_is_the_squared_first_order_term_of_the_whole_channel():
    model = tiny_model()
    graph = tiny_graph(model)
    scores = _scores(TaylorCriterion(), model, graph, num_batches=1)["layer2.0.conv1"]
    _one_batch_gradients(model, graph)
    block = model.backbone.layer2[0]
    w, bn = block.conv1.weight, block.bn1
    first_order = (w * w.grad).flatten(1).sum(1) + bn.weight * bn.weight.grad + bn.bias * bn.bias.grad
    torch.testing.assert_close(scores, first_order.detach().pow(2), rtol=1e-4, atol=1e-12)


def test_taylor_activation_agrees_with_the_bn_parameter_gradients():
    # For an eval-mode BN, a = gamma * xhat + beta, so sum over (n, y, x) of a * dL/da equals
    # gamma * dL/dgamma + beta * dL/dbeta: the hooks must see the BN output and its gradient.
    model = tiny_model()
    graph = tiny_graph(model)
    scores = _scores(TaylorActivationCriterion(), model, graph, num_batches=1)["layer2.0.conv1"]
    _one_batch_gradients(model, graph)
    bn = model.backbone.layer2[0].bn1
    total = (bn.weight * bn.weight.grad + bn.bias * bn.bias.grad).abs().detach()
    ratio = scores / total
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio.mean())), rtol=1e-3, atol=0.0)


def test_random_depends_on_the_seed():
    model = tiny_model()
    graph = tiny_graph(model)
    a = _scores(RandomCriterion(), model, graph, seed=0)["layer3.out"]
    b = _scores(RandomCriterion(), model, graph, seed=1)["layer3.out"]
    assert not torch.equal(a, b)
