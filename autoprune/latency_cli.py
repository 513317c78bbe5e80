"""``autoprune latency profile``: measure a device's latency table (what ``budget.latency_table`` reads)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from autoprune.choices import LAST_STRIDES
from autoprune.config import MAX_INPUT_SIDE, MIN_INPUT_SIDE, RANGES, check_range
from autoprune.errors import UserError, writable_folder


def add_latency_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("latency", help="latency tables for latency budgets (profile on the deployment device)")
    lsub = p.add_subparsers(dest="latency_command", required=True)
    s = lsub.add_parser("profile", help="measure a per-layer latency table of an architecture on this machine")
    s.add_argument("--arch", required=True, help="backbone, as model.arch (resnet18, resnet50, ...)")
    s.add_argument("--input-size", type=int, nargs=2, required=True, metavar=("H", "W"), help="as model.input_size")
    s.add_argument("--batch", type=int, default=1, help="images per forward pass, as budget.latency_batch (default 1)")
    s.add_argument("--runtime", choices=["torch", "onnxruntime"], default="torch")
    s.add_argument("--out", required=True, help="table file to write (JSON); reused if it already matches")
    s.add_argument("--device", default="cpu", help="cpu or cuda[:N] (runtime torch)")
    s.add_argument("--threads", type=int, default=0, help="intra-op threads (default: every core this process may use)")
    s.add_argument("--last-stride", type=int, default=1, help="as model.last_stride (default 1)")
    s.add_argument("--pooling", choices=["avg", "gem"], default="avg")
    s.add_argument("--round-to", type=int, default=8, help="as budget.round_to: widths come in these steps")
    s.add_argument("--min-keep", type=float, default=0.1, help="as budget.min_keep: the narrowest width profiled")
    s.add_argument("--points", type=int, default=6, help="grid points per width axis (default 6)")
    s.add_argument("--repeats", type=int, default=7, help="timed runs per point (the median is kept)")
    s.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time (default), or this process's CPU time on a machine shared with other jobs",
    )
    s.add_argument("--force", action="store_true", help="profile again even if --out already matches")
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_latency(args: argparse.Namespace) -> int:
    return cmd_profile(args)


def _check_args(args: argparse.Namespace) -> None:
    """Everything checked before the model is built and timed (minutes on a ResNet-50): the sizes by the limits
    the config sets for model.input_size and budget.latency_batch, and where the table goes."""
    if not all(MIN_INPUT_SIDE <= v <= MAX_INPUT_SIDE for v in args.input_size):
        raise UserError(
            f"--input-size must be two integers in [{MIN_INPUT_SIDE}, {MAX_INPUT_SIDE}] (as model.input_size), "
            f"got {args.input_size}"
        )
    check_range("--batch", args.batch, *RANGES["budget.latency_batch"])
    if args.last_stride not in LAST_STRIDES:
        raise UserError(f"--last-stride is {args.last_stride}; choose one of: {', '.join(map(str, LAST_STRIDES))}")
    for name in ("round_to", "points", "repeats"):
        if getattr(args, name) < (2 if name == "points" else 1):
            raise UserError(
                f"--{name.replace('_', '-')} must be >= {2 if name == 'points' else 1}, got {getattr(args, name)}"
            )
    if not 0 < args.min_keep <= 1:
        raise UserError(f"--min-keep must be in (0, 1], got {args.min_keep}")
    if args.device.startswith("cuda") and args.runtime != "torch":
        raise UserError("--device cuda needs --runtime torch (the onnxruntime runtime here is its CPU provider)")
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file path, e.g. {out / 'latency.json'}")
    writable_folder(out.parent, f"--out {out}: the folder", "choose another --out")


def cmd_profile(args: argparse.Namespace) -> int:
    import torch

    from autoprune.engine.device import resolve_device, set_threads
    from autoprune.models import build_model
    from autoprune.pruning.latency import LatencyTable, make_key, profile, wall_measure

    _check_args(args)
    set_threads(args.threads)
    device = str(resolve_device(args.device))
    key = make_key(
        args.arch,
        tuple(args.input_size),
        args.batch,
        args.runtime,
        device,
        torch.get_num_threads(),
        args.last_stride,
        args.pooling,
        args.round_to,
        args.min_keep,
        args.clock,
    )
    out = Path(args.out)
    if out.is_file() and not args.force:
        try:
            if LatencyTable.load(out).key == key:
                print(f"{out} already holds this table ({key.device}, {key.threads} threads); --force profiles again")
                return 0
        except UserError:
            pass  # unreadable: profile again over it
    torch.manual_seed(0)
    model = build_model(args.arch, 2, last_stride=args.last_stride, pooling=args.pooling)
    measure = wall_measure(args.runtime, device, key.threads, repeats=args.repeats, clock=args.clock)
    progress = not args.quiet and sys.stderr.isatty()
    table = profile(model, key, measure, points=args.points, progress=progress)
    try:
        table.save(out)
    except OSError as exc:
        raise UserError(f"cannot write {out} ({exc.strerror}); choose another --out") from None
    print(summary(table, out))
    return 0


def summary(table: Any, out: Path) -> str:
    """What was measured and how well the table predicts the whole models it was fitted on."""
    k = table.key
    points = sum(len(kind.cin) * len(kind.cout) for kind in table.kinds)
    full = next((p for p in table.calibration if p["keep"] == 1.0), None)
    errs = [
        abs((table.scale * p["layers_ms"] + table.offset_ms) / p["measured_ms"] - 1)
        for p in table.calibration
        if p["measured_ms"] > 0
    ]
    lines = [
        f"wrote {out}: {k.arch} at {k.input_size[0]}x{k.input_size[1]}, batch {k.batch}, {k.runtime} on "
        f"{k.device}, {k.threads} threads; {len(table.kinds)} layer kinds, {points} points, "
        f"{table.seconds:.0f} s"
    ]
    if full:
        lines.append(f"unpruned: {full['measured_ms'] / k.batch:.3f} ms per image measured end to end")
    if errs:
        lines.append(
            f"calibration: whole = {table.scale:.3f} x layers + {table.offset_ms:.3f} ms; "
            f"predicted vs measured on {len(errs)} whole models: mean error {100 * sum(errs) / len(errs):.1f}%,"
            f" max {100 * max(errs):.1f}%"
        )
    return "\n".join(lines)
