"""Run configuration: one YAML file, presets, ``--set dotted.key=value`` overrides, validated up front.

The schema is the DEFAULTS tree below: a key's type is its default's type unless ``TYPES`` says
otherwise. Unknown keys, wrong types and out-of-range values are UserErrors naming the key.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from autoprune import choices
from autoprune.errors import UserError

DEFAULTS: dict[str, Any] = {
    # arch and last_stride null: from model.checkpoint where it shows them, else resnet18 and 1
    "model": {
        "arch": None,
        "last_stride": None,
        "pooling": "avg",
        "weights": "none",
        "checkpoint": None,
        "input_size": [128, 64],
    },
    "data": {
        "source": "synth:A",
        "target": "synth:B",
        "root": "data",
        "batch_size": 32,
        "num_instances": 4,
        "workers": 0,
        "random_erasing": 0.0,
        "check_images": True,
        "val_fraction": 0.2,
        "synth": {
            "num_train_ids": 100,
            "num_test_ids": 100,
            "images_per_id_per_cam": 2,
            "num_distractors": 50,
            "queries_per_id": 1,
            "seed": 0,
            "target_num_train_ids": None,
            "target_num_test_ids": None,
        },
    },
    "train": {
        "epochs": 12,
        "optimizer": "adam",
        "lr": 3.5e-4,
        "weight_decay": 5e-4,
        "momentum": 0.9,
        "warmup_epochs": 1,
        "schedule": "cosine",
        "milestones": [],
        "gamma": 0.1,
        "label_smoothing": 0.1,
        "triplet_weight": 1.0,
        "margin": 0.3,
        "center_weight": 0.0,
        "device": "auto",
        "threads": 0,
        "amp": True,
        "channels_last": True,
        "precision": "auto",
        "max_batches_per_epoch": 0,
    },
    "budget": {
        "macs_ratio": None,
        "gmacs": None,
        "round_to": 8,
        "min_keep": 0.1,
        "max_keep": 1.0,
        "latency_ms": None,
        "latency_batch": 1,
        "latency_table": None,
        "latency_margin": None,  # null: DEFAULT_LATENCY_MARGIN under a latency budget
    },
    "search": {
        "backend": "optuna",
        "sampler": "tpe",
        "n_trials": 20,
        "space": "groupwise",
        "storage": None,
        "study_name": None,
        "objectives": "rank1",
        "pruner": "median",
        "warm_start": [],
        "warm_start_global": False,
        "objective": "rank1",
        "final_epochs": 0,
        "finalists": 2,
        "finalists_se": 0.0,
        "reduction_factor": 2,
        "min_resource": 2,  # the first epoch at which any pruner may stop a trial
        "timeout": None,
        "screening": {"enabled": False, "batches": 8, "keep_fraction": 0.5, "candidates": 4},
        "ray": {"address": None, "cpus_per_trial": 1, "gpus_per_trial": 0.0, "max_concurrent": 2},
    },
    "trial": {
        "scenario": "prune_then_finetune",
        "criterion": "l1",
        "strategy": "one_shot",
        "finetune_epochs": 2,
        "lr": 3.5e-4,
        "criterion_batches": 4,
        "eval_every_epoch": True,
        "adapt_epochs": 0,
        "distill": {"logit": 0.0, "embedding": 0.0, "temperature": 4.0},
    },
    # Per-plugin options, {<registered name>: {<option>: value}}: checked against the plugins' own
    # declarations (the plugin host), not against this tree.
    "plugins": {},
    "seed": 0,
}
# Keys that became plugin options: an old config naming them is told where they went.
MOVED = {"trial.steps": "plugins.iterative.steps", "trial.schedule": "plugins.iterative.schedule"}

# Keys whose default is None (or a list) take these types; a tuple means "any of".
TYPES: dict[str, tuple[type, ...]] = {
    "model.arch": (str, type(None)),
    "model.last_stride": (int, type(None)),
    "model.checkpoint": (str, type(None)),
    "data.source": (str, type(None)),
    "data.target": (str, type(None)),
    "budget.gmacs": (float, type(None)),
    "budget.macs_ratio": (float, type(None)),
    "budget.latency_ms": (float, type(None)),
    "budget.latency_table": (str, type(None)),
    "budget.latency_margin": (float, type(None)),
    "search.storage": (str, type(None)),
    "search.study_name": (str, type(None)),
    "search.timeout": (float, type(None)),
    "search.ray.address": (str, type(None)),
    "data.synth.target_num_train_ids": (int, type(None)),
    "data.synth.target_num_test_ids": (int, type(None)),
}
CHOICES: dict[str, tuple[Any, ...]] = {
    "model.pooling": choices.POOLINGS,
    "model.last_stride": choices.LAST_STRIDES,
    "train.optimizer": choices.OPTIMIZERS,
    "train.schedule": choices.SCHEDULES,
    "train.precision": choices.PRECISIONS,
    "search.backend": choices.BACKENDS,
    "search.sampler": choices.SAMPLERS,
    "search.objectives": choices.OBJECTIVE_SETS,
    "search.pruner": choices.PRUNERS,
    "search.objective": choices.OBJECTIVES,
}
MIN_INPUT_SIDE, MAX_INPUT_SIDE = 16, 2048  # pixels; re-ID crops are a few hundred
MAX_LATENCY_BATCH = 256  # images per forward pass on a deployment device; beyond it a table allocates gigabytes
# The share of budget.latency_ms kept free when it is left null: a model accepted at the limit measured up to 5%
# slower minutes later on a shared 2-core machine (benchmarks/latency_budget.md); set 0 on a quiet, dedicated device.
DEFAULT_LATENCY_MARGIN = 0.05
# key -> (low, high, bounds): "(]" is low < value <= high, "[]" low <= value <= high, "[)" low <= value < high.
RANGES: dict[str, tuple[float, float, str]] = {
    "budget.macs_ratio": (0.0, 1.0, "(]"),
    "budget.min_keep": (0.0, 1.0, "(]"),
    "budget.max_keep": (0.0, 1.0, "(]"),
    "budget.latency_batch": (1, MAX_LATENCY_BATCH, "[]"),
    "budget.latency_margin": (0.0, 0.5, "[)"),  # half the budget kept free is a mistake, not a margin
    "search.screening.keep_fraction": (0.0, 1.0, "(]"),
    "train.momentum": (0.0, 1.0, "[)"),  # 1 never forgets a gradient: the step grows without bound
    "train.label_smoothing": (0.0, 1.0, "[)"),  # 1 is a uniform target: nothing left to learn
    "train.gamma": (0.0, 1.0, "(]"),  # the step schedule's factor: it lowers the learning rate
    "data.random_erasing": (0.0, 1.0, "[]"),  # a probability
}
POSITIVE = (
    "data.synth.target_num_train_ids",
    "data.synth.target_num_test_ids",
    "data.synth.queries_per_id",
    "budget.latency_ms",
    "data.batch_size",
    "data.num_instances",
    "search.n_trials",
    "search.finalists",
    "budget.round_to",
    "train.lr",
    "trial.lr",
    "search.timeout",
    "search.screening.candidates",
    "search.screening.batches",
    "trial.distill.temperature",
    "search.ray.cpus_per_trial",
    "search.ray.max_concurrent",
    "data.synth.num_train_ids",
    "data.synth.num_test_ids",
    "data.synth.images_per_id_per_cam",
)
NON_NEGATIVE = (
    "search.finalists_se",
    "train.epochs",
    "trial.finetune_epochs",
    "train.warmup_epochs",
    "data.workers",
    "trial.criterion_batches",
    "search.final_epochs",
    "train.max_batches_per_epoch",
    "trial.adapt_epochs",
    "trial.distill.logit",
    "trial.distill.embedding",
    "train.weight_decay",
    "train.triplet_weight",
    "train.margin",
    "train.center_weight",
    "train.threads",
    "search.ray.gpus_per_trial",
    "data.synth.num_distractors",
)
MAX_SEED = 2**32 - 1  # seeds NumPy (and so Optuna's samplers) accept


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in ("search.space_options",):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


_LEAVES = _flatten(DEFAULTS)
MAX_YAML_NODES = 100_000  # a config or search space expands to a few hundred; YAML aliases can make billions


def _type_name(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _check_value(key: str, value: Any) -> Any:
    default = _LEAVES[key]
    types = TYPES.get(key) or ((float, int) if isinstance(default, float) else (type(default),))
    if isinstance(value, bool) and bool not in types:
        # YAML 1.1 reads yes/no/on/off/true/false as booleans: a name such as "off" must be quoted
        quote = (
            f"; YAML read the value as a boolean (unquoted yes/no/on/off/true/false are), quote it: "
            f'--set \'{key}="off"\', or {key.rpartition(".")[2]}: "off" in a file'
            if str in types
            else ""
        )
        raise UserError(f"config key {key!r} must be {_type_name(types)}, got {value!r}{quote}")
    if isinstance(default, list):
        if not isinstance(value, list):
            raise UserError(f"config key {key!r} must be a list, got {value!r}")
        if key == "model.input_size" and (
            len(value) != 2
            or not all(
                isinstance(v, int) and not isinstance(v, bool) and MIN_INPUT_SIDE <= v <= MAX_INPUT_SIDE for v in value
            )
        ):
            raise UserError(
                f"model.input_size must be [height, width] with integers in "
                f"[{MIN_INPUT_SIDE}, {MAX_INPUT_SIDE}], got {value!r}"
            )
        if key == "train.milestones" and not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value
        ):
            raise UserError(
                f"train.milestones must be a list of epochs (integers >= 1) where the step schedule "
                f"lowers the learning rate, e.g. [40, 70]; got {value!r}"
            )
        return value
    if float in types and isinstance(value, str) and _EXPONENT.match(value):
        value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; the user meant a number
    accepted = types + (int,) if float in types else types  # an int is a fine float: gmacs: 2, timeout: 3600
    if not isinstance(value, accepted):
        raise UserError(f"config key {key!r} must be {_type_name(types)}, got {type(value).__name__} {value!r}")
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"config key {key!r} must be a finite number, got {value}")
    if key in CHOICES and value is not None and value not in CHOICES[key]:
        close = difflib.get_close_matches(str(value), [str(c) for c in CHOICES[key]], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"config key {key!r} is {value!r}{hint}; choose one of: {', '.join(map(str, CHOICES[key]))}")
    if key in RANGES and value is not None:
        check_range(f"config key {key!r}", value, *RANGES[key])
    if key in POSITIVE and value is not None and value <= 0:
        raise UserError(f"config key {key!r} must be > 0, got {value}")
    if key in NON_NEGATIVE and value < 0:
        raise UserError(f"config key {key!r} must be >= 0, got {value}")
    if key == "seed" and not 0 <= value <= MAX_SEED:
        raise UserError(f"config key 'seed' must be an integer in [0, {MAX_SEED}] (2**32 - 1), got {value}")
    return value


def check_range(what: str, value: float, lo: float, hi: float, bounds: str = "(]") -> None:
    """``value`` inside the interval ``bounds`` of ``lo`` and ``hi`` (see RANGES), else a UserError naming ``what``;
    the one range check of config keys and of command-line numbers that mirror them."""
    above = lo < value if bounds[0] == "(" else lo <= value
    below = value <= hi if bounds[1] == "]" else value < hi
    if not (above and below):
        raise UserError(f"{what} must be in {bounds[0]}{lo}, {hi}{bounds[1]}, got {value}")


def _unknown(key: str) -> UserError:
    if key in MOVED:
        return UserError(
            f"config key {key!r} is now {MOVED[key]!r}; write --set {MOVED[key]}=... "
            f"(or a plugins: section in the YAML file)"
        )
    close = difflib.get_close_matches(key, list(_LEAVES), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UserError(f"unknown config key {key!r}{hint}; `autoprune config` prints every key with its value")


def _merge(base: dict[str, Any], override: dict[str, Any], prefix: str = "") -> None:
    for key, value in override.items():
        path = f"{prefix}{key}"
        if key not in base:
            raise _unknown(path)
        if path == "plugins":
            _merge_plugins(base[key], value)
        elif isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"config key {path!r} is a section; write it as a mapping of keys, not {value!r}")
            _merge(base[key], value, path + ".")
        else:
            base[key] = _check_value(path, value)


def _merge_plugins(base: dict[str, Any], override: Any) -> None:
    """The ``plugins:`` section's shape; its names, options and types are checked in :func:`validate`."""
    if not isinstance(override, dict):
        raise UserError(f"config key 'plugins' is a section of {{plugin name: {{option: value}}}}, not {override!r}")
    for name, options in override.items():
        if not isinstance(options, dict):
            raise UserError(
                f"config key 'plugins.{name}' must be a mapping of option names to values, "
                f"e.g. plugins: {{{name}: {{option: value}}}}; got {options!r}"
            )
        base.setdefault(str(name), {}).update({str(k): v for k, v in options.items()})


