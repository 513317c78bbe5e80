"""Cheap first look at a candidate: adaptive BatchNorm (Li et al., EagleEye, ECCV 2020).

Right after pruning, BatchNorm running statistics describe the unpruned network and make the pruned one
look far worse than it will be after fine-tuning. Re-estimating them on a few target batches (no
gradient step) gives a score that ranks candidates well at a small fraction of a fine-tune's cost;
the search spends fine-tuning only on candidates whose score is in the best fraction seen so far.
"""

from __future__ import annotations

import torch
from torch import nn

from autoprune.data.loading import IdentitySampler, ImageStore, augment, normalize


@torch.no_grad()
def adaptive_bn(
    model: nn.Module,
    store: ImageStore,
    device: torch.device,
    batches: int = 8,
    batch_size: int = 32,
    num_instances: int = 4,
    seed: int = 0,
) -> None:
    """Replace every BatchNorm's running statistics with their average over ``batches`` target batches."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
    model.train().to(device)
    sampler = IdentitySampler(store.pids.tolist(), batch_size, num_instances, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    for idx in sampler.batches(0)[:batches]:
        model(augment(normalize(store.get(idx)), gen).to(device))
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    model.eval()


def keep_candidate(score: float, previous: list[float], keep_fraction: float, warmup: int) -> bool:
    """Whether a candidate's screening score is in the best ``keep_fraction`` of those seen so far."""
    if len(previous) < warmup:
        return True
    ranked = sorted(previous, reverse=True)
    cutoff = ranked[max(0, min(len(ranked) - 1, int(keep_fraction * len(ranked)) - 1))]
    return score >= cutoff
