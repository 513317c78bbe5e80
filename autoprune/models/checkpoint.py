"""Trained re-ID checkpoints: read safely, their format recognised, the backbone and its architecture found.

A checkpoint is an autoprune model file, a torchreid ``save_checkpoint`` file (``{"state_dict": ...,
"optimizer": ..., "epoch": ...}``, keys often ``module.``-prefixed by DataParallel), a fast-reid checkpoint
(``{"model": {"backbone.*", "heads.*", ...}, "optimizer": ..., "iteration": ...}``), or a plain state dict.
Only tensors and plain containers are unpickled. ``model.weights`` (an initialisation for training) and
``model.checkpoint`` (the trained model to prune) both read their files here.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.models.modelfile import check_meta, load_tensors

# The ResNet family torchvision has: the built-in backbones plugin registers each, and a checkpoint's
# architecture is checked against them.
TORCHVISION_RESNETS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)

# A ResNet backbone's top-level names, as torchvision (and torchreid, fast-reid, bag of tricks) spell them.
_BACKBONE = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
_ANCHOR = "layer1.0.conv1.weight"  # every ResNet-family backbone has it, once per network in the file
# (block type, blocks per stage) -> depth, as torchvision builds them (resnet10: autoprune's tiny one)
_DEPTHS: dict[tuple[str, tuple[int, ...]], int] = {
    ("basic", (1, 1, 1, 1)): 10,
    ("basic", (2, 2, 2, 2)): 18,
    ("basic", (3, 4, 6, 3)): 34,
    ("bottleneck", (3, 4, 6, 3)): 50,
    ("bottleneck", (3, 4, 23, 3)): 101,
    ("bottleneck", (3, 8, 36, 3)): 152,
}
_IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])  # what autoprune.data.loading.normalize uses
_IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])
# Wrapper keys that hold the state dict, outermost first, and the format each one means.
_WRAPPERS = (("state_dict", "torchreid"), ("model", "fast-reid"), ("net", "state_dict"))


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file's tensors and what they are."""

    path: Path
    format: str  # autoprune | torchreid | fast-reid | state_dict
    state: dict[str, torch.Tensor]  # the network's state dict, unwrapped
    meta: dict[str, Any] | None  # autoprune model files: how the model was built (arch, widths)
    sha256: str

    def backbone(self) -> dict[str, torch.Tensor]:
        return backbone_state(self.state, self.path)

    def arch(self) -> tuple[str | None, str]:
        """The architecture's name (None if no supported one fits) and what was seen, for messages."""
        if self.meta is not None:
            return self.meta["arch"]["arch"], "recorded in the autoprune model file"
        return infer_arch(self.backbone())

    def normalisation_note(self) -> str | None:
        """fast-reid normalises inside the model (``pixel_mean``/``pixel_std``, on 0-255 pixels); autoprune feeds
        ImageNet-normalised images, the same thing only with fast-reid's default statistics."""
        mean, std = self.state.get("pixel_mean"), self.state.get("pixel_std")
        if mean is None or std is None or mean.numel() != 3 or std.numel() != 3:
            return None
        mean, std = mean.flatten().float(), std.flatten().float()
        if torch.allclose(mean, _IMAGENET_MEAN * 255, atol=0.5) and torch.allclose(std, _IMAGENET_STD * 255, atol=0.5):
            return None
        return (
            f"note: {self.path} was trained on pixels normalised with mean {mean.tolist()} and std {std.tolist()} "
            f"(0-255); autoprune uses ImageNet's, so its features start off the trained ones until target "
            f"fine-tuning adapts them"
        )

    def last_stride(self) -> int | None:
        """Only an autoprune model file records it: a stride is not a weight."""
        return None if self.meta is None else int(self.meta["arch"].get("last_stride", 1))


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read ``path`` once per content (the config, the preflight and the baseline all ask for it)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"model.checkpoint: {path} does not exist; give the path of a trained model file")
    st = p.stat()
    return _read(p.resolve(), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=1)
def _read(path: Path, mtime_ns: int, size: int) -> Checkpoint:
    state, fmt, meta = read_state(path)
    digest = hashlib.sha256()
    with path.open("rb") as f:  # hashlib.file_digest is Python 3.11+; autoprune supports 3.10
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    sha = digest.hexdigest()
    return Checkpoint(path, fmt, state, meta, sha)


def read_state(path: Path) -> tuple[dict[str, torch.Tensor], str, dict[str, Any] | None]:
    """``(state dict, format, autoprune meta or None)`` of a checkpoint file, unwrapped from its container."""
    blob = load_tensors(path, "save a plain state_dict (torch.save(model.state_dict(), path))")
    if isinstance(blob, dict) and "meta" in blob and "state_dict" in blob:  # an autoprune model file: checked
        return blob["state_dict"], "autoprune", check_meta(blob["meta"], blob["state_dict"], path)
    fmt = "state_dict"
    for key, name in _WRAPPERS:
        if isinstance(blob, dict) and isinstance(blob.get(key), dict):
            blob = blob[key]
            fmt = name if fmt == "state_dict" else fmt  # the outermost wrapper names the format
    if not isinstance(blob, dict) or not blob or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise UserError(
            f"{path} holds no state dict (a mapping of names to tensors); give an autoprune model, "
            f"a torchreid or fast-reid checkpoint, or torch.save(model.state_dict(), path)"
        )
    return blob, fmt, None


