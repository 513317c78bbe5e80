"""Deployment exports of a saved pruned model, each checked against the PyTorch model's output."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from autoprune.errors import UserError, writable_folder
from autoprune.pruning.flops import count_macs
from autoprune.pruning.serialize import load_pruned
from autoprune.rundir import inside, write_file
from autoprune.search.report import read_report

FORMATS = ("torchscript", "onnx")


_DEFAULT_NAMES = {"torchscript": "pruned.torchscript.pt", "onnx": "pruned.onnx"}


def torchscript_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """``model`` (put in eval mode) traced on ``example``, as the bytes of a TorchScript file."""
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated upstream in favour of torch.export, but it is still what C++/mobile runtimes load.
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    return buf.getvalue()


def save_torchscript(model: nn.Module, path: str | Path, example: torch.Tensor) -> Path:
    """Trace ``model`` on ``example`` and save the TorchScript module to ``path`` (replaced whole, never
    written through a link)."""
    return write_file(path, torchscript_bytes(model, example))


def _onnx_bytes(model: nn.Module, example: torch.Tensor) -> bytes:
    """``model`` exported to ONNX with a dynamic batch, as the bytes of the file."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            cast(Any, buf),  # the TorchScript-based exporter writes to a file object too
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
            dynamo=False,
        )
    return buf.getvalue()


def _exported(model: nn.Module, fmt: str, x: torch.Tensor) -> tuple[bytes, np.ndarray]:
    """The export of ``model`` in ``fmt`` and its output on ``x``, read back from the exported bytes."""
    if fmt == "torchscript":
        data = torchscript_bytes(model, x[:1])
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # as in torchscript_bytes
            return data, torch.jit.load(io.BytesIO(data))(x).numpy()
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("ONNX export check needs onnxruntime: pip install onnx onnxruntime") from None
    data = _onnx_bytes(model, x[:1])
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return data, sess.run(None, {"images": x.numpy()})[0]


def _check_budget(model: nn.Module, report: dict) -> tuple[int, int]:
    """Input size from the run's (checked) report; refuse a model over the run's budget."""
    size = (int(report["budget"]["input_size"][0]), int(report["budget"]["input_size"][1]))
    macs, _ = count_macs(model, size)
    if macs > report["budget"]["macs"]:
        raise UserError(f"model has {macs} MACs, above the run's budget of {report['budget']['macs']}; not exporting")
    return size


def _output_path(run_dir: Path, fmt: str, out: str | Path | None) -> Path:
    """Where the export goes: ``--out`` must name a new file (or an export) in an existing, writable folder, and
    never one of the run's own files (checked before any work)."""
    if not out:
        return run_dir / "model" / _DEFAULT_NAMES[fmt]
    path = Path(out)
    if path.is_dir():
        raise UserError(f"--out {path} is a folder; give a file path, e.g. {path / _DEFAULT_NAMES[fmt]}")
    if not path.parent.is_dir():
        raise UserError(f"--out {path}: the folder {path.parent} does not exist; create it or choose another path")
    root, target = Path(os.path.realpath(run_dir)), Path(os.path.realpath(path))
    exports = {root / "model" / name for name in _DEFAULT_NAMES.values()}
    if target.is_relative_to(root) and os.path.lexists(target) and target not in exports:
        raise UserError(
            f"--out {path} is {target.relative_to(root)}, a file of the run {run_dir}; an export never "
            f"overwrites the run: choose another path"
        )
    writable_folder(path.parent, f"--out {path}: the folder", "choose another path")
    return path


def export_model(run_dir: str | Path, fmt: str, out: str | Path | None = None, atol: float = 1e-4) -> Path:
    """Export ``RUN/model/pruned.pt`` to TorchScript or ONNX, check the exported output, then write it."""
    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    report = read_report(run_dir)  # the run's links are checked first: the default output is written there
    if not (run_dir / "model" / "pruned.pt").is_file():
        raise UserError(
            f"{run_dir} is not a finished autoprune run (no model/pruned.pt); give the --out folder of "
            f"`autoprune search`"
        )
    path = _output_path(run_dir, fmt, out)
    model = load_pruned(inside(run_dir, "model/pruned.pt", f"{run_dir}'s model")).eval()
    size = _check_budget(model, report)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    data, got = _exported(model, fmt, x)
    err = float(np.abs(got - expected).max())
    if err > atol:
        raise RuntimeError(f"{fmt} export differs from the PyTorch model by {err:.2e} (> {atol}); not written")
    try:
        return write_file(path, data)
    except OSError as exc:
        raise UserError(f"{path} could not be written ({exc.strerror or exc}); choose another --out") from None
