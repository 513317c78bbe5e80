"""Saving and loading pruned models without pickled code.

A pruned model is saved as a JSON description (the architecture it was built from and the channel
count of every conv, norm and linear layer) plus its tensors, in one ``torch.save`` file read back with
``weights_only=True``: loading rebuilds the unpruned architecture, resizes each layer to the recorded
widths and loads the weights strictly. The format and its checks are in :mod:`autoprune.models.modelfile`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.models import ReIDNet, build_from_meta
from autoprune.models.modelfile import FORMAT, channel_spec, read_meta
from autoprune.rundir import replacing


def save_pruned(model: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a ReIDNet, pruned or not) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "arch": getattr(model, "arch", {}), "spec": channel_spec(model), "extra": extra or {}}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with replacing(path) as f:  # atomic: a crash never leaves a half-written model behind, nor writes through a link
        torch.save({"meta": json.dumps(meta), "state_dict": state}, f)
    return path


def load_pruned(path: str | Path, host: Any = None) -> ReIDNet:
    """A pruned model identical to the one saved (same outputs), in eval mode."""
    meta, state = read_meta(path)
    model = build_from_meta(meta, host=host, path=path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(
            f"{path}: weights do not match the saved architecture ({str(exc).splitlines()[0]}); "
            f"the file is corrupt or was edited"
        ) from None
    return model.eval()
