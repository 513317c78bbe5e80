"""The plugin host: loads built-in and third-party plugins through the ``autoprune`` entry points."""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from typing import Any

import pluggy

from autoprune import hookspecs
from autoprune.errors import PluginError, UserError

ENTRY_POINT_GROUP = "autoprune"
# Comma-separated allow-list of plugin (entry point) names, as llm's LLM_LOAD_PLUGINS.
ALLOW_ENV = "AUTOPRUNE_LOAD_PLUGINS"
# Built-ins that live inside the host library; registered exactly as an entry-point plugin would be.
DEFAULT_PLUGINS = ("autoprune.data.builtin", "autoprune.models.builtin")

KINDS = ("criterion", "strategy", "scenario", "dataset", "backbone")
_HOOKS = {
    "criterion": "autoprune_register_criteria",
    "strategy": "autoprune_register_strategies",
    "scenario": "autoprune_register_scenarios",
    "dataset": "autoprune_register_datasets",
    "backbone": "autoprune_register_backbones",
}


@dataclass(frozen=True)
class Registered:
    """One named thing a plugin registered: the object and who provides it."""

    kind: str
    name: str
    obj: Any
    plugin: str
    distribution: str


class PluginHost:
    """Owns the pluggy manager and the registries of criteria, strategies, scenarios, datasets, backbones."""

    def __init__(self, load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager("autoprune")
        self.pm.add_hookspecs(hookspecs)
        self._dists: dict[str, str] = {}
        self._registry: dict[str, dict[str, Registered]] | None = None
        for modname in DEFAULT_PLUGINS:
            module = importlib.import_module(modname)
            self.pm.register(module, name=modname)
            self._dists[modname] = "autoprune"
        if load_entry_points:
            self._load_entry_points()
        self.pm.check_pending()

    def _load_entry_points(self) -> None:
        allow = os.environ.get(ALLOW_ENV)
        allowed = None if allow is None else {n.strip() for n in allow.split(",") if n.strip()}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "?"
            label = f"{dist}:{ep.name}"
            if allowed is not None and ep.name not in allowed and label not in allowed:
                continue
            if self.pm.get_plugin(label) is not None:
                continue  # the same distribution seen twice on sys.path
            try:
                module = ep.load()
            except Exception as exc:  # any import failure of third-party code
                raise PluginError(
                    f"plugin {label!r} (entry point {ep.value}) failed to import: {type(exc).__name__}: {exc}; "
                    f"fix or uninstall {dist!r}, or leave it out with {ALLOW_ENV}=<names to load>"
                ) from exc
            self.register_plugin(module, name=label, distribution=dist)

    def register_plugin(self, plugin: object, name: str, distribution: str = "<inline>") -> None:
        """Register a plugin module or object (tests and notebooks use this for inline plugins)."""
        self.pm.register(plugin, name=name)
        self._dists[name] = distribution
        self.pm.check_pending()
        self._registry = None

    def unregister_plugin(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._dists.pop(name, None)
        self._registry = None

    def _collect(self) -> dict[str, dict[str, Registered]]:
        registry: dict[str, dict[str, Registered]] = {kind: {} for kind in KINDS}
        for kind, hook_name in _HOOKS.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                plugin_name = impl.plugin_name
                dist = self._dists.get(plugin_name, "?")

                def register(*args: Any, _kind: str = kind, _plugin: str = plugin_name, _dist: str = dist) -> None:
                    if len(args) == 1:  # a class carrying its own ``name``
                        obj = args[0]
                        name = getattr(obj, "name", None)
                        if not isinstance(name, str) or not name:
                            raise PluginError(
                                f"plugin {_plugin!r} registered a {_kind} without a 'name' attribute; "
                                f"give the class a name = '...' or call register(name, obj)"
                            )
                    elif len(args) == 2:
                        name, obj = args
                    else:
                        raise PluginError(f"plugin {_plugin!r}: register() takes (cls) or (name, obj)")
                    existing = registry[_kind].get(name)
                    if existing is not None:
                        raise PluginError(
                            f"{_kind} {name!r} is registered twice: by {existing.plugin!r} "
                            f"({existing.distribution}) and by {_plugin!r} ({_dist}); uninstall one, "
                            f"rename one, or restrict loading with {ALLOW_ENV}"
                        )
                    registry[_kind][name] = Registered(_kind, name, obj, _plugin, _dist)

                try:
                    impl.function(**{arg: register for arg in impl.argnames})
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(
                        f"plugin {plugin_name!r} ({dist}) raised in {hook_name}: {type(exc).__name__}: {exc}; "
                        f"fix or uninstall it, or leave it out with {ALLOW_ENV}"
                    ) from exc
        return registry

    @property
    def registry(self) -> dict[str, dict[str, Registered]]:
        if self._registry is None:
            self._registry = self._collect()
        return self._registry

    def names(self, kind: str) -> list[str]:
        return sorted(self.registry[kind])

    def get(self, kind: str, name: str) -> Any:
        """The registered object called ``name``; an unknown name is a UserError listing the known ones."""
        try:
            return self.registry[kind][name].obj
        except KeyError:
            import difflib

            known = self.names(kind)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(
                f"unknown {kind} {name!r}{hint}; known: {', '.join(known) or 'none'} "
                f"(`autoprune plugins` lists them, with the package that provides each)"
            ) from None

    def create(self, kind: str, name: str, **options: Any) -> Any:
        """Instantiate a registered plugin class."""
        return self.get(kind, name)(**options)


_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide host, created on first use."""
    global _host
    if _host is None:
        _host = PluginHost()
    return _host


def reset_host() -> None:
    """Forget the process-wide host (tests that install plugins call this)."""
    global _host
    _host = None
