"""Building re-ID models from a config: backbone from the plugin host, weights from disk only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.models.reid import ReIDNet
from autoprune.pruning.serialize import load_tensors

__all__ = ["ReIDNet", "build_model", "load_backbone_weights"]


def build_model(arch: str, num_classes: int, last_stride: int = 1, pooling: str = "avg",
                weights: str = "none", host: Any = None) -> ReIDNet:
    """A ReIDNet with the named backbone; ``weights`` is ``none``, ``imagenet`` or a checkpoint path."""
    from autoprune.host import get_host

    host = host or get_host()
    factory = host.get("backbone", arch)
    backbone = factory(last_stride=last_stride)
    if weights != "none":
        load_backbone_weights(backbone, arch, weights)
    with torch.no_grad():
        was = backbone.training
        backbone.eval()
        probe = ReIDNet(backbone, 1, 1).features(torch.zeros(1, 3, 64, 32))
        backbone.train(was)
    arch_spec = {"arch": arch, "last_stride": last_stride, "pooling": pooling, "num_classes": num_classes}
    return ReIDNet(backbone, probe.shape[1], num_classes, pooling=pooling, arch=arch_spec)


def _imagenet_file(arch: str) -> Path:
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(arch)
    except ValueError:
        raise UserError(f"no ImageNet weights are known for {arch!r}; use weights: none or a checkpoint path") from None
    url = enum.DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


# torchreid names the backbone's layers like torchvision; fast-reid prefixes them with "backbone." and
# names the stem differently. Keys are mapped onto torchvision's names before loading.
_PREFIXES = ("module.", "backbone.", "base.", "model.")
_FASTREID_STEM = {"conv1.": "conv1.", "bn1.": "bn1."}


def map_reid_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map torchreid / fast-reid / bag-of-tricks checkpoint keys to torchvision ResNet keys."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = key
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        if k.startswith(("fc.", "classifier.", "heads.", "bottleneck.", "bnneck.")) or "num_batches_tracked" in k:
            continue  # heads are re-initialised: the label set is not ours
        out[k] = value
    return out


def load_backbone_weights(backbone: nn.Module, arch: str, weights: str) -> None:
    """Load ImageNet weights from the local torch hub cache, or a torchreid/fast-reid checkpoint file."""
    if weights == "imagenet":
        path = _imagenet_file(arch)
        if not path.is_file():
            raise UserError(
                f"ImageNet weights for {arch} are not on this machine: place {path.name} in {path.parent} "
                f"(torchvision's file, as downloaded by torchvision elsewhere), or use model.weights: none"
            )
    else:
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"model.weights: {weights} does not exist; give a checkpoint path, 'imagenet' or 'none'")
    state = load_tensors(path, "save a plain state_dict (torch.save(model.state_dict(), path))")
    for key in ("state_dict", "model", "net"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} holds no state dict (a mapping of names to tensors); give a torchreid, fast-reid "
                        f"or torchvision checkpoint")
    state = map_reid_keys(state)
    own = backbone.state_dict()
    missing = [k for k in own if k not in state and "num_batches_tracked" not in k]
    wrong = [k for k in state if k in own and own[k].shape != state[k].shape]
    if wrong or len(missing) > len(own) // 2:
        raise UserError(
            f"{path} does not match backbone {arch}: {len(missing)} missing keys, {len(wrong)} with another shape "
            f"(e.g. {(wrong or missing)[0]}); check model.arch"
        )
    backbone.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
