"""autoprune: search per-layer pruning ratios for re-ID CNNs under a FLOPs (MACs) budget."""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoprune.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "load_pruned", "__version__"]

if TYPE_CHECKING:
    from torch import nn


def load_pruned(path: str) -> nn.Module:
    """Load a model saved by autoprune (channel spec JSON + weights) without unpickling any code."""
    from autoprune.pruning.serialize import load_pruned as _load

    return _load(path)
