"""The format of autoprune's model files, and its checks: what a file may claim before anything is built from it.

A pruned model is saved as a JSON description (the architecture it was built from and the channel
count of every conv, norm and linear layer) plus its tensors, in one ``torch.save`` file read back with
``weights_only=True``. This module reads and checks that description; :mod:`autoprune.pruning.serialize`
writes and loads whole models. It imports nothing else of autoprune's models, so the checkpoint readers
and the serializer can both use it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.choices import LAST_STRIDES, POOLINGS
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


def load_tensors(path: Path, fix: str) -> Any:
    """``torch.load`` restricted to tensors and plain containers: a checkpoint never runs pickled code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"{path} cannot be loaded safely ({type(exc).__name__}): autoprune loads tensors only, "
            f"never pickled code; {fix}"
        ) from None


# Limits on what a model file may claim. autoprune writes a few kB of metadata; heads have one row per
# training identity (the largest re-ID sets have a few thousand).
MAX_META_BYTES = 1 << 20
MAX_CLASSES = 1_000_000


def corrupt(path: Any, what: str) -> UserError:
    return UserError(
        f"model file {path}: {what}; the file is corrupt or was edited: save the model again with autoprune"
    )


def _is_int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def check_meta(raw: Any, state: Any, path: Any) -> dict[str, Any]:
    """The metadata of an autoprune model file, checked for types and against the file's own tensors.

    Untrusted input: nothing is built from it until every width is a positive integer that matches the
    tensor stored for its layer, so a file can never ask for more memory than it holds.
    """
    if not isinstance(raw, str) or len(raw) > MAX_META_BYTES:
        raise corrupt(path, f"its metadata is not a JSON string of at most {MAX_META_BYTES} bytes")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError):
        raise corrupt(path, "its metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise corrupt(path, f"its metadata is a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} has format {str(meta.get('format'))[:40]!r}; this autoprune reads {FORMAT!r}")
    arch, spec = meta.get("arch"), meta.get("spec")
    if not isinstance(arch, dict) or not isinstance(arch.get("arch"), str):
        raise corrupt(path, "'arch' must be an object naming the architecture")
    if not _is_int(arch.get("num_classes"), 1, MAX_CLASSES):
        raise corrupt(path, f"'arch.num_classes' must be an integer in [1, {MAX_CLASSES}]")
    if arch.get("last_stride", 1) not in LAST_STRIDES or isinstance(arch.get("last_stride"), bool):
        raise corrupt(path, f"'arch.last_stride' must be one of {LAST_STRIDES}")
    if arch.get("pooling", "avg") not in POOLINGS:
        raise corrupt(path, f"'arch.pooling' must be one of {POOLINGS}")
    if not isinstance(meta.get("extra", {}), dict):
        raise corrupt(path, "'extra' must be an object")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise corrupt(path, "its state_dict is not a mapping of names to tensors")
    if not isinstance(spec, dict) or not spec:
        raise corrupt(path, "'spec' must be an object of layer name -> [in, out] widths")
    for name, widths in spec.items():
        if not (isinstance(widths, list) and len(widths) == 2 and all(_is_int(w, 1, 2**31) for w in widths)):
            raise corrupt(path, f"layer {name[:80]!r} must have widths [in, out] as positive integers")
        stored = state.get(f"{name}.weight", state.get(f"{name}.running_mean"))
        if (
            stored is None
            or stored.dim() == 0
            or stored.shape[0] != widths[1]
            or (stored.dim() == 2 and stored.shape[1] != widths[0])
        ):
            got = "no tensor" if stored is None else f"a tensor of shape {list(stored.shape)}"
            raise corrupt(
                path,
                f"layer {name[:80]!r} is said to be {widths[0]} -> {widths[1]} channels but the "
                f"file holds {got} for it",
            )
    classifier = spec.get("classifier")
    if classifier is not None and classifier[1] != arch["num_classes"]:
        raise corrupt(
            path, f"the classifier has {classifier[1]} outputs but 'arch.num_classes' is {arch['num_classes']}"
        )
    return meta


def read_meta(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The checked metadata and the tensors of an autoprune model file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist; give the path of a model autoprune saved")
    blob = load_tensors(path, "re-export the model with autoprune")
    if not isinstance(blob, dict) or "meta" not in blob or "state_dict" not in blob:
        raise UserError(f"{path} is not an autoprune model file (no 'meta'/'state_dict'); save it with autoprune")
    return check_meta(blob["meta"], blob["state_dict"], path), blob["state_dict"]


def resized(module: nn.Module, widths: list[int]) -> nn.Module:
    cin, cout = widths
    if isinstance(module, nn.Conv2d):
        if (module.in_channels, module.out_channels) == (cin, cout):
            return module
        conv: Any = module  # torch types its stored 2-tuples as tuple[int, ...]
        return nn.Conv2d(
            cin,
            cout,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
        )
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.num_features == cout:
            return module
        new = type(module)(
            cout,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
        if isinstance(module.weight, nn.Parameter) and not module.bias.requires_grad:
            new.bias.requires_grad_(False)
        return new
    if isinstance(module, nn.Linear):
        if (module.in_features, module.out_features) == (cin, cout):
            return module
        return nn.Linear(cin, cout, bias=module.bias is not None)
    raise UserError(f"saved model describes {type(module).__name__} as resizable; the file is not from autoprune")


def check_against(model: nn.Module, spec: dict[str, list[int]], path: Any) -> None:
    """Every layer of ``spec`` exists in the unpruned ``model`` and is at most as wide, in whole conv groups."""
    limits = channel_spec(model)
    modules = dict(model.named_modules())
    arch = getattr(model, "arch", {}).get("arch")
    for name, (cin, cout) in spec.items():
        if name not in limits:
            raise corrupt(path, f"it names a layer {name[:80]!r} that {arch} does not have")
        top_in, top_out = limits[name]
        if name == "classifier":
            top_out = MAX_CLASSES  # the head is sized by the identities, checked against its tensor
        if cin > top_in or cout > top_out:
            raise corrupt(
                path, f"layer {name!r} is {cin} -> {cout} channels, wider than {arch}'s {top_in} -> {top_out}"
            )
        groups = getattr(modules[name], "groups", 1)
        if cin % groups or cout % groups:
            raise corrupt(path, f"layer {name!r} is {cin} -> {cout} channels, not a multiple of its {groups} groups")
