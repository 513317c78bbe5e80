"""The ``autoprune`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoprune.cli_common import add_config_args, default_run_dir, run_search_command
from autoprune.errors import UserError

# The common case of `autoprune search` in flags: each one sets a config key (before any --set).
SHORTCUTS = {
    "checkpoint": "model.checkpoint",
    "target": "data.target",
    "budget": "budget.macs_ratio",
    "arch": "model.arch",
    "input_size": "model.input_size",
    "source": "data.source",
}


def _shortcut_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="your trained model to prune: a torchreid or fast-reid checkpoint, an autoprune model or a "
        "state dict (model.checkpoint); nothing is trained on a source",
    )
    p.add_argument(
        "--target",
        metavar="KIND:ROOT",
        help="the data where the model will run, e.g. market1501:/data/Market-1501 (data.target)",
    )
    p.add_argument(
        "--budget",
        type=float,
        metavar="RATIO",
        help="MACs budget as a fraction of the unpruned model's, e.g. 0.5 (budget.macs_ratio)",
    )
    p.add_argument("--arch", help="backbone, e.g. resnet50; inferred from --checkpoint when left out (model.arch)")
    p.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input height and width (model.input_size; 256 128 with --checkpoint)",
    )
    p.add_argument(
        "--source",
        metavar="KIND:ROOT",
        help="source data, if you have it: source metrics, the direct_transfer scenario (data.source)",
    )


def _shortcut_overrides(args: argparse.Namespace) -> list[str]:
    """The shortcut flags given, as --set items (JSON values: a path stays a string, whatever it looks like)."""
    return [
        f"{key}={json.dumps(getattr(args, name))}"
        for name, key in SHORTCUTS.items()
        if getattr(args, name, None) is not None
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoprune", description="Prune re-ID CNNs for a target domain under a MACs budget."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "search",
        help="search per-layer pruning ratios under the budget (the main job)",
        description="Prune a re-ID model for a target domain under a MACs budget. Your own trained "
        "model: autoprune search --checkpoint model.pth.tar-60 "
        "--target market1501:/data/Market-1501 --budget 0.5",
    )
    _shortcut_args(p)
    add_config_args(p)
    p = sub.add_parser("train", help="train (or reuse the cached) baseline on the source domain")
    add_config_args(p)
    from autoprune.search.worker import add_worker_parser

    add_worker_parser(sub)
    from autoprune.latency_cli import add_latency_parser

    add_latency_parser(sub)
    p = sub.add_parser("plugins", help="list loaded criteria, strategies, scenarios, datasets and backbones")
    p.add_argument(
        "--markdown", action="store_true", help="print the built-ins as the Markdown tables of docs/plugins.md"
    )
    p = sub.add_parser("plugin", help="plugin authors' tools")
    psub = p.add_subparsers(dest="plugin_command", required=True)
    n = psub.add_parser("new", help="write a plugin package skeleton (pyproject, class, contract test)")
    n.add_argument("kind", metavar="KIND", help="criterion, strategy or scenario")
    n.add_argument("name", metavar="NAME", help="the registered name users configure (e.g. my_criterion)")
    n.add_argument("--out", required=True, help="a new folder to write the package into")
    p = sub.add_parser("dashboard", help="open a run's study in optuna-dashboard on loopback (optional extra)")
    p.add_argument("run", help="run directory (the --out of search)")
    p.add_argument("--port", type=int, default=8080)
    p = sub.add_parser("report", help="print a run's summary and write report.md with its plots")
    p.add_argument("run", help="run directory (the --out of search)")
    p.add_argument("--budget", type=float, help="pick the best trial at or under this MACs ratio (Pareto mode)")
    p = sub.add_parser("export", help="export a run's pruned model for deployment (output checked)")
    p.add_argument("run", help="run directory (the --out of search)")
    p.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    p.add_argument("--out", help="output file (default: RUN/model/pruned.<format>)")
    p = sub.add_parser("config", help="print the effective configuration")
    add_config_args(p)
    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synth", help="write the synthetic re-ID benchmark (Market-1501 layout)")
    s.add_argument("--out", required=True, help="folder to write")
    s.add_argument("--domain", default="A", help="synthetic domain (A, B, C)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--num-train-ids", type=int, default=100)
    s.add_argument("--num-test-ids", type=int, default=100)
    s.add_argument("--images-per-id-per-cam", type=int, default=2)
    return parser


def _default_out(args: argparse.Namespace) -> str:
    return args.out or str(default_run_dir(args))


def _load(args: argparse.Namespace) -> dict[str, Any]:
    from autoprune.config import load_config

    return load_config(args.config, args.preset, [*_shortcut_overrides(args), *args.overrides])


def cmd_search(args: argparse.Namespace) -> int:
    return run_search_command(_load(args), _default_out(args), args.quiet)


def cmd_train(args: argparse.Namespace) -> int:
    from autoprune.data.domain import build_domain
    from autoprune.engine.baseline import get_baseline
    from autoprune.engine.device import resolve_device, set_threads
    from autoprune.engine.evaluate import evaluate_domain
    from autoprune.pruning.serialize import save_pruned
    from autoprune.rundir import refuse_links_out, write_file

    cfg = _load(args)
    if cfg["data"]["source"] is None:
        raise UserError(
            "autoprune train trains and scores on data.source, which is null; give data.source, or "
            "prune model.checkpoint directly with autoprune search"
        )
    out = Path(_default_out(args))
    if out.exists() and not out.is_dir():
        raise UserError(
            f"--out {out} is a file; `autoprune train` writes a folder (baseline.pt, train_report.json): "
            f"give a folder path"
        )
    refuse_links_out(out)
    out.mkdir(parents=True, exist_ok=True)
    set_threads(cfg["train"]["threads"])
    device = resolve_device(cfg["train"]["device"])
    source = build_domain(cfg["data"]["source"], cfg)
    target = build_domain(cfg["data"]["target"], cfg, role="target")
    model, info = get_baseline(cfg, source, device, progress=not args.quiet and sys.stderr.isatty())
    tgt = evaluate_domain(model, target.query, target.gallery, device, precision=cfg["train"]["precision"])
    tgt = {k: v for k, v in tgt.items() if k not in ("hits", "aps")}
    save_pruned(model, out / "baseline.pt")
    report = {
        "arch": cfg["model"]["arch"],
        "source": info["source_metrics"],
        "target_direct_transfer": tgt,
        "checkpoint": "baseline.pt",
    }
    write_file(out / "train_report.json", json.dumps(report, indent=2))
    print(
        f"source rank-1 {info['source_metrics']['rank1']:.3f} mAP {info['source_metrics']['mAP']:.3f}; "
        f"target (direct transfer) rank-1 {tgt['rank1']:.3f} mAP {tgt['mAP']:.3f}; wrote {out}"
    )
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from autoprune.host import CONFIGURABLE_KINDS, KINDS, catalog_markdown, get_host

    host = get_host()
    if args.markdown:
        print(catalog_markdown(host), end="")
        return 0
    for kind in KINDS:
        print(f"{kind}:")
        for name in host.names(kind):
            r = host.registry[kind][name]
            version = f" {r.version}" if r.version else ""
            print(f"  {name:24s} {r.distribution}{version}  ({r.plugin})")
            if r.options and kind in CONFIGURABLE_KINDS:
                print("      options: " + ", ".join(f"{k}={v!r}" for k, v in r.options.items()))
    return 0


def cmd_plugin(args: argparse.Namespace) -> int:
    from autoprune.scaffold import new_plugin

    files = new_plugin(args.kind, args.name, args.out)
    print(f"wrote {len(files)} files under {args.out}: pip install -e {args.out}, then python -m pytest there")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from autoprune.dashboard import make_server

    server = make_server(args.run, port=args.port)
    print(f"optuna-dashboard on http://127.0.0.1:{server.server_port}/dashboard/ (Ctrl-C stops it)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """The effective configuration, with every configurable plugin's effective options."""
    from autoprune.config import dump
    from autoprune.host import get_host

    cfg = _load(args)
    print(dump({**cfg, "plugins": get_host().effective_plugins_section(cfg["plugins"])}), end="")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from autoprune.data.synth import generate

    path = generate(
        args.out,
        domain=args.domain,
        seed=args.seed,
        num_train_ids=args.num_train_ids,
        num_test_ids=args.num_test_ids,
        images_per_id_per_cam=args.images_per_id_per_cam,
    )
    print(f"wrote synthetic domain {args.domain} to {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from autoprune.search.report import pick_from_front, read_report, summary_table, write_markdown

    run_dir = Path(args.run)
    if args.budget is not None and not 0 < args.budget <= 1:
        raise UserError(f"--budget is a MACs ratio in (0, 1], got {args.budget}")
    report = read_report(run_dir)  # links checked first: report.md is written there
    print(summary_table(report))
    if args.budget is not None:
        pick = pick_from_front(report, args.budget)
        if pick is None:
            raise UserError(f"no complete trial at or under {args.budget:.0%} MACs; raise --budget")
        print(
            f"\nbest at <= {args.budget:.0%} MACs: trial {pick['number']} (MACs ratio {pick['macs_ratio']:.3f}, "
            f"rank-1 {pick['target']['rank1']:.3f}, mAP {pick['target']['mAP']:.3f})"
        )
    try:
        path = write_markdown(run_dir, report)
    except OSError as exc:  # a read-only run directory: the summary above is all there is
        raise UserError(
            f"{run_dir / 'report.md'} could not be written ({exc.strerror or exc}); the summary is above"
        ) from None
    print(f"\nwrote {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from autoprune.export import export_model

    path = export_model(args.run, args.format, args.out)
    print(f"wrote {path} (output checked against the PyTorch model)")
    return 0


def cmd_latency(args: argparse.Namespace) -> int:
    from autoprune.latency_cli import cmd_latency as run_latency

    return run_latency(args)


def cmd_worker(args: argparse.Namespace) -> int:
    from autoprune.search.worker import cmd_worker as run_worker

    return run_worker(args)


COMMANDS = {
    "plugin": cmd_plugin,
    "dashboard": cmd_dashboard,
    "latency": cmd_latency,
    "worker": cmd_worker,
    "report": cmd_report,
    "export": cmd_export,
    "search": cmd_search,
    "train": cmd_train,
    "plugins": cmd_plugins,
    "config": cmd_config,
    "data": cmd_data,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())  # one line, whatever the message (or a wrapped library error) holds
        print(f"autoprune: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