def backbone_state(state: dict[str, torch.Tensor], path: Path | str) -> dict[str, torch.Tensor]:
    """The ResNet backbone's tensors under torchvision's names.

    The prefix in front of ``layer1.0.conv1.weight`` (``module.``, ``backbone.``, ``base.``, ...) is the
    backbone's; everything else (classifier, BNNeck, fast-reid ``heads.*``, a torchreid ``fc``) is left
    out: the head is rebuilt for the target's identities.
    """
    prefixes = sorted(
        {
            k[: -len(_ANCHOR)]
            for k in state
            if k.endswith(_ANCHOR) and (k == _ANCHOR or k[: -len(_ANCHOR)].endswith("."))
        }
    )
    if not prefixes:
        raise UserError(
            f"{path} holds no ResNet-family backbone (no key ending in {_ANCHOR!r}); autoprune prunes "
            f"ResNet, ResNeXt and Wide-ResNet models"
        )
    if len(prefixes) > 1:
        raise UserError(
            f"{path} is ambiguous: it holds {len(prefixes)} networks (under "
            f"{', '.join(repr(p) for p in prefixes)}); save the one to prune alone with "
            f"torch.save(net.state_dict(), path)"
        )
    p = prefixes[0]
    return {
        k[len(p) :]: v
        for k, v in state.items()
        if k.startswith(p) and k[len(p) :].split(".", 1)[0] in _BACKBONE and "num_batches_tracked" not in k
    }


def infer_arch(backbone: dict[str, torch.Tensor]) -> tuple[str | None, str]:
    """The torchvision name of a ResNet-family backbone from its keys and shapes, and what was seen.

    Depth: blocks per stage and the block type (a ``conv3`` means bottleneck). ResNeXt and Wide-ResNet:
    the first bottleneck's 3x3 conv, ``width`` output channels in ``groups`` groups (torchvision builds
    width = groups x width_per_group, with width_per_group 64 for ResNet, 128 for Wide-ResNet-*_2).
    """
    blocks = []
    for stage in range(1, 5):
        index = {int(k.split(".")[1]) for k in backbone if k.startswith(f"layer{stage}.") and k.split(".")[1].isdigit()}
        blocks.append(max(index) + 1 if index else 0)
    kind = "bottleneck" if "layer1.0.conv3.weight" in backbone else "basic"
    conv2 = backbone.get("layer1.0.conv2.weight")
    if conv2 is None or conv2.dim() != 4:
        return None, f"{kind} blocks {'-'.join(map(str, blocks))} without a 3x3 conv in layer1.0"
    width, groups = conv2.shape[0], max(1, conv2.shape[0] // max(1, conv2.shape[1]))
    seen = f"{kind} blocks {'-'.join(map(str, blocks))}, layer1 width {width} in {groups} group(s)"
    depth = _DEPTHS.get((kind, tuple(blocks)))
    if depth is None:
        return None, seen
    if kind == "basic":
        return (f"resnet{depth}" if (width, groups) == (64, 1) else None), seen
    if groups == 1:
        return {64: f"resnet{depth}", 128: f"wide_resnet{depth}_2"}.get(width), seen
    return f"resnext{depth}_{groups}x{width // groups}d", seen


def load_backbone(
    backbone: nn.Module, state: dict[str, torch.Tensor], arch: str, path: Path | str, strict: bool
) -> None:
    """Copy ``state`` (torchvision names) into ``backbone``.

    ``strict`` (a model to prune): every tensor must be there, with its shape, and nothing else, or the
    features would not be the trained model's. Not strict (an initialisation): up to half may be missing.
    """
    own = {k: v for k, v in backbone.state_dict().items() if "num_batches_tracked" not in k}
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    extra = [k for k in state if k not in own] if strict else []
    if wrong or extra or (missing and strict) or len(missing) > len(own) // 2:
        example = (wrong or missing or extra)[0]
        raise UserError(
            f"{path} does not match backbone {arch}: {len(missing)} missing keys, {len(wrong)} with "
            f"another shape, {len(extra)} unexpected (e.g. {example}); check model.arch"
        )
    backbone.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def checkpoint_record(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """What report.json says about the model pruned: ``{path, sha256, format, arch}``."""
    ck = read_checkpoint(model_cfg["checkpoint"])
    return {"path": str(ck.path), "sha256": ck.sha256, "format": ck.format, "arch": model_cfg["arch"]}


def resolve_model_config(model_cfg: dict[str, Any]) -> None:
    """Fill ``model.arch`` and ``model.last_stride`` left null from ``model.checkpoint`` (last stride 1 where
    the file does not show it); refuse a given value the checkpoint contradicts."""
    path = model_cfg["checkpoint"]
    if model_cfg["weights"] != "none":
        raise UserError(
            "model.weights (an initialisation for training) and model.checkpoint (a trained model to "
            "prune) exclude each other; keep one"
        )
    ck = read_checkpoint(path)
    inferred, seen = ck.arch()
    given = model_cfg["arch"]
    if given is None:
        if inferred is None:
            raise UserError(
                f"cannot tell the architecture of {path} ({seen}); set model.arch (--arch) to its backbone's name"
            )
        model_cfg["arch"] = inferred
    elif inferred is not None and inferred != given and given in ("resnet10", *TORCHVISION_RESNETS):
        raise UserError(
            f"model.arch is {given} but {path} holds a {inferred} ({seen}); set model.arch: {inferred} "
            f"or leave model.arch out to infer it"
        )
    stride = ck.last_stride()
    if model_cfg["last_stride"] is None:
        model_cfg["last_stride"] = 1 if stride is None else stride
    elif stride is not None and stride != model_cfg["last_stride"]:
        raise UserError(
            f"model.last_stride is {model_cfg['last_stride']} but {path} was built with last stride "
            f"{stride}; set model.last_stride: {stride} or leave it out"
        )
    if ck.meta is not None:  # an autoprune model file is rebuilt from its own description
        model_cfg["pooling"] = ck.meta["arch"].get("pooling", "avg")
