"""Errors a user can cause and fix; the CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in input the user controls (config, data, plugin names, paths).

    The message names the thing and says how to fix it; the CLI prints it without a traceback.
    """


class PluginError(UserError):
    """A plugin failed to import, registered a duplicate name, or raised inside a hook."""
