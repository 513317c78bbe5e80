"""Paths under a run directory: what autoprune reads, writes or deletes there never leaves it.

A run directory's files (a study, report.json, a trial's model path) are untrusted input: a path read
from one is resolved, links included, and refused unless it stays inside the run directory; a link in
the run directory that leads out of it (or in a loop) is refused before anything is written. Every file
autoprune writes there goes through :func:`replacing`, which replaces the name instead of writing through
it, so a link (symbolic or hard) planted at that name never carries the write to another file; every
JSON file it reads back goes through :func:`read_json`.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from autoprune.errors import UserError

MAX_JSON = 64 * 2**20  # far above any JSON file autoprune writes; a bigger one was not written by it


def resolved(path: Path, run_dir: str | Path) -> Path:
    """``path`` with its links followed; a link loop (``RuntimeError`` or ``ELOOP``) is a UserError."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # Python 3.11 raises RuntimeError("Symlink loop ..."), later ones OSError
        root = Path(run_dir)
        try:
            shown: Path | str = path.relative_to(root.resolve() if path.is_absolute() else root)
        except (ValueError, RuntimeError, OSError):
            shown = path
        raise UserError(f"{run_dir} holds {shown}, a link loop; remove it") from None


def inside(run_dir: str | Path, rel: Any, source: str) -> Path:
    """``run_dir / rel`` resolved (links followed), if it stays inside ``run_dir``; ``source`` says where ``rel`` came from."""
    root = resolved(Path(run_dir), run_dir)
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise UserError(
            f"{source} names the path {str(rel)[:80]!r}, which is not a file name; the file was edited: "
            f"delete it or start a new run with another --out"
        )
    path = resolved(root / rel, run_dir)
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
    """Refuse a run directory holding a symbolic link that leads outside it (autoprune would write through it)
    or in a loop (resolving any path through it would fail)."""
    root = resolved(Path(run_dir), run_dir)
    if not root.is_dir():
        return
    for parent, dirs, files in os.walk(root):  # links are listed, never followed
        for name in dirs + files:
            entry = Path(parent) / name
            if entry.is_symlink() and not resolved(entry, run_dir).is_relative_to(root):
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


@contextmanager
def replacing(path: str | Path, text: bool = False) -> Iterator[IO[Any]]:
    """A new file to write ``path``'s content into: created in the same folder (``O_EXCL|O_NOFOLLOW``), then
    ``os.replace``d onto ``path`` once the block ends without error. Why: the name is replaced, so a link or a
    hard link there is never written through, and a crash leaves the old file whole, never half of the new."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = open_no_follow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "temporary file")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") if text else os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_file(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through :func:`replacing`."""
    with replacing(path, text=isinstance(data, str)) as f:
        f.write(data)
    return Path(path)


def copy_file(src: str | Path, dst: str | Path) -> Path:
    """Copy ``src``'s bytes to ``dst`` through :func:`replacing` (``shutil.copyfile`` writes through a link)."""
    with open(src, "rb") as s, replacing(dst) as d:
        shutil.copyfileobj(s, d)
    return Path(dst)


def read_json(path: Path, fix: str, limit: int = MAX_JSON) -> dict[str, Any]:
    """The JSON object autoprune wrote to ``path`` in a run directory, read without following a link and
    size-capped. Any problem (a link, not a plain file, over ``limit`` bytes, not UTF-8 JSON, not an
    object) is one UserError naming the file, then ``fix``."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        why = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise UserError(f"{path} cannot be read ({why}); {fix}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{path} is not a plain file; {fix}")
        if st.st_size > limit:
            raise UserError(
                f"{path} holds {st.st_size / 2**20:.0f} MiB, more than the {limit / 2**20:.0f} MiB autoprune "
                f"ever writes there; {fix}"
            )
        raw = f.read(limit + 1)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{path} is truncated or not JSON; {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object (it holds a {type(data).__name__}); {fix}")
    return data
