"""Device choice and CPU threading."""

from __future__ import annotations

import os

import torch

from autoprune.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device is {name!r} but no CUDA device is available; use train.device: auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device {name!r} is not a device; use auto, cpu or cuda[:N]") from None


def set_threads(threads: int = 0) -> None:
    """Use every core the process may run on unless told otherwise."""
    n = threads or len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (threads or os.cpu_count() or 1)
    torch.set_num_threads(max(1, int(n)))
