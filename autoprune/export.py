"""Deployment exports of a saved pruned model, each checked against the PyTorch model's output."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autoprune.errors import UserError
from autoprune.pruning.flops import count_macs
from autoprune.pruning.serialize import load_pruned
from autoprune.rundir import inside, refuse_links_out
from autoprune.search.report import read_report

FORMATS = ("torchscript", "onnx")


_DEFAULT_NAMES = {"torchscript": "pruned.torchscript.pt", "onnx": "pruned.onnx"}


def save_torchscript(model: nn.Module, path: str | Path, example: torch.Tensor) -> Path:
    """Trace ``model`` (put in eval mode) on ``example`` and save the TorchScript module to ``path``."""
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated upstream in favour of torch.export, but it is still what C++/mobile runtimes load.
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example)
    traced.save(str(path))
    return Path(path)


def _check_budget(model: nn.Module, report: dict) -> tuple[int, int]:
    """Input size from the run's (checked) report; refuse a model over the run's budget."""
    size = (int(report["budget"]["input_size"][0]), int(report["budget"]["input_size"][1]))
    macs, _ = count_macs(model, size)
    if macs > report["budget"]["macs"]:
        raise UserError(f"model has {macs} MACs, above the run's budget of {report['budget']['macs']}; not exporting")
    return size


def _output_path(run_dir: Path, fmt: str, out: str | Path | None) -> Path:
    """Where the export goes: ``--out`` must name a file in an existing folder (checked before any work)."""
    if not out:
        return run_dir / "model" / _DEFAULT_NAMES[fmt]
    path = Path(out)
    if path.is_dir():
        raise UserError(f"--out {path} is a folder; give a file path, e.g. {path / _DEFAULT_NAMES[fmt]}")
    if not path.parent.is_dir():
        raise UserError(f"--out {path}: the folder {path.parent} does not exist; create it or choose another path")
    return path


def export_model(run_dir: str | Path, fmt: str, out: str | Path | None = None, atol: float = 1e-4) -> Path:
    """Export ``RUN/model/pruned.pt`` to TorchScript or ONNX and check the exported output."""
    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not (run_dir / "report.json").is_file() or not (run_dir / "model" / "pruned.pt").is_file():
        raise UserError(
            f"{run_dir} is not a finished autoprune run (no report.json / model/pruned.pt); "
            f"give the --out folder of `autoprune search`"
        )
    report = read_report(run_dir)
    refuse_links_out(run_dir)  # the default output is written there
    path = _output_path(run_dir, fmt, out)
    model = load_pruned(inside(run_dir, "model/pruned.pt", f"{run_dir}'s model")).eval()
    size = _check_budget(model, report)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    if fmt == "torchscript":
        save_torchscript(model, path, x[:1])
        with torch.no_grad():
            got = torch.jit.load(str(path))(x).numpy()
    else:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("ONNX export check needs onnxruntime: pip install onnx onnxruntime") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x[:1],),
                str(path),
                input_names=["images"],
                output_names=["features"],
                dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                dynamo=False,
            )
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"images": x.numpy()})[0]
    err = float(np.abs(got - expected).max())
    if err > atol:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"{fmt} export differs from the PyTorch model by {err:.2e} (> {atol}); not written")
    return path
