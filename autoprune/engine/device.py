"""Device choice and CPU threading."""

from __future__ import annotations

import os

import torch

from autoprune.choices import PRECISIONS
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
    n = (
        threads or len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else (threads or os.cpu_count() or 1)
    )
    torch.set_num_threads(max(1, int(n)))


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bfloat16 arithmetic (AVX-512 BF16 or AMX), where oneDNN runs bf16 fast.

    Elsewhere bf16 autocast is emulated and slower than float32, so ``auto`` keeps float32 there.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        flags = []
    if flags:
        return "avx512_bf16" in flags or "amx_bf16" in flags
    try:  # not Linux: ask oneDNN
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device, precision: str, amp: bool = True) -> torch.dtype | None:
    """The autocast dtype for ``train.precision`` on ``device``; None means plain float32.

    CUDA: ``auto`` keeps the float16 AMP of ``train.amp``. CPU: ``auto`` is float32, ``bf16`` is opt-in
    where the CPU has AVX-512 BF16/AMX: it measured 1.34x faster training with identical inference hits,
    but training in bfloat16 has not yet been shown to keep rank-1 and mAP (benchmarks/RESULTS.md).
    """
    if precision not in PRECISIONS:
        raise UserError(f"train.precision is {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "bf16":
            return torch.bfloat16
        return torch.float16 if amp else None
    if device.type != "cpu" or precision == "auto":
        return None
    if cpu_supports_bf16():
        return torch.bfloat16
    if precision == "bf16":
        raise UserError(
            "train.precision is bf16 but this CPU has no AVX-512 BF16 or AMX (bfloat16 would be "
            "emulated, slower than float32); use train.precision: auto or fp32"
        )
    return None
