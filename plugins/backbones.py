"""Built-in backbones: every ResNet-family model torchvision has, plus a tiny ResNet-10 for smoke runs."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torchvision.models as tvm
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from autoprune import hookimpl
from autoprune.models import TORCHVISION_RESNETS


def _torchvision(name: str, last_stride: int = 1) -> nn.Module:
    model = getattr(tvm, name)(weights=None)
    _set_last_stride(model, last_stride)
    model.fc = nn.Identity()
    return model


def _resnet10(last_stride: int = 1) -> nn.Module:
    """A tiny ResNet (one BasicBlock per stage) for smoke runs and tests."""
    model = ResNet(BasicBlock, [1, 1, 1, 1])
    _set_last_stride(model, last_stride)
    model.fc = nn.Identity()
    return model


def _set_last_stride(model: nn.Module, stride: int) -> None:
    """Stride of the first block of layer4; 1 is the re-ID default (bigger final map, better features)."""
    layer4: Any = model.layer4  # a torchvision ResNet stage
    block = layer4[0]
    convs = [block.conv2] if hasattr(block, "conv3") else [block.conv1]
    for conv in convs:
        conv.stride = (stride, stride)
    if block.downsample is not None:
        block.downsample[0].stride = (stride, stride)


@hookimpl
def autoprune_register_backbones(register: Callable[..., None]) -> None:
    register("resnet10", _resnet10)
    for name in TORCHVISION_RESNETS:
        factory = partial(_torchvision, name)
        factory.__doc__ = f"torchvision's {name}, built without weights (model.weights loads them)."
        register(name, factory)
