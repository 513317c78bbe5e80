"""Errors a user can cause and fix; the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import errno
import os


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
