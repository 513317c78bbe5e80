"""Re-ID losses: label-smoothed cross-entropy, batch-hard triplet, center loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cross_entropy_ls(logits: torch.Tensor, targets: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """Cross-entropy with label smoothing (Szegedy et al. 2016), as in the bag-of-tricks baseline."""
    return F.cross_entropy(logits, targets, label_smoothing=epsilon)


def hard_triplet_loss(features: torch.Tensor, targets: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) on euclidean distances.

    For each anchor: the farthest positive and the closest negative in the batch.
    """
    # sqrt of the clamped squared distance, not torch.cdist: cdist's gradient is NaN where a distance is exactly
    # zero (the diagonal, or two equal features, which bfloat16 training makes common)
    sq = features.pow(2).sum(dim=1)
    dist = (sq.view(-1, 1) + sq.view(1, -1) - 2 * features @ features.t()).clamp_min(1e-12).sqrt()
    same = targets.view(-1, 1) == targets.view(1, -1)
    hardest_pos = (dist * same).max(dim=1).values
    hardest_neg = dist.masked_fill(same, float("inf")).min(dim=1).values
    valid = torch.isfinite(hardest_neg)
    if not valid.any():
        return features.sum() * 0.0
    return F.relu(hardest_pos[valid] - hardest_neg[valid] + margin).mean()


class CenterLoss(nn.Module):
    """Center loss (Wen et al. 2016): squared distance of each feature to its class centre."""

    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (features - self.centers[targets]).pow(2).sum(dim=1).mean() / 2


def kd_logit_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Knowledge distillation on logits (Hinton et al. 2015): KL(teacher || student) at ``temperature``.

    Scaled by T^2 so its gradients keep their size as T changes.
    """
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.softmax(teacher / t, dim=1), reduction="batchmean") * (t * t)


def embedding_distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared distance between L2-normalised embeddings (= 2 - 2 cos), what cosine retrieval compares."""
    return (F.normalize(student, dim=1) - F.normalize(teacher, dim=1)).pow(2).sum(dim=1).mean()
