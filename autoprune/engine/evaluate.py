"""Scoring a model on a domain: features of query and gallery, then the standard re-ID protocol."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from autoprune.data.loading import ImageStore, normalize, sequential_batches


@torch.no_grad()
def extract_features(model: nn.Module, store: ImageStore, device: torch.device, batch_size: int = 128,
                     flip: bool = False) -> torch.Tensor:
    """Inference embeddings (after the BNNeck), optionally averaged with the mirrored image's."""
    model.eval().to(device)
    out = []
    for idx in sequential_batches(len(store), batch_size):
        x = normalize(store.get(idx)).to(device)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            f = model(x).float()
            if flip:
                f = (f + model(x.flip(3)).float()) / 2
        out.append(f.cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def evaluate_domain(model: nn.Module, query: ImageStore, gallery: ImageStore, device: torch.device,
                    flip: bool = False, metric: str = "cosine") -> dict[str, Any]:
    """rank-1/5/10 and mAP (fractions) with the Market-1501 protocol."""
    from autoprune.evaluation import evaluate_features

    qf = extract_features(model, query, device, flip=flip)
    gf = extract_features(model, gallery, device, flip=flip)
    return evaluate_features(qf, gf, query.pids.numpy(), gallery.pids.numpy(), query.camids.numpy(),
                             gallery.camids.numpy(), metric=metric)