def _expanded_size(data: Any, limit: int) -> int:
    """Nodes of ``data`` with every alias expanded, counted up to just over ``limit`` (stops early)."""
    count, stack = 0, [data]
    while stack and count <= limit:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return count


def parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` of user text: malformed, too deep or alias-bomb YAML is a UserError naming ``where``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{where} is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise UserError(f"{where} nests too deeply to be a config; write it flat") from None
    check_expansion(data, where)
    return data


def check_expansion(data: Any, where: str) -> None:
    """Refuse YAML whose aliases expand it beyond any real config (hashing or merging it would never end)."""
    if _expanded_size(data, MAX_YAML_NODES) > MAX_YAML_NODES:
        raise UserError(
            f"{where} expands to more than {MAX_YAML_NODES} values (YAML aliases '*' repeat "
            f"whole blocks); write it without nested aliases"
        )


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from disk; malformed YAML is a UserError with the line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} does not exist; give --config an existing YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {p} is not UTF-8 text (byte {exc.start}); give --config a YAML file") from None
    except OSError as exc:
        raise UserError(f"config file {p} cannot be read ({exc.strerror}); check its permissions") from None
    data = parse_yaml(text, f"config file {p}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"config file {p} must hold a mapping of sections (model:, data:, ...), not {type(data).__name__}"
        )
    return data


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("autoprune.presets").iterdir() if p.name.endswith(".yaml"))


def read_preset(name: str) -> dict[str, Any]:
    if name not in preset_names():
        close = difflib.get_close_matches(name, preset_names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown preset {name!r}{hint}; presets: {', '.join(preset_names())}")
    text = resources.files("autoprune.presets").joinpath(f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=value`` with the value parsed as YAML (so numbers, lists and null work)."""
    if "=" not in item:
        raise UserError(f"--set {item!r} must look like dotted.key=value, e.g. --set search.n_trials=5")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: the text itself (a path, a name)
    except RecursionError:
        raise UserError(f"--set {key}: the value nests too deeply; write it flat") from None
    check_expansion(value, f"--set {key}")
    if key == "plugins" or key.startswith("plugins."):
        if len(key.split(".")) != 3 or not all(key.split(".")):
            raise UserError(f"--set {key}: plugin options are set one at a time, as --set plugins.NAME.OPTION=value")
        return key, value
    if key not in _LEAVES:
        if any(leaf.startswith(key + ".") for leaf in _LEAVES):
            raise UserError(
                f"--set {key}: {key!r} is a section; set one of its keys, e.g. {next(leaf for leaf in _LEAVES if leaf.startswith(key + '.'))}"
            )
        raise _unknown(key)
    return key, value


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(
    config: str | Path | None = None, preset: str | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """Defaults <- preset (``demo``, or ``checkpoint`` with model.checkpoint, when neither a file nor a preset
    is given) <- file <- ``--set``."""
    cfg = copy.deepcopy(DEFAULTS)
    if preset is None and config is None:
        # a trained model to prune (--checkpoint) starts from the real-data preset, anything else from the demo
        given = dict(parse_override(item) for item in overrides)
        preset = "checkpoint" if given.get("model.checkpoint") is not None else "demo"
    if preset is not None:
        _merge(cfg, read_preset(preset))
    stated: set[str] = set()  # model keys set by the user (file, --set): a preset's are its own recipe's
    if config is not None:
        data = read_yaml(config)
        _merge(cfg, data)
        stated.update(f"model.{k}" for k in data.get("model") or {})
    for item in overrides:
        key, value = parse_override(item)
        _merge(cfg, _nest(key, value))
        stated.add(key)
    if cfg["model"]["checkpoint"] is not None:
        # A preset's architecture is what it would train; a checkpoint's is read from the file.
        for key in ("arch", "last_stride"):
            if f"model.{key}" not in stated:
                cfg["model"][key] = None
    validate(cfg)
    return cfg


def validate(cfg: dict[str, Any]) -> None:
    """Checks across keys, after every layer is merged."""
    _check_budget(cfg["budget"])
    if cfg["search"]["reduction_factor"] < 2:
        raise UserError(
            f"search.reduction_factor must be an integer >= 2 (each rung keeps 1 in that many trials), "
            f"got {cfg['search']['reduction_factor']}"
        )
    if cfg["search"]["min_resource"] < 1:
        raise UserError(
            f"search.min_resource must be an integer >= 1 (the first epoch at which a trial may be stopped "
            f"early), got {cfg['search']['min_resource']}"
        )
    m = cfg["model"]
    if m["checkpoint"] is not None and not m["checkpoint"].strip():
        raise UserError("model.checkpoint is empty; give the path of a trained model file, or null")
    d = cfg["trial"]["distill"]
    if (d["logit"] > 0 or d["embedding"] > 0) and cfg["trial"]["adapt_epochs"] == 0:
        raise UserError(
            "trial.distill needs a teacher, the target-adapted unpruned model: set trial.adapt_epochs "
            "> 0 (e.g. 4), or set trial.distill.logit and trial.distill.embedding to 0"
        )
    _check_data(cfg["data"], has_checkpoint=m["checkpoint"] is not None)
    if cfg["plugins"]:
        from autoprune.host import get_host  # loads the plugins: only they know their options

        cfg["plugins"] = get_host().check_plugins_section(cfg["plugins"])
    if m["checkpoint"] is None:
        m["arch"] = "resnet18" if m["arch"] is None else m["arch"]
        m["last_stride"] = 1 if m["last_stride"] is None else m["last_stride"]
    else:  # last: the checkpoint file is read only once the rest is known to be valid
        from autoprune.models.checkpoint import resolve_model_config

        resolve_model_config(m)


def _check_budget(b: dict[str, Any]) -> None:
    """The budget section's cross-key checks; no budget at all means half the MACs."""
    if b["macs_ratio"] is None and b["gmacs"] is None and b["latency_ms"] is None:
        b["macs_ratio"] = 0.5  # the default budget: half the MACs
    if b["latency_table"] is not None and b["latency_ms"] is None:
        raise UserError(
            "budget.latency_table is set but budget.latency_ms is not; give the latency budget "
            "(milliseconds per image), e.g. --set budget.latency_ms=12"
        )
    if b["min_keep"] > b["max_keep"]:
        raise UserError(f"budget.min_keep ({b['min_keep']}) is above budget.max_keep ({b['max_keep']}); lower min_keep")
    if b["gmacs"] is not None and b["gmacs"] <= 0:
        raise UserError(f"budget.gmacs must be > 0 GMACs, got {b['gmacs']}")


_DATA_HINTS = {
    "source": " (data.source: null needs model.checkpoint, a trained model)",
    "target": " (autoprune search --target KIND:ROOT sets it)",
}


def _check_data(data: dict[str, Any], *, has_checkpoint: bool) -> None:
    """The data section's cross-key checks: the split, identity batches, and the two datasets' specs."""
    if not 0 <= data["val_fraction"] < 0.9:
        raise UserError(
            f"data.val_fraction must be in [0, 0.9), got {data['val_fraction']}; 0 searches on the test split itself"
        )
    if data["batch_size"] % data["num_instances"]:
        raise UserError(
            f"data.batch_size ({data['batch_size']}) must be a multiple of data.num_instances "
            f"({data['num_instances']}) for P x K identity batches"
        )
    for key in ("source", "target"):
        spec = data[key]
        if spec is None and key == "source" and has_checkpoint:
            continue  # a trained model needs no source: nothing is trained there
        if not isinstance(spec, str) or ":" not in spec:
            hint = _DATA_HINTS[key] if spec is None else ""
            raise UserError(
                f"data.{key} must look like KIND:ROOT (e.g. market1501:/data/market or synth:B), got {spec!r}{hint}"
            )


@dataclass(frozen=True)
class ScreeningSettings:
    """``search.screening``: adaptive-BN screening of candidates before they are fine-tuned."""

    enabled: bool
    batches: int
    keep_fraction: float
    candidates: int


@dataclass(frozen=True)
class RaySettings:
    """``search.ray``: where the Ray backend runs and how many trials at a time."""

    address: str | None
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int


@dataclass(frozen=True)
class SearchSettings:
    """The ``search`` section of a validated config, typed and frozen; the search reads its attributes.

    Built with :meth:`from_config` (as ``TrainSettings.from_config`` builds the training recipe); the config
    itself stays the plain mapping the YAML files, ``--set`` and a run's ``config.yaml`` hold."""

    backend: str
    sampler: str
    n_trials: int
    space: str
    storage: str | None
    study_name: str | None
    objectives: str
    pruner: str
    warm_start: tuple[dict[str, Any], ...]
    warm_start_global: bool
    objective: str
    final_epochs: int
    finalists: int
    finalists_se: float
    reduction_factor: int
    min_resource: int
    timeout: float | None
    screening: ScreeningSettings
    ray: RaySettings

    @property
    def multi_objective(self) -> bool:
        """Pareto mode (``search.objectives: rank1+macs``): rank-1 up and MACs down, both searched."""
        return self.objectives == choices.MULTI_OBJECTIVE

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> SearchSettings:
        s = cfg["search"]
        return cls(
            **{
                **s,
                "warm_start": tuple(s["warm_start"]),
                "screening": ScreeningSettings(**s["screening"]),
                "ray": RaySettings(**s["ray"]),
            }
        )


@dataclass(frozen=True)
class TrialSettings:
    """The ``trial`` section of a validated config, typed and frozen: the recipe every trial runs. Its
    ``distill`` weights are read as ``autoprune.distill.DistillSettings``."""

    scenario: str
    criterion: str
    strategy: str
    finetune_epochs: int
    lr: float
    criterion_batches: int
    eval_every_epoch: bool
    adapt_epochs: int
    distill: Mapping[str, float]

    def plugin(self, kind: str) -> str:
        """The configured plugin name of ``kind`` (criterion, strategy or scenario)."""
        return {"criterion": self.criterion, "strategy": self.strategy, "scenario": self.scenario}[kind]

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> TrialSettings:
        t = cfg["trial"]
        return cls(**{**t, "distill": MappingProxyType(dict(t["distill"]))})


@dataclass(frozen=True)
class ModelSettings:
    """``model``: the architecture (resolved from ``model.checkpoint`` by validation when it is given)."""

    arch: str
    last_stride: int
    pooling: str
    weights: str
    checkpoint: str | None
    input_size: tuple[int, int]


@dataclass(frozen=True)
class DataSettings:
    """``data``: the source and target specs (``KIND:ROOT``), where data lives, and the identity batches."""

    source: str | None
    target: str
    root: str
    batch_size: int
    num_instances: int
    workers: int
    random_erasing: float
    check_images: bool
    val_fraction: float
    synth: Mapping[str, Any]

    def specs(self) -> list[str]:
        """The dataset specs this run reads: the source (when there is one), then the target."""
        return [spec for spec in (self.source, self.target) if spec is not None]


@dataclass(frozen=True)
class BudgetSettings:
    """``budget``: MACs (a ratio or GMACs) and/or measured latency, and the keep-ratio range per group."""

    macs_ratio: float | None
    gmacs: float | None
    round_to: int
    min_keep: float
    max_keep: float
    latency_ms: float | None
    latency_batch: int
    latency_table: str | None
    latency_margin: float | None


@dataclass(frozen=True)
class RunSettings:
    """A validated config's sections, typed and frozen: what the search, its trials and backends read.

    The training recipe is ``autoprune.engine.train.TrainSettings`` (it joins keys of ``train`` and ``data``);
    of ``train`` the run itself reads only where and how it computes (``device``, ``threads``, ``precision``).
    """

    seed: int
    model: ModelSettings
    data: DataSettings
    budget: BudgetSettings
    search: SearchSettings
    trial: TrialSettings
    plugins: Mapping[str, Mapping[str, Any]]
    device: str
    threads: int
    precision: str

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> RunSettings:
        m, d, t = cfg["model"], cfg["data"], cfg["train"]
        model = {f: m[f] for f in ModelSettings.__dataclass_fields__}  # a run adds checkpoint_sha256 to its copy
        return cls(
            seed=cfg["seed"],
            model=ModelSettings(**{**model, "input_size": tuple(m["input_size"])}),
            data=DataSettings(**{**d, "synth": MappingProxyType(dict(d["synth"]))}),
            budget=BudgetSettings(**cfg["budget"]),
            search=SearchSettings.from_config(cfg),
            trial=TrialSettings.from_config(cfg),
            plugins=MappingProxyType({k: MappingProxyType(dict(v)) for k, v in (cfg.get("plugins") or {}).items()}),
            device=t["device"],
            threads=t["threads"],
            precision=t["precision"],
        )


# Keys added after runs and baselines were cached: left out of identities while unset, so those keep theirs.
LATE_KEYS = ("model.checkpoint", "budget.latency_margin")


def without_unset_late_keys(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` without the LATE_KEYS that are null, for run-directory and baseline identities."""
    out = copy.deepcopy(cfg)
    for key in LATE_KEYS:
        section, leaf = key.split(".")
        if out.get(section, {}).get(leaf, "set") is None:
            del out[section][leaf]
    return out


def config_hash(cfg: dict[str, Any], keys: tuple[str, ...]) -> str:
    """A short stable hash of the named sections, for caches (baselines) and run-directory identity."""
    part = {k: cfg[k] for k in keys}
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:12]


# scheme://user:PASSWORD@host...; the password runs to the last "@" before whitespace.
_URL_PASSWORD = re.compile(r"([A-Za-z][\w+.-]*://[^:/@\s]*):(\S*)@")


def redact(text: str, url: str | None = None) -> str:
    """``text`` with URL passwords replaced by ``***``; ``url``'s password is hidden wherever it appears."""
    secrets = [m.group(2) for m in _URL_PASSWORD.finditer(url or "") if m.group(2)]
    text = _URL_PASSWORD.sub(r"\1:***@", text)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def dump(cfg: dict[str, Any]) -> str:
    """The config as YAML, with the storage password hidden (it is printed and kept in run directories)."""
    storage = cfg.get("search", {}).get("storage")
    if isinstance(storage, str):
        cfg = {**cfg, "search": {**cfg["search"], "storage": redact(storage)}}
    return yaml.safe_dump(cfg, sort_keys=False)
