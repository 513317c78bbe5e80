"""Scoring a model on a domain: features of query and gallery, then the standard re-ID protocol."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from autoprune.data.loading import ImageStore, normalize, sequential_batches
from autoprune.engine.device import autocast_dtype


@torch.no_grad()
def extract_features(
    model: nn.Module,
    store: ImageStore,
    device: torch.device,
    batch_size: int = 128,
    flip: bool = False,
    precision: str = "fp32",
) -> torch.Tensor:
    """Inference embeddings (after the BNNeck), optionally averaged with the mirrored image's.

    ``precision`` as ``train.precision``; features are returned in float32 whatever it is.
    """
    model.eval().to(device)
    dtype = autocast_dtype(device, precision)
    if dtype is not None:
        model.to(memory_format=torch.channels_last)
    out = []
    for idx in sequential_batches(len(store), batch_size):
        x = normalize(store.get(idx)).to(device)
        if dtype is not None:
            x = x.contiguous(memory_format=torch.channels_last)
        f = _embed(model, x, device, dtype, flip)
        if dtype is not None and not torch.isfinite(f).all():
            # bfloat16 now and then gives a non-finite pass at small feature maps (as in training): redo in fp32
            f = _embed(model, x, device, None, flip)
        out.append(f.cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def _embed(
    model: nn.Module, x: torch.Tensor, device: torch.device, dtype: torch.dtype | None, flip: bool
) -> torch.Tensor:
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        f = model(x).float()
        if flip:
            f = (f + model(x.flip(3)).float()) / 2
    return f


def evaluate_domain(
    model: nn.Module,
    query: ImageStore,
    gallery: ImageStore,
    device: torch.device,
    flip: bool = False,
    metric: str = "cosine",
    precision: str = "fp32",
) -> dict[str, Any]:
    """rank-1/5/10 and mAP (fractions) with the Market-1501 protocol, and the per-query rank-1 hits and APs
    (``hits``/``aps``, in query order, valid queries only) that paired comparisons of two models need."""
    from autoprune.evaluation import evaluate_features

    qf = extract_features(model, query, device, flip=flip, precision=precision)
    gf = extract_features(model, gallery, device, flip=flip, precision=precision)
    return evaluate_features(
        qf,
        gf,
        query.pids.numpy(),
        gallery.pids.numpy(),
        query.camids.numpy(),
        gallery.camids.numpy(),
        metric=metric,
        per_query=True,
    )
