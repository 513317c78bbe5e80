"""Every autoprune extension point, in one place.

Discovery hooks receive a ``register`` callback so the host owns names, the registry and the error
for a duplicate name. Implementations may accept fewer arguments than a spec (pluggy allows it).
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("autoprune")
hookimpl = pluggy.HookimplMarker("autoprune")

Register = Callable[..., None]


@hookspec
def autoprune_register_criteria(register: Register) -> None:
    """Called once at start-up; call ``register(CriterionClass)`` for each channel-scoring criterion."""


@hookspec
def autoprune_register_strategies(register: Register) -> None:
    """Called once at start-up; call ``register(StrategyClass)`` for each way of reaching target widths."""


@hookspec
def autoprune_register_scenarios(register: Register) -> None:
    """Called once at start-up; call ``register(ScenarioClass)`` for each ordering of training and pruning."""


@hookspec
def autoprune_register_datasets(register: Register) -> None:
    """Called once at start-up; call ``register(name, reader)`` where ``reader(root) -> ReIDDataset``."""


@hookspec
def autoprune_register_backbones(register: Register) -> None:
    """Called once at start-up; call ``register(name, factory)`` where ``factory(last_stride) -> nn.Module``.

    The factory returns a torchvision-style ResNet-like module (``conv1 .. layer4``) or any CNN with a
    ``forward_features(x) -> [N, C, H, W]`` method and an ``out_channels`` attribute.
    """
