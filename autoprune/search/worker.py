"""``autoprune worker``: one of several processes or machines running the trials of one shared Optuna study.

Every worker runs the search of the same config against ``--storage``: a journal file on a disk the
processes share (``journal:/shared/study.log``), or a database several machines reach
(``postgresql://user:password@host/db``). Trials are claimed in the storage, so no trial runs twice, and a
worker stops once the study holds ``search.n_trials`` finished trials in total, whoever ran them.

Each worker keeps its local files (trial models, report.json of the study as it stood when that worker
finished) in its own run directory, by default ``runs/<preset or config>/workers/<host>-<pid>``: the
workers never write the same file. ``autoprune search`` with the same ``--set search.storage=URL`` run
after them runs no trial (the study is full) and writes the final model and report in one place.
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path
from typing import Any

from autoprune.cli_common import add_config_args, default_run_dir, run_search_command
from autoprune.errors import UserError


def add_worker_parser(subparsers: Any) -> None:
    """Add ``autoprune worker`` to the CLI's subcommands."""
    p = subparsers.add_parser(
        "worker",
        help="join a shared Optuna study (journal file or PostgreSQL) and run "
        "its trials until it has search.n_trials finished trials",
    )
    add_config_args(p)
    p.add_argument(
        "--storage",
        required=True,
        metavar="URL",
        help="the shared study: journal:/shared/study.log (processes on one machine or a shared "
        "disk) or postgresql://user:password@host/db (several machines)",
    )
    p.add_argument(
        "--n-trials",
        type=int,
        metavar="N",
        help="finished trials the whole study should reach, all workers together (default: search.n_trials)",
    )


def worker_out(args: argparse.Namespace) -> Path:
    """The worker's run directory: --out, else one per host and process under the config's default."""
    if args.out:
        return Path(args.out)
    return default_run_dir(args) / "workers" / f"{socket.gethostname()}-{os.getpid()}"


def worker_config(args: argparse.Namespace) -> dict[str, Any]:
    from autoprune.config import load_config

    cfg = load_config(args.config, args.preset, args.overrides)
    if cfg["search"]["backend"] != "optuna":
        raise UserError(
            "autoprune worker joins an Optuna study; with search.backend ray, run `autoprune search` "
            "once and let Ray spread the trials over the cluster (search.ray.address)"
        )
    if args.n_trials is not None:
        if args.n_trials <= 0:
            raise UserError(f"--n-trials must be > 0, got {args.n_trials}")
        cfg["search"]["n_trials"] = args.n_trials
    # Set after loading, not through --set: a URL's password may hold characters YAML would read otherwise.
    cfg["search"]["storage"] = args.storage
    return cfg


def cmd_worker(args: argparse.Namespace) -> int:
    """Run trials of the shared study until it holds n_trials finished trials; then report as a search does."""
    return run_search_command(worker_config(args), worker_out(args), args.quiet)
