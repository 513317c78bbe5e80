"""Search spaces: which prunable groups get an independent keep ratio, with what range and step.

A space is a YAML file (``search_spaces/*.yaml`` ships ``uniform``, ``stagewise``, ``blockwise``,
``groupwise``; a user gives a path to their own)::

    mode: group        # uniform | stage | block | group: how groups share parameters
    low: 0.1           # keep-ratio range of every parameter
    high: 1.0
    step: 0.05         # null for a continuous range
    overrides:         # optional: glob pattern over parameter names -> its own range, or fixed
      "layer1.*": {low: 0.5}
      "layer4.out": {fixed: 1.0}
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from autoprune.config import parse_yaml
from autoprune.errors import UserError

MODES = ("uniform", "stage", "block", "group")
_KEY_LIKE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,39}")  # what a misspelt key looks like
MIN_STEP = 1e-6  # keep ratios finer than this change no width; Optuna's grid arithmetic fails on 1e-300


@dataclass
class Param:
    name: str
    low: float
    high: float
    step: float | None
    groups: list[str] = field(default_factory=list)
    fixed: float | None = None


@dataclass
class SearchSpace:
    """Parameters (name -> range) and the groups each one sets."""

    name: str
    mode: str
    params: dict[str, Param]

    def ratios(self, values: dict[str, float]) -> dict[str, float]:
        """Per-group keep preferences from sampled parameter values."""
        out: dict[str, float] = {}
        for p in self.params.values():
            v = p.fixed if p.fixed is not None else values[p.name]
            for g in p.groups:
                out[g] = float(v)
        return out

    def uniform_values(self) -> dict[str, float]:
        """The same value for every free parameter: after projection, the uniform policy."""
        return {p.name: p.high for p in self.params.values() if p.fixed is None}


def param_of(group: str, mode: str) -> str:
    if mode == "uniform":
        return "all"
    if mode == "group":
        return group
    m = re.match(r"(layer\d+)(?:\.(\d+))?", group)
    if mode == "stage":
        return m.group(1) if m else "stem"
    # block: inner widths of block layerK.i share one ratio; residual widths keep their own
    if m is None:
        return "stem"
    if group.endswith(".out"):
        return group
    return f"{m.group(1)}.{m.group(2)}"


def read_space(name_or_path: str) -> tuple[str, dict[str, Any]]:
    builtin = {p.name[:-5] for p in resources.files("autoprune.spaces").iterdir() if p.name.endswith(".yaml")}
    if name_or_path in builtin:
        text = resources.files("autoprune.spaces").joinpath(f"{name_or_path}.yaml").read_text()
        name = name_or_path
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise UserError(
                f"search space {name_or_path!r} is neither a built-in ({', '.join(sorted(builtin))}) "
                f"nor a YAML file; fix search.space"
            )
        try:
            text, name = path.read_text(encoding="utf-8"), path.stem
        except UnicodeDecodeError as exc:
            raise UserError(
                f"search space {path} is not UTF-8 text (byte {exc.start}); give search.space a YAML file"
            ) from None
        except OSError as exc:
            raise UserError(f"search space {path} cannot be read ({exc.strerror}); fix search.space") from None
    data = parse_yaml(text, f"search space {name_or_path}") or {}
    if not isinstance(data, dict):
        raise UserError(f"search space {name_or_path} must be a mapping with mode/low/high/step")
    return name, data


def _range(
    where: str, spec: dict[str, Any], low: float, high: float, step: float | None
) -> tuple[float, float, float | None]:
    bad = set(spec) - {"low", "high", "step", "fixed"}
    if bad:
        raise UserError(f"search space {where}: unknown key(s) {sorted(bad)}; use low, high, step or fixed")
    try:
        low, high = float(spec.get("low", low)), float(spec.get("high", high))
        raw_step = spec.get("step", step)
        step = None if raw_step is None else float(raw_step)
    except (TypeError, ValueError):
        raise UserError(f"search space {where}: low, high and step must be numbers, got {dict(spec)}") from None
    if not (0 < low <= high <= 1):
        raise UserError(f"search space {where}: need 0 < low <= high <= 1, got low={low}, high={high}")
    if step is not None and not (MIN_STEP <= step <= high - low or low == high):
        raise UserError(
            f"search space {where}: step {step} must be at least {MIN_STEP} and at most high - low "
            f"({high - low:g}); null for a continuous range"
        )
    return low, high, None if step is None or low == high else float(step)


def _fixed(where: str, value: Any) -> float:
    """A ``fixed:`` keep ratio: a number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise UserError(f"search space {where}: fixed must be a keep ratio in (0, 1], got {value!r}")
    return float(value)


def build_space(name_or_path: str, groups: list[str], min_keep: float = 0.0, max_keep: float = 1.0) -> SearchSpace:
    """The space for a model with these prunable groups; patterns that match nothing are errors."""
    name, data = read_space(name_or_path)
    unknown = set(data) - {"mode", "low", "high", "step", "overrides", "description"}
    if any(not isinstance(k, str) or not _KEY_LIKE.fullmatch(k) for k in unknown):
        # not a misspelt key but another kind of file (read as a mapping, e.g. /etc/shadow's "user:hash:...:"
        # lines): its lines are not echoed
        raise UserError(
            f"search space {name_or_path} is not a search space (its top level is not mode, low, high, step, "
            f"overrides); give search.space a built-in name or a search-space YAML file"
        )
    if unknown:
        raise UserError(f"search space {name}: unknown key(s) {sorted(unknown)}; use mode, low, high, step, overrides")
    mode = data.get("mode", "group")
    if mode not in MODES:
        raise UserError(f"search space {name}: mode {mode!r} is not one of {', '.join(MODES)}")
    top: dict[str, Any] = {k: data[k] for k in ("low", "high", "step") if k in data}
    low, high, step = _range(name, top, max(min_keep, 0.05), max_keep, data.get("step"))
    params: dict[str, Param] = {}
    for g in groups:
        pname = param_of(g, mode)
        params.setdefault(pname, Param(pname, low, high, step)).groups.append(g)
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise UserError(f"search space {name}: overrides must be a mapping of pattern -> {{low, high, step, fixed}}")
    for pattern, spec in overrides.items():
        if not isinstance(pattern, str):
            raise UserError(
                f"search space {name}: override key {pattern!r} must be a quoted pattern over "
                f'parameter names, e.g. "layer1.*"'
            )
        hits = [p for p in params if fnmatch.fnmatchcase(p, pattern)]
        if not hits:
            raise UserError(
                f"search space {name}: pattern {pattern!r} matches no parameter; "
                f"parameters are e.g. {', '.join(list(params)[:4])}"
            )
        if not isinstance(spec, dict):
            raise UserError(f"search space {name}: override {pattern!r} must be a mapping (low/high/step/fixed)")
        for pname in hits:
            p = params[pname]
            if "fixed" in spec:
                p.fixed = _fixed(f"{name} {pattern}", spec["fixed"])
            else:
                p.low, p.high, p.step = _range(f"{name} {pattern}", spec, p.low, p.high, p.step)
    return SearchSpace(name, mode, params)
