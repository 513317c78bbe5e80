"""Paths under a run directory: what autoprune reads, writes or deletes there never leaves it.

A run directory's files (a study, report.json, a trial's model path) are untrusted input: a path read
from one is resolved, links included, and refused unless it stays inside the run directory; a link in
the run directory that leads out of it is refused before anything is written.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from autoprune.errors import UserError


def inside(run_dir: str | Path, rel: Any, source: str) -> Path:
    """``run_dir / rel`` resolved (links followed), if it stays inside ``run_dir``; ``source`` says where ``rel`` came from."""
    root = Path(run_dir).resolve()
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise UserError(
            f"{source} names the path {str(rel)[:80]!r}, which is not a file name; the file was edited: "
            f"delete it or start a new run with another --out"
        )
    path = (root / rel).resolve()
    if path == root or not path.is_relative_to(root):
        raise UserError(
            f"{source} names {rel[:120]!r}, which is outside the run directory {run_dir}; autoprune "
            f"touches nothing outside it: the file was edited, delete it or use another --out"
        )
    return path


def own_file(run_dir: str | Path, name: str) -> Path:
    """``run_dir/name``, a file autoprune itself names there, refused when it is a link (even one that stays
    inside: what autoprune keeps in a run directory is never a link)."""
    path = Path(run_dir) / name
    if path.is_symlink():
        raise UserError(
            f"{path} is a symbolic link; autoprune never follows links out of a run directory, delete it and rerun"
        )
    return path


def refuse_links_out(run_dir: str | Path) -> None:
    """Refuse a run directory holding a symbolic link that leads outside it (autoprune would write through it)."""
    root = Path(run_dir).resolve()
    if not root.is_dir():
        return
    for parent, dirs, files in os.walk(root):  # links are listed, never followed
        for name in dirs + files:
            entry = Path(parent) / name
            if entry.is_symlink() and not entry.resolve().is_relative_to(root):
                raise UserError(
                    f"run directory {run_dir} holds {entry.relative_to(root)}, a link to "
                    f"{os.readlink(entry)} outside it; autoprune writes only inside its run directory: "
                    f"remove the link or use another --out"
                )


def open_no_follow(path: Path, flags: int, what: str) -> int:
    """``os.open`` that refuses to go through a link at ``path`` (``O_NOFOLLOW``); returns the descriptor."""
    try:
        return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.EEXIST and path.is_symlink()):
            raise UserError(
                f"{path} is a symbolic link; autoprune never writes its {what} through a link: delete {path}"
            ) from None
        raise
