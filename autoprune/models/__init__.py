"""Building re-ID models from a config: backbone from the plugin host, weights from disk only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.models.checkpoint import (
    TORCHVISION_RESNETS,
    backbone_state,
    load_backbone,
    read_checkpoint,
    read_state,
)
from autoprune.models.modelfile import check_against, corrupt, resized
from autoprune.models.reid import ReIDNet

__all__ = [
    "TORCHVISION_RESNETS",
    "ReIDNet",
    "build_from_meta",
    "build_model",
    "load_backbone_weights",
    "load_checkpoint_model",
]


def build_model(
    arch: str, num_classes: int, last_stride: int = 1, pooling: str = "avg", weights: str = "none", host: Any = None
) -> ReIDNet:
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


def build_from_meta(meta: dict[str, Any], host: Any = None, path: Any = "<model>") -> ReIDNet:
    """The architecture described by checked ``meta`` (see ``modelfile.check_meta``), resized; weights uninitialised.

    Here rather than in the serializer: loading a ``model.checkpoint`` that autoprune saved needs it too."""
    from autoprune.host import get_host

    arch = meta["arch"]
    host = host or get_host()
    if arch["arch"] not in host.names("backbone"):
        raise UserError(
            f"model file {path} is a {arch['arch'][:80]!r}, which no installed plugin provides; "
            f"install the plugin that saved it (`autoprune plugins` lists the backbones)"
        )
    # A one-class head first: the real one is sized from the checked spec, never from a bare number.
    model = build_model(
        arch["arch"], 1, last_stride=arch.get("last_stride", 1), pooling=arch.get("pooling", "avg"), host=host
    )
    check_against(model, meta["spec"], path)
    for name, widths in meta["spec"].items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        new = resized(old, widths)
        if new is not old:
            setattr(parent, child, new)
    if (
        model.bnneck.num_features != model.classifier.in_features
        or model.classifier.out_features != arch["num_classes"]
    ):
        raise corrupt(path, "its head widths are inconsistent")
    model.arch["num_classes"] = arch["num_classes"]
    return model


def _imagenet_file(arch: str) -> Path:
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(arch)
    except ValueError:
        raise UserError(f"no ImageNet weights are known for {arch!r}; use weights: none or a checkpoint path") from None
    url = enum.DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_backbone_weights(backbone: nn.Module, arch: str, weights: str) -> None:
    """Initialise from ImageNet weights (the local torch hub cache) or a torchreid/fast-reid checkpoint file."""
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
    state, _, _ = read_state(path)
    load_backbone(backbone, backbone_state(state, path), arch, path, strict=False)


def load_checkpoint_model(model_cfg: dict[str, Any], num_classes: int, host: Any = None) -> ReIDNet:
    """The trained model of ``model.checkpoint`` (resolved config), its classifier fresh for ``num_classes``.

    An autoprune model file comes back as saved (pruned widths and BNNeck included); from any other format
    the backbone is imported exactly and the head (BNNeck, classifier) is new.
    """
    ck = read_checkpoint(model_cfg["checkpoint"])
    if ck.meta is not None:
        model = build_from_meta(ck.meta, host=host, path=ck.path)
        try:
            model.load_state_dict(ck.state, strict=True)
        except RuntimeError as exc:
            raise UserError(
                f"{ck.path}: weights do not match the saved architecture ({str(exc).splitlines()[0]}); "
                f"the file is corrupt or was edited"
            ) from None
        model.reset_classifier(num_classes)
        return model
    model = build_model(
        model_cfg["arch"], num_classes, last_stride=model_cfg["last_stride"], pooling=model_cfg["pooling"], host=host
    )
    load_backbone(model.backbone, ck.backbone(), model_cfg["arch"], ck.path, strict=True)
    return model
