"""First-party criteria: how to score channels (higher score = keep).

A residual-coupled group (``layer3.out``) spans several convs and BNs; every criterion adds up its
per-module scores over the group's ``out_modules``. Data-driven criteria collect gradients or
activations in ``prepare`` with the BN layers in eval mode, so the running statistics (and every
weight) are left as they were and the scores describe the network as it is deployed.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Iterator
from typing import cast

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from autoprune import hookimpl
from autoprune.criteria import BaseCriterion, CriterionContext


def _convs(group: str, ctx: CriterionContext) -> list[tuple[str, nn.Conv2d]]:
    """(name, conv) of every conv whose output channels are the group's."""
    modules = ctx.graph.modules
    return [(n, modules[n]) for n in ctx.graph.groups[group].out_modules if isinstance(modules[n], nn.Conv2d)]


def _bns(group: str, ctx: CriterionContext) -> list[tuple[str, _BatchNorm]]:
    """(name, bn) of every BatchNorm normalising the group's channels."""
    modules = ctx.graph.modules
    return [(n, modules[n]) for n in ctx.graph.groups[group].out_modules if isinstance(modules[n], _BatchNorm)]


def _filters(model: nn.Module, group: str, ctx: CriterionContext) -> list[torch.Tensor]:
    """Weights of every conv whose output channels are the group's, as [channels, -1] matrices."""
    return [conv.weight.detach().flatten(1) for _, conv in _convs(group, ctx)]


def _params(group: str, ctx: CriterionContext) -> list[torch.Tensor]:
    """Every weight and bias of the group's out-modules: what is removed with its channels (dim 0)."""
    modules = ctx.graph.modules
    return [
        p
        for n in ctx.graph.groups[group].out_modules
        for pname in ("weight", "bias")
        if isinstance(p := getattr(modules[n], pname, None), torch.Tensor)
    ]


@contextlib.contextmanager
def _scoring_mode(model: nn.Module) -> Iterator[None]:
    """Train mode (the loss needs logits) with BN in eval mode; restores every module's mode and clears .grad."""
    modes = {m: m.training for m in model.modules()}
    model.train()
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.eval()  # running statistics stay as they were: scoring must not change the model
    try:
        with torch.enable_grad():
            yield
    finally:
        model.zero_grad(set_to_none=True)
        for m, training in modes.items():
            m.training = training


def _each_batch(model: nn.Module, ctx: CriterionContext, who: str, after_backward: Callable[[], None]) -> int:
    """Backpropagate ``ctx.loss`` on each of ``ctx.num_batches`` batches, calling ``after_backward`` after each.

    Gradients are those of one batch at a time; returns how many batches there were.
    """
    if ctx.loss is None:
        raise ValueError(f"criterion {who!r} is data-driven: its CriterionContext needs a loss and batches")
    n = 0
    with _scoring_mode(model):
        for batch in ctx.batches(ctx.num_batches):
            model.zero_grad(set_to_none=True)
            ctx.loss(model, batch).backward()
            after_backward()
            n += 1
    if n == 0:
        raise ValueError(f"criterion {who!r} is data-driven but ctx.batches({ctx.num_batches}) gave no batch")
    return n


