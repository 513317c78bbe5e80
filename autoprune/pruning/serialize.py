"""Saving and loading pruned models without pickled code.

A pruned model is saved as a JSON description (the architecture it was built from and the channel
count of every conv, norm and linear layer) plus its tensors, in one ``torch.save`` file read back with
``weights_only=True``: loading rebuilds the unpruned architecture, resizes each layer to the recorded
widths and loads the weights strictly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import UserError

FORMAT = "autoprune-pruned/1"


def channel_spec(model: nn.Module) -> dict[str, list[int]]:
    """Every conv/norm/linear layer's (in, out) widths, by module name."""
    spec: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            spec[name] = [m.in_channels, m.out_channels]
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            spec[name] = [m.num_features, m.num_features]
        elif isinstance(m, nn.Linear):
            spec[name] = [m.in_features, m.out_features]
    return spec


def save_pruned(model: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a ReIDNet, pruned or not) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "arch": getattr(model, "arch", {}), "spec": channel_spec(model), "extra": extra or {}}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"meta": json.dumps(meta), "state_dict": state}, tmp)
    tmp.replace(path)  # atomic: a crash never leaves a half-written model behind
    return path


def _resized(module: nn.Module, widths: list[int]) -> nn.Module:
    cin, cout = widths
    if isinstance(module, nn.Conv2d):
        if (module.in_channels, module.out_channels) == (cin, cout):
            return module
        return nn.Conv2d(cin, cout, module.kernel_size, module.stride, module.padding, module.dilation,
                         module.groups, module.bias is not None, module.padding_mode)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.num_features == cout:
            return module
        new = type(module)(cout, eps=module.eps, momentum=module.momentum, affine=module.affine,
                           track_running_stats=module.track_running_stats)
        if isinstance(module.weight, nn.Parameter) and not module.bias.requires_grad:
            new.bias.requires_grad_(False)
        return new
    if isinstance(module, nn.Linear):
        if (module.in_features, module.out_features) == (cin, cout):
            return module
        return nn.Linear(cin, cout, bias=module.bias is not None)
    raise UserError(f"saved model describes {type(module).__name__} as resizable; the file is not from autoprune")


def load_tensors(path: Path, fix: str) -> Any:
    """``torch.load`` restricted to tensors and plain containers: a checkpoint never runs pickled code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path} cannot be loaded safely ({type(exc).__name__}): autoprune loads tensors only, "
                        f"never pickled code; {fix}") from None


def read_meta(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist; give the path of a model autoprune saved")
    blob = load_tensors(path, "re-export the model with autoprune")
    if not isinstance(blob, dict) or "meta" not in blob or "state_dict" not in blob:
        raise UserError(f"{path} is not an autoprune model file (no 'meta'/'state_dict'); save it with autoprune")
    meta = json.loads(blob["meta"])
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} has format {meta.get('format')!r}; this autoprune reads {FORMAT!r}")
    return meta, blob["state_dict"]


def build_from_meta(meta: dict[str, Any], host: Any = None) -> nn.Module:
    """The architecture described by ``meta`` with every layer resized, weights uninitialised."""
    from autoprune.models import build_model

    arch = meta["arch"]
    model = build_model(arch["arch"], arch["num_classes"], last_stride=arch.get("last_stride", 1),
                        pooling=arch.get("pooling", "avg"), host=host)
    for name, widths in meta["spec"].items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        new = _resized(old, widths)
        if new is not old:
            setattr(parent, child, new)
    if model.bnneck.num_features != model.classifier.in_features:
        raise UserError("saved model has inconsistent head widths; the file is corrupt")
    return model


def load_pruned(path: str | Path, host: Any = None) -> nn.Module:
    """A pruned model identical to the one saved (same outputs), in eval mode."""
    meta, state = read_meta(path)
    model = build_from_meta(meta, host=host)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not match the saved architecture ({str(exc).splitlines()[0]}); "
                        f"the file is corrupt or was edited") from None
    return model.eval()
