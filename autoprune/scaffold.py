"""``autoprune plugin new KIND NAME --out DIR``: the skeleton of a plugin package whose tests pass as written."""

from __future__ import annotations

import re
from pathlib import Path

from autoprune.errors import UserError, writable_folder

KINDS = ("criterion", "strategy", "scenario")
_HOOK = {
    "criterion": "autoprune_register_criteria",
    "strategy": "autoprune_register_strategies",
    "scenario": "autoprune_register_scenarios",
}

_CODE = {
    "criterion": '''
from autoprune.criteria import BaseCriterion, CriterionContext


class {cls}(BaseCriterion):
    """Mean of |w| ** power over each filter of the convs producing a channel (replace with your own)."""

    name = "{name}"
    options = {{"power": 1.0}}  # set with --set plugins.{name}.power=2

    def score(self, model: nn.Module, group: str, ctx: CriterionContext) -> torch.Tensor:
        modules = ctx.graph.modules
        convs = [modules[n] for n in ctx.graph.groups[group].out_modules if isinstance(modules[n], nn.Conv2d)]
        # one score per channel, a 1-D tensor; higher is kept
        return sum(c.weight.detach().flatten(1).abs().pow(self.options["power"]).mean(dim=1).cpu() for c in convs)
''',
    "strategy": '''
from autoprune.pruning.surgery import prune_to_counts, score_groups
from autoprune.strategies import BaseStrategy, StrategyContext


class {cls}(BaseStrategy):
    """Score once, prune to the policy's widths, fine-tune a share of the epochs (replace with your own)."""

    name = "{name}"
    options = {{"finetune_share": 1.0}}  # set with --set plugins.{name}.finetune_share=0.5

    @staticmethod
    def validate_options(options: Any) -> None:
        if not 0.0 <= options["finetune_share"] <= 1.0:
            raise ValueError(f"finetune_share must be in [0, 1], got {{options['finetune_share']}}")

    def run(self, model: nn.Module, ctx: StrategyContext) -> nn.Module:
        scores = score_groups(model, ctx.criterion, ctx.criterion_context())
        prune_to_counts(ctx.graph, ctx.counts, scores)  # in place: ctx.graph.widths() == ctx.counts now
        epochs = round(ctx.epochs * self.options["finetune_share"])
        if epochs:
            ctx.finetune(model, epochs)
        return model
''',
    "scenario": '''
from autoprune.scenarios import BaseScenario, ScenarioContext


class {cls}(BaseScenario):
    """Prune on the target with a share of the epochs, then fine-tune there with the rest (replace with your own)."""

    name = "{name}"
    options = {{"prune_share": 0.5}}  # set with --set plugins.{name}.prune_share=1.0

    @staticmethod
    def validate_options(options: Any) -> None:
        if not 0.0 <= options["prune_share"] <= 1.0:
            raise ValueError(f"prune_share must be in [0, 1], got {{options['prune_share']}}")

    def run(self, ctx: ScenarioContext) -> tuple[nn.Module, dict[str, Any]]:
        prune_epochs = round(ctx.epochs * self.options["prune_share"])
        model = ctx.prune(ctx.model, ctx.target, prune_epochs)  # returns the pruned model
        if ctx.epochs - prune_epochs:
            ctx.finetune(model, ctx.target, ctx.epochs - prune_epochs)
        has_source = ctx.source is not None and len(ctx.source.query) > 0
        source = ctx.evaluate(model, ctx.source) if has_source else None
        return model, {{"target": ctx.evaluate(model, ctx.target), "source": source}}
''',
}

_MODULE = '''"""autoprune {kind} plugin ``{name}``."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from autoprune import hookimpl
{code}

@hookimpl
def {hook}(register: Callable[..., None]) -> None:
    register({cls})
'''

_TEST = '''"""``{name}`` against autoprune's {kind} contract suite."""

from __future__ import annotations

from autoprune.testing import {contract}
from {package} import {cls}


class Test{cls}({contract}):
    {kind}_class = {cls}
'''

_PYPROJECT = """[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "autoprune {kind} plugin {name}"
requires-python = ">=3.10"
dependencies = ["autoprune"]

[project.optional-dependencies]
test = ["pytest>=8"]

# autoprune finds the plugin through this entry point.
[project.entry-points.autoprune]
{name} = "{package}"

[tool.setuptools]
packages = ["{package}"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

_README = """# {dist}

An autoprune {kind} plugin.

```
pip install -e .
python -m pytest                      # the {kind} contract tests
autoprune plugins                     # lists {name}, from {dist}
autoprune search --set trial.{kind}={name}
```
"""


def new_plugin(kind: str, name: str, out: str | Path) -> list[Path]:
    """Write the skeleton of a ``kind`` plugin called ``name`` into the new (or empty) folder ``out``."""
    if kind not in KINDS:
        raise UserError(f"autoprune plugin new: KIND must be one of {', '.join(KINDS)}, got {kind!r}")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise UserError(
            f"autoprune plugin new: NAME {name!r} must be lower-case letters, digits and _, "
            f"starting with a letter (it is the config value, e.g. trial.{kind}={name})"
        )
    _check_name_is_free(kind, name)
    root = Path(out)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UserError(f"{root} exists and is not an empty folder; give --out a new folder")
    writable_folder(root, "--out", "give --out a new folder where you may write")
    package = f"autoprune_{name}"
    cls = "".join(part.capitalize() for part in name.split("_")) + kind.capitalize()
    fields = {
        "kind": kind,
        "name": name,
        "cls": cls,
        "package": package,
        "hook": _HOOK[kind],
        "dist": f"autoprune-{name.replace('_', '-')}",
        "contract": f"{kind.capitalize()}Contract",
    }
    files = {
        root / "pyproject.toml": _PYPROJECT.format(**fields),
        root / "README.md": _README.format(**fields),
        root / package / "__init__.py": _MODULE.format(code=_CODE[kind].format(**fields), **fields),
        root / "tests" / f"test_{name}.py": _TEST.format(**fields),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(files)


def _check_name_is_free(kind: str, name: str) -> None:
    """A name already registered (a built-in such as ``l1``, or an installed plugin's) would make the new plugin
    fail to load once installed (a duplicate name): refused before any file is written."""
    from autoprune.host import get_host

    host = get_host()
    if name in host.names(kind):
        owner = host.registry[kind][name].distribution
        raise UserError(
            f"autoprune plugin new: {kind} {name!r} already exists (registered by {owner}); a second {kind} of "
            f"that name clashes with it, choose another NAME"
        )