def _add(sums: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    sums[key] = sums[key] + value if key in sums else value


class L1Criterion(BaseCriterion):
    """L1 norm of each filter (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017).

    score_c = sum over convs producing channel c of ||W_c||_1; residual-coupled convs add up.
    """

    name = "l1"

    def score(self, model: nn.Module, group: str, ctx: CriterionContext) -> torch.Tensor:
        return cast(torch.Tensor, sum(w.abs().sum(dim=1) for w in _filters(model, group, ctx)))


class L2Criterion(BaseCriterion):
    """L2 norm of each filter (He et al., "Soft Filter Pruning", IJCAI 2018).

    score_c = sum over convs producing channel c of ||W_c||_2. Written here rather than with
    Torch-Pruning's GroupMagnitudeImportance, which also counts the next layers' input weights of the
    channel and squares the norm: a different criterion (group norm, Fang et al. 2023).
    """

    name = "l2"

    def score(self, model: nn.Module, group: str, ctx: CriterionContext) -> torch.Tensor:
        return sum(w.norm(p=2, dim=1) for w in _filters(model, group, ctx))


class FPGMCriterion(BaseCriterion):
    """Filter pruning via geometric median (He et al., CVPR 2019).

    score_c = sum over convs of sum_j ||W_c - W_j||_2 over the other filters j of that conv: filters
    close to the layer's geometric median are the most replaceable and go first. Written here because
    Torch-Pruning's FPGMImportance measures distances between |W|^2 (sign lost) and adds the next
    layers' input weights, which does not rank a near-zero filter last.
    """

    name = "fpgm"

    def score(self, model: nn.Module, group: str, ctx: CriterionContext) -> torch.Tensor:
        return cast(
            torch.Tensor, sum(torch.cdist(w[None], w[None]).squeeze(0).sum(dim=1) for w in _filters(model, group, ctx))
        )


class BNScaleCriterion(BaseCriterion):
    """|gamma| of the BatchNorm after each conv (network slimming, Liu et al., ICCV 2017).

    score_c = sum over the group's BNs of |gamma_c|, by Torch-Pruning's BNScaleImportance with sum
    reduction and no normalisation.
    """

    name = "bn_scale"

    def score(self, model: nn.Module, group: str, ctx: CriterionContext) -> torch.Tensor:
        scores = tp.importance.BNScaleImportance(group_reduction="sum", normalizer=None)(ctx.graph.tp_group(group))
        if scores is None:
            raise ValueError(f"criterion 'bn_scale' needs a BatchNorm after the convs of group {group}")
        return scores


class TaylorCriterion(BaseCriterion):
    """First-order Taylor estimate of the loss change when a channel is removed (Molchanov et al., CVPR 2019).

    score_c = mean over ``ctx.num_batches`` batches of (sum over the parameters s removed with channel c
    of w_s * dL/dw_s)^2: the channel's filter in each conv of the group and each BN's gamma_c and beta_c
    (the paper's group form). As in the paper the square is taken per batch, then averaged: squaring
    one accumulated gradient lets a useful channel's terms cancel to about zero by chance. Written
    here because Torch-Pruning's GroupTaylorImportance sums |w * g| per weight, adds the next layers'
    input weights, and reads gradients left on the model, which scoring must clear.
    """

    name = "taylor"
    data_driven = True

    def prepare(self, model: nn.Module, ctx: CriterionContext) -> None:
        sums: dict[str, torch.Tensor] = {}

        def accumulate() -> None:
            for group in ctx.graph.groups:
                first_order = sum(
                    (p.detach() * p.grad).reshape(p.shape[0], -1).sum(dim=1)
                    for p in _params(group, ctx)
                    if p.grad is not None
                )
                if isinstance(first_order, torch.Tensor):
                    _add(sums, group, first_order.pow(2).cpu())

        n = _each_batch(model, ctx, self.name, accumulate)
        ctx.state[self.name] = {k: v / n for k, v in sums.items()}

    def score(self, model: nn.Module, group: str, ctx: CriterionContext) -> torch.Tensor:
        return ctx.state[self.name].get(group, torch.zeros(ctx.graph.groups[group].channels))


class TaylorActivationCriterion(BaseCriterion):
    """Taylor expansion on feature maps (Molchanov et al., "Pruning CNNs for Resource Efficient Inference", ICLR 2017).

    score_c = sum over the group's BNs of the mean over batches of |mean over (batch, y, x) of
    a_c * dL/da_c|, with a the BN output, captured by forward hooks and tensor gradient hooks.
    Torch-Pruning has no activation-gradient criterion.
    """

    name = "taylor_activation"
    data_driven = True

    def prepare(self, model: nn.Module, ctx: CriterionContext) -> None:
        modules = ctx.graph.modules
        bns = [n for g in ctx.graph.groups for n, _ in _bns(g, ctx)]
        sums: dict[str, torch.Tensor] = {}

        def hook(name: str) -> Callable[..., torch.Tensor]:
            def forward_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
                if not output.requires_grad:
                    return output
                act = output.detach()

                def grad_hook(grad: torch.Tensor) -> None:
                    contrib = (act * grad).mean(dim=(0, 2, 3)).abs().cpu()
                    _add(sums, name, contrib)

                output.register_hook(grad_hook)
                # ResNet blocks modify a BN output in place (ReLU(inplace), "out += identity"); handing
                # on a copy keeps the tensor whose value and gradient we read untouched.
                return output.clone()

            return forward_hook

        handles = [modules[n].register_forward_hook(hook(n)) for n in bns]
        try:
            n = _each_batch(model, ctx, self.name, lambda: None)
        finally:
            for h in handles:
                h.remove()
        ctx.state[self.name] = {k: v / n for k, v in sums.items()}

    def score(self, model: nn.Module, group: str, ctx: CriterionContext) -> torch.Tensor:
        sums = ctx.state[self.name]
        total = torch.zeros(ctx.graph.groups[group].channels)
        for name, _ in _bns(group, ctx):
            if name in sums:
                total += sums[name]
        return total


class GradientCriterion(BaseCriterion):
    """Norm of each filter's accumulated gradient (Nguyen-Meidine et al., "Progressive Gradient Pruning", 2019).

    score_c = sum over convs producing channel c of ||sum over batches of dL/dW_c||_2: filters the loss
    barely pulls on go first. Torch-Pruning has no gradient-norm criterion.
    """

    name = "gradient"
    data_driven = True

    def prepare(self, model: nn.Module, ctx: CriterionContext) -> None:
        convs = {n: conv for g in ctx.graph.groups for n, conv in _convs(g, ctx)}
        sums: dict[str, torch.Tensor] = {}

        def accumulate() -> None:
            for name, conv in convs.items():
                if conv.weight.grad is not None:
                    _add(sums, name, conv.weight.grad.detach().flatten(1).clone())

        _each_batch(model, ctx, self.name, accumulate)
        ctx.state[self.name] = {n: g.norm(p=2, dim=1).cpu() for n, g in sums.items()}

    def score(self, model: nn.Module, group: str, ctx: CriterionContext) -> torch.Tensor:
        norms = ctx.state[self.name]
        total = torch.zeros(ctx.graph.groups[group].channels)
        for name, _ in _convs(group, ctx):
            if name in norms:
                total += norms[name]
        return total


class RandomCriterion(BaseCriterion):
    """Uniform random scores, the baseline every criterion must beat (e.g. Liu et al., ICLR 2019).

    Seeded by ``ctx.seed`` and the group's name, so a trial is reproducible. Written here because
    Torch-Pruning's RandomImportance draws from the global RNG.
    """

    name = "random"

    def score(self, model: nn.Module, group: str, ctx: CriterionContext) -> torch.Tensor:
        gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + zlib.crc32(group.encode()))
        return torch.rand(ctx.graph.groups[group].channels, generator=gen)


@hookimpl
def autoprune_register_criteria(register: Callable[..., None]) -> None:
    for cls in (
        L1Criterion,
        L2Criterion,
        FPGMCriterion,
        BNScaleCriterion,
        TaylorCriterion,
        TaylorActivationCriterion,
        GradientCriterion,
        RandomCriterion,
    ):
        register(cls)
