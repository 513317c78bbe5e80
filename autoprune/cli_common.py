"""What the ``autoprune`` command line and ``autoprune worker`` share: the config flags, the default run
directory, and running a search from a loaded config. A neutral module, so the two never import each other."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The flags of every command that loads a run configuration."""
    p.add_argument(
        "--config", help="YAML run configuration (default: the demo preset; the checkpoint preset with a checkpoint)"
    )
    p.add_argument("--preset", help="a named preset from configs/ (demo, smoke, ...)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set search.n_trials=5 (repeatable)",
    )
    p.add_argument("--out", help="run directory (default: runs/<preset or config name>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def default_run_dir(args: argparse.Namespace) -> Path:
    """``runs/<preset, config file stem or checkpoint file name>``, ``runs/demo`` when none is given."""
    checkpoint = getattr(args, "checkpoint", None)
    name = args.preset or (Path(args.config).stem if args.config else Path(checkpoint).name if checkpoint else "demo")
    return Path("runs") / name


def run_search_command(cfg: dict[str, Any], out: str | Path, quiet: bool) -> int:
    """Run (or resume) a search; Ctrl-C exits 130 once the report of what finished is written, a search in
    which no trial completed exits 1 (its report says why each trial failed)."""
    from autoprune.search.run import no_trial_completed, run_search

    try:
        report = run_search(cfg, out, progress=not quiet and sys.stderr.isatty())
    except KeyboardInterrupt:
        return 130
    if report["best"] is None and any(t["state"] in ("RUNNING", "WAITING") for t in report["trials"]):
        # A worker sharing a study ends when every trial is claimed; the others may still be running them.
        print(
            "autoprune: no trial has completed yet; the study's other trials are still running in other "
            "workers (rerun this command with the same storage once they finish)",
            file=sys.stderr,
        )
        return 0
    if report["best"] is None:
        print(f"autoprune: error: {no_trial_completed(Path(out), report)}", file=sys.stderr)
        return 1
    return 0
