"""Structural surgery: remove the lowest-scored channels of each group so it keeps the given count."""

from __future__ import annotations

import torch
from torch import nn

from autoprune.criteria import BaseCriterion, CriterionContext
from autoprune.pruning.groups import PruningGraph


def score_groups(
    model: nn.Module, criterion: BaseCriterion, ctx: CriterionContext, groups: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """Scores of every channel of every (or the named) group, computed before any channel is removed."""
    criterion.prepare(model, ctx)
    out = {}
    for name in groups if groups is not None else list(ctx.graph.groups):
        s = criterion.score(model, name, ctx)
        s = torch.as_tensor(s).detach().float().cpu()
        expected = ctx.graph.groups[name].channels
        if tuple(s.shape) != (expected,):  # [channels, 1] too: a score per channel is a 1-D tensor, as the kit checks
            got = s.shape[0] if s.dim() == 1 else f"a tensor of shape {list(s.shape)}"
            raise ValueError(f"criterion {criterion.name!r}: expected {expected} scores for {name}, got {got}")
        if not torch.isfinite(s).all():
            s = torch.nan_to_num(s, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
        out[name] = s
    return out


def lowest(scores: torch.Tensor, remove: int, channel_groups: int = 1) -> list[int]:
    """Indices of the ``remove`` lowest scores (ties broken by index, so pruning is deterministic).

    With ``channel_groups`` > 1 (channels feeding a grouped conv) every block loses the same offsets, the
    ones whose scores summed over the blocks are lowest, as Torch-Pruning's pruners do for group convs.
    """
    if remove <= 0:
        return []
    if channel_groups > 1:
        if remove % channel_groups or scores.numel() % channel_groups:
            raise ValueError(
                f"{remove} of {scores.numel()} channels cannot be removed evenly from "
                f"{channel_groups} conv groups; use a multiple of {channel_groups}"
            )
        size = scores.numel() // channel_groups
        summed = torch.nan_to_num(scores.reshape(channel_groups, size).sum(dim=0), nan=float("-inf"))
        offsets = lowest(summed, remove // channel_groups)
        return sorted(o + k * size for k in range(channel_groups) for o in offsets)
    order = sorted(range(scores.numel()), key=lambda i: (float(scores[i]), i))
    return order[:remove]


def prune_to_counts(graph: PruningGraph, counts: dict[str, int], scores: dict[str, torch.Tensor]) -> None:
    """Shrink each group to ``counts[name]`` channels, removing its lowest-scored channels."""
    for name, keep in counts.items():
        group = graph.groups[name]
        if keep < group.channels:
            graph.prune(name, lowest(scores[name], group.channels - keep, group.channel_groups))
