"""The plugin host: registers the built-in plugins, then the third-party ones of the ``autoprune`` entry points."""

from __future__ import annotations

import difflib
import importlib.metadata
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import pluggy

from autoprune import hookspecs
from autoprune.errors import PluginError, UserError

ENTRY_POINT_GROUP = "autoprune"
# Comma-separated allow-list of third-party plugin (entry point) names, as llm's LLM_LOAD_PLUGINS.
ALLOW_ENV = "AUTOPRUNE_LOAD_PLUGINS"
# The built-ins, all five kinds, in plugins/ (importable as autoprune_plugins): always registered, as llm
# registers its default plugins, exactly as an entry-point plugin is, under the label an entry point of the
# autoprune distribution would have ("autoprune:criteria"). The allow-list restricts third parties only.
DEFAULT_PLUGINS = {
    "criteria": "autoprune_plugins.criteria",
    "strategies": "autoprune_plugins.strategies",
    "scenarios": "autoprune_plugins.scenarios",
    "datasets": "autoprune_plugins.datasets",
    "backbones": "autoprune_plugins.backbones",
}

KINDS = ("criterion", "strategy", "scenario", "dataset", "backbone")
# The kinds the host instantiates, so the kinds that take options (``plugins.<name>.<option>``).
CONFIGURABLE_KINDS = ("criterion", "strategy", "scenario")
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
    version: str | None = None

    @property
    def options(self) -> dict[str, Any]:
        """The options the object declares, with their defaults."""
        return declared_options(self.obj, f"{self.kind} {self.name!r}")


def declared_options(obj: Any, who: str = "plugin") -> dict[str, Any]:
    """A plugin's ``options`` class attribute (option name -> default; the default's type is the option's)."""
    opts = getattr(obj, "options", None)
    if opts is None:
        return {}
    if not isinstance(opts, Mapping) or not all(isinstance(k, str) and k.isidentifier() for k in opts):
        raise PluginError(f"{who}: 'options' must be a mapping of option names to defaults, got {opts!r}")
    return dict(opts)


def _option_error(where: str, option: str, default: Any, value: Any) -> UserError | None:
    """Why ``value`` cannot be ``option`` (whose default is ``default``), or None when it can."""
    if default is None:
        return None  # no default type: anything YAML can hold
    kind = float if isinstance(default, float) else type(default)
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if ok:
        return None
    return UserError(
        f"{where}.{option} must be {kind.__name__} (the type of its default {default!r}), "
        f"got {type(value).__name__} {value!r}"
    )


