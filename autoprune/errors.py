"""Errors a user can cause and fix; the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path


class UserError(Exception):
    """A mistake in input the user controls (config, data, plugin names, paths).

    The message names the thing and says how to fix it; the CLI prints it without a traceback.
    """


class PluginError(UserError):
    """A plugin failed to import, registered a duplicate name, or raised inside a hook."""


# errno values that mean "the disk is full", not "this trial failed"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"


def disk_full(exc: BaseException) -> OSError | None:
    """The full disk behind ``exc``, if one is: an ``OSError`` ENOSPC/EDQUOT, or SQLite's "database or disk
    is full", found anywhere in the chain of causes (Optuna and SQLAlchemy wrap the SQLite error, and Optuna
    may raise its own error while handling it)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            return e
        if getattr(e, "sqlite_errorcode", None) == _SQLITE_FULL:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # the study database could not be written
        todo += [e.__cause__, e.__context__, getattr(e, "orig", None)]
    return None


def writable_folder(folder: str | Path, what: str, fix: str) -> Path:
    """``folder``, if it is a folder this process can write in or could create; else a UserError
    ``{what} {folder} is not a writable folder (...); {fix}``.

    Checked before long work that writes there (a profile, a dataset), so a mistyped path costs a second, not
    the work. Nothing is left behind: a missing folder is not created, a probe file in the nearest existing
    folder is removed at once. A probe, not ``os.access``: root passes every access check, even in ``/proc``.
    """
    path = Path(folder)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {path} is not a writable folder ({existing} is a file); {fix}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".autoprune-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(
            f"{what} {path} is not a writable folder (cannot create a file in {existing}: {exc.strerror}); {fix}"
        ) from None
    return path
