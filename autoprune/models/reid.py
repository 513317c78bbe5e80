"""The re-ID network: a CNN backbone, global pooling, a BNNeck and a classifier (Luo et al. 2019).

Training returns ``(logits, features_before_bn)``: cross-entropy on the logits, triplet loss on the
features before the BNNeck. Inference returns the features after the BNNeck, the re-ID embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al. 2018); p=1 is average pooling, large p tends to max."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3), keepdim=True).pow(1.0 / self.p)


@dataclass(frozen=True)
class Outputs:
    """What a re-ID model computes for a batch, in train or eval mode alike (see :func:`outputs`).

    ``logits``: the classifier's scores over the training identities of the domain being fine-tuned on,
    ``[N, classes]``; ``features``: the pooled features before the BNNeck, ``[N, D]`` (the triplet loss's);
    ``embedding``: the features after the BNNeck, ``[N, D]``, the re-ID embedding a deployed model returns.
    ``D`` is the BNNeck width, which pruning never changes, so a teacher's and a student's match.
    """

    logits: torch.Tensor
    features: torch.Tensor
    embedding: torch.Tensor


def outputs(model: nn.Module, x: torch.Tensor) -> Outputs:
    """All three outputs of a :class:`ReIDNet` for ``x``, the same operations as its ``forward``.

    ``forward`` returns ``(logits, features)`` in train mode and ``embedding`` in eval mode; this returns
    all three in either mode (BatchNorm layers use batch statistics in train mode, running ones in eval).
    """
    net: Any = model  # a ReIDNet (pruned or not): features, bnneck, classifier
    feat = net.features(x)
    emb = net.bnneck(feat)
    return Outputs(net.classifier(emb), feat, emb)


class ReIDNet(nn.Module):
    """Backbone + pooling + BNNeck + classifier; ``arch`` records how to rebuild it."""

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        num_classes: int,
        pooling: str = "avg",
        arch: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = GeM() if pooling == "gem" else nn.AdaptiveAvgPool2d(1)
        self.bnneck = nn.BatchNorm1d(feat_dim)
        self.bnneck.bias.requires_grad_(False)  # BNNeck: no shift, so the features stay centred for cosine
        self.classifier = nn.Linear(feat_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        self.arch = dict(arch or {})

    @property
    def feat_dim(self) -> int:
        return self.bnneck.num_features

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier for a new label set (target fine-tuning has other identities)."""
        device = self.bnneck.weight.device
        self.classifier = nn.Linear(self.feat_dim, num_classes, bias=False).to(device)
        nn.init.normal_(self.classifier.weight, std=0.001)
        self.arch["num_classes"] = num_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        b: Any = self.backbone  # any backbone plugin: forward_features, or torchvision ResNet's layers
        if hasattr(b, "forward_features"):
            fmap = b.forward_features(x)
        else:
            x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
            fmap = b.layer4(b.layer3(b.layer2(b.layer1(x))))
        return self.pool(fmap).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        feat = self.features(x)
        bn_feat = self.bnneck(feat)
        if self.training:
            return self.classifier(bn_feat), feat
        return bn_feat