def merge_options(obj: Any, given: Mapping[str, Any] | None, where: str) -> MappingProxyType:
    """``obj``'s declared defaults overridden by ``given``, checked: unknown options and wrong types are
    UserErrors naming ``where`` (``plugins.<name>``) and the option. Read-only."""
    defaults = declared_options(obj, where)
    merged = dict(defaults)
    for option, value in (given or {}).items():
        if option not in defaults:
            close = difflib.get_close_matches(option, list(defaults), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            known = ", ".join(defaults) if defaults else "none"
            plugin = where.split(".", 1)[-1]
            raise UserError(f"{where}.{option}: {plugin!r} has no option {option!r}{hint}; its options: {known}")
        error = _option_error(where, option, defaults[option], value)
        if error is not None:
            raise error
        merged[option] = float(value) if isinstance(defaults[option], float) else value
    check = getattr(obj, "validate_options", None)
    if callable(check):
        try:
            check(MappingProxyType(merged))
        except (ValueError, TypeError) as exc:
            raise UserError(f"{where}: {exc}") from None
    return MappingProxyType(merged)


def instantiate(cls: Any, given: Mapping[str, Any] | None = None, where: str | None = None) -> Any:
    """An instance of plugin class ``cls`` whose ``options`` are its defaults merged with ``given``."""
    options = merge_options(cls, given, where or f"plugins.{getattr(cls, 'name', cls.__name__)}")
    obj = cls()
    obj.options = options
    return obj


class PluginHost:
    """Owns the pluggy manager and the registries of criteria, strategies, scenarios, datasets, backbones."""

    def __init__(self, load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager("autoprune")
        self.pm.add_hookspecs(hookspecs)
        self._dists: dict[str, tuple[str, str | None]] = {}
        self._registry: dict[str, dict[str, Registered]] | None = None
        for name, modname in DEFAULT_PLUGINS.items():
            label = f"autoprune:{name}"
            self.pm.register(importlib.import_module(modname), name=label)
            self._dists[label] = ("autoprune", _version("autoprune"))
        if load_entry_points:
            self._load_entry_points()
        self.pm.check_pending()

    def _load_entry_points(self) -> None:
        allow = os.environ.get(ALLOW_ENV)
        allowed = None if allow is None else {n.strip() for n in allow.split(",") if n.strip()}
        # An install made before the built-ins left the entry points still lists them: they are registered already.
        builtin = set(DEFAULT_PLUGINS.values())
        entry_points = [
            ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.value not in builtin
        ]
        if allowed:
            # The built-ins' names stay valid in the list (they always load), so lists written for earlier
            # versions, which had to name them, still work.
            known = {n for ep in entry_points for n in (ep.name, f"{ep.dist.name if ep.dist else '?'}:{ep.name}")}
            known |= {n for name in DEFAULT_PLUGINS for n in (name, f"autoprune:{name}")}
            unknown = sorted(allowed - known)
            if unknown:
                names = sorted({ep.name for ep in entry_points} | set(DEFAULT_PLUGINS))
                raise UserError(
                    f"{ALLOW_ENV}={allow!r} names {', '.join(unknown)}, which no installed plugin "
                    f"provides (installed: {', '.join(names)}); "
                    f"fix the names in {ALLOW_ENV} or unset it to load every plugin"
                )
        for ep in entry_points:
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
            version = ep.dist.version if ep.dist is not None else None
            self.register_plugin(module, name=label, distribution=dist, version=version)

    def register_plugin(
        self, plugin: object, name: str, distribution: str = "<inline>", version: str | None = None
    ) -> None:
        """Register a plugin module or object (tests and notebooks use this for inline plugins)."""
        self.pm.register(plugin, name=name)
        self._dists[name] = (distribution, version)
        self._registry = None
        self._check_pending(name)

    def _check_pending(self, name: str) -> None:
        """A hook implementation with no autoprune hook of its name (a typo) is a PluginError naming the plugin."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError:
            specs = sorted(
                n for n, c in vars(self.pm.hook).items() if isinstance(c, pluggy.HookCaller) and c.has_spec()
            )
            typos = sorted(
                n
                for n, c in vars(self.pm.hook).items()
                if isinstance(c, pluggy.HookCaller) and not c.has_spec() and c.get_hookimpls()
            )
            self.unregister_plugin(name)  # the host stays usable without it
            close = difflib.get_close_matches(typos[0], specs, n=1) if typos else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PluginError(
                f"plugin {name!r} implements {', '.join(typos) or 'a hook'}, which is not an autoprune "
                f"hook{hint}; rename it (hooks: {', '.join(specs)}), or leave the plugin out with "
                f"{ALLOW_ENV}"
            ) from None

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
                dist, version = self._dists.get(plugin_name, ("?", None))

                def register(
                    *args: Any,
                    _kind: str = kind,
                    _plugin: str = plugin_name,
                    _dist: str = dist,
                    _version: str | None = version,
                ) -> None:
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
                    registry[_kind][name] = Registered(_kind, name, obj, _plugin, _dist, _version)

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
        return self.entry(kind, name).obj

    def entry(self, kind: str, name: str) -> Registered:
        """The registry entry of ``name``; an unknown name is a UserError listing the known ones."""
        try:
            return self.registry[kind][name]
        except KeyError:
            known = self.names(kind)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            if os.environ.get(ALLOW_ENV) is not None:
                hint += f"; {ALLOW_ENV}={os.environ[ALLOW_ENV]!r} is set and may leave out the plugin that provides it"
            raise UserError(
                f"unknown {kind} {name!r}{hint}; known: {', '.join(known) or 'none'} "
                f"(`autoprune plugins` lists them, with the package that provides each)"
            ) from None

    def create(self, kind: str, name: str, plugins: Mapping[str, Any] | None = None) -> Any:
        """An instance of the registered class ``name`` with its options taken from the ``plugins`` config
        section (``{name: {option: value}}``) over its defaults, as read-only ``instance.options``."""
        return instantiate(self.get(kind, name), (plugins or {}).get(name), f"plugins.{name}")

    def options(self, kind: str, name: str, plugins: Mapping[str, Any] | None = None) -> MappingProxyType:
        """The effective options of ``name``: its defaults, overridden by the ``plugins`` config section."""
        return merge_options(self.get(kind, name), (plugins or {}).get(name), f"plugins.{name}")

    def configurable(self) -> dict[str, Registered]:
        """Every registered class that declares options, by name."""
        out: dict[str, Registered] = {}
        for kind in CONFIGURABLE_KINDS:
            for name, reg in self.registry[kind].items():
                if reg.options:
                    if name in out:
                        raise PluginError(
                            f"plugins.{name} would configure both {out[name].kind} {name!r} ({out[name].distribution}) "
                            f"and {kind} {name!r} ({reg.distribution}); rename one of them"
                        )
                    out[name] = reg
        return out

    def check_plugins_section(self, plugins: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The ``plugins:`` config section checked against what is registered, values coerced (int -> float).

        An unknown plugin name, an unknown option or a wrong type is a UserError naming
        ``plugins.<name>.<option>``.
        """
        configurable = self.configurable()
        out: dict[str, dict[str, Any]] = {}
        for name, given in plugins.items():
            if name not in configurable:
                known = sorted(n for kind in KINDS for n in self.registry[kind])
                if name in known:
                    raise UserError(
                        f"plugins.{name}: {name!r} takes no options; remove plugins.{name} "
                        f"(`autoprune plugins` shows which plugins take options)"
                    )
                close = difflib.get_close_matches(name, list(configurable) or known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UserError(
                    f"plugins.{name}: no plugin is called {name!r}{hint}; plugins with options: "
                    f"{', '.join(sorted(configurable)) or 'none'} (`autoprune plugins` lists them)"
                )
            merged = merge_options(configurable[name].obj, given, f"plugins.{name}")
            out[name] = {k: merged[k] for k in given}
        return out

    def effective_plugins_section(self, plugins: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Every configurable plugin's effective options (defaults overridden by ``plugins``), by name."""
        return {
            name: dict(merge_options(reg.obj, plugins.get(name), f"plugins.{name}"))
            for name, reg in sorted(self.configurable().items())
        }

    def provenance(self, kind: str, name: str, plugins: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What report.json records of a plugin a run used: who provides it, which version, which options."""
        reg = self.entry(kind, name)
        options = dict(merge_options(reg.obj, (plugins or {}).get(name), f"plugins.{name}"))
        return {
            "name": name,
            "kind": kind,
            "distribution": reg.distribution,
            "version": reg.version,
            "options": options,
        }


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe(obj: Any) -> str:
    """The first line of a registered object's docstring (a ``functools.partial``'s own, else its function's)."""
    doc = obj.__dict__.get("__doc__") if hasattr(obj, "__dict__") else None
    doc = doc or getattr(obj, "__doc__", None) or ""
    if not doc.strip() or doc == type(obj).__doc__:
        doc = getattr(getattr(obj, "func", None), "__doc__", None) or ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def catalog_markdown(host: PluginHost, distribution: str = "autoprune") -> str:
    """One table per kind of what ``distribution`` registers: name, options, one line each (docs/plugins.md)."""
    titles = {
        "criterion": "Criteria",
        "strategy": "Strategies",
        "scenario": "Scenarios",
        "dataset": "Dataset readers",
        "backbone": "Backbones",
    }
    lines: list[str] = []
    for kind in KINDS:
        lines += [f"**{titles[kind]}**", "", "| name | options | what it is |", "| --- | --- | --- |"]
        for name in host.names(kind):
            reg = host.registry[kind][name]
            if reg.distribution != distribution:
                continue
            options = ", ".join(f"`{k}={v!r}`" for k, v in reg.options.items()) if kind in CONFIGURABLE_KINDS else ""
            what = describe(reg.obj).replace("``", "`").replace("|", "\\|")
            lines.append(f"| `{name}` | {options or '-'} | {what} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


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
