"""First-party strategies: how to reach the target widths."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from autoprune import hookimpl
from autoprune.errors import UserError
from autoprune.pruning.budget import global_widths
from autoprune.pruning.groups import PruningGraph
from autoprune.pruning.surgery import lowest, prune_to_counts, score_groups
from autoprune.strategies import BaseStrategy, StrategyContext

SCHEDULES = ("linear", "exponential")


def step_widths(
    start: dict[str, int],
    target: dict[str, int],
    steps: int,
    schedule: str = "linear",
    channel_groups: dict[str, int] | None = None,
) -> list[dict[str, int]]:
    """Widths after each of ``steps`` steps from ``start`` to ``target``; the last one is ``target``.

    ``linear``: each step removes an equal part of the channels to remove. ``exponential``: the kept
    fraction falls geometrically (every step removes the same share of what is left), so the removed
    fraction rises fast and then levels off, the ``a * exp(-k t) + b`` shape of PSFP. A group with
    ``channel_groups`` blocks (it feeds a grouped conv) gets multiples of them at every step.
    """
    if schedule not in SCHEDULES:
        raise UserError(f"unknown pruning schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    steps = max(1, int(steps))
    out = []
    for k in range(1, steps + 1):
        t = k / steps
        widths = {}
        for name, s in start.items():
            e = target.get(name, s)
            v = s - (s - e) * t if schedule == "linear" else s * (e / s) ** t
            unit = (channel_groups or {}).get(name, 1)
            widths[name] = min(s, max(e, int(round(v / unit)) * unit))
        out.append(widths)
    out[-1] = {name: target.get(name, s) for name, s in start.items()}
    return out


def zero_channels(graph: PruningGraph, group: str, indices: Sequence[int]) -> None:
    """Soft-prune: zero channels ``indices`` of ``group`` in every out-module (conv filters, BN gamma and beta)."""
    if len(indices) == 0:
        return
    with torch.no_grad():
        for name in graph.groups[group].out_modules:
            module = graph.modules[name]
            for pname in ("weight", "bias"):
                p = getattr(module, pname, None)
                if isinstance(p, torch.Tensor):
                    p[torch.as_tensor(list(indices), dtype=torch.long, device=p.device)] = 0


def _score_and_zero(model: nn.Module, ctx: StrategyContext, widths: dict[str, int]) -> dict[str, torch.Tensor]:
    """Score every group and zero its lowest channels down to ``widths``; returns the scores."""
    scores = score_groups(model, ctx.criterion, ctx.criterion_context())
    for name, keep in widths.items():
        group = ctx.graph.groups[name]
        zero_channels(ctx.graph, name, lowest(scores[name], group.channels - keep, group.channel_groups))
    return scores


class OneShotStrategy(BaseStrategy):
    """Score once, remove every pruned channel at once, then fine-tune for all the epochs."""

    name = "one_shot"

    def run(self, model: nn.Module, ctx: StrategyContext) -> nn.Module:
        scores = score_groups(model, ctx.criterion, ctx.criterion_context())
        prune_to_counts(ctx.graph, ctx.counts, scores)
        if ctx.epochs:
            ctx.finetune(model, ctx.epochs)
        return model


class IterativeStrategy(BaseStrategy):
    """Prune in ``steps`` steps on a linear or exponential schedule, re-scoring and fine-tuning after each.

    Each step fine-tunes ``ctx.epochs // steps`` epochs, the last step also the remainder
    (iterative pruning, Han et al. 2015; Molchanov et al. 2017). Options: ``steps`` and ``schedule``.
    """

    name = "iterative"
    options = {"steps": 3, "schedule": "linear"}

    @staticmethod
    def validate_options(options: Mapping[str, Any]) -> None:
        if options["steps"] < 1:
            raise ValueError(f"steps must be >= 1, got {options['steps']}")
        if options["schedule"] not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {options['schedule']!r}")

    def run(self, model: nn.Module, ctx: StrategyContext) -> nn.Module:
        stages = step_widths(
            ctx.graph.widths(), ctx.counts, self.options["steps"], self.options["schedule"], ctx.graph.channel_groups()
        )
        per_step, remainder = divmod(ctx.epochs, len(stages))
        for k, widths in enumerate(stages):
            scores = score_groups(model, ctx.criterion, ctx.criterion_context())
            prune_to_counts(ctx.graph, widths, scores)
            epochs = per_step + (remainder if k == len(stages) - 1 else 0)
            if epochs:
                ctx.finetune(model, epochs)
        return model


class SoftStrategy(BaseStrategy):
    """Soft filter pruning (SFP; He et al., IJCAI 2018): zero the lowest channels, let them regrow, repeat.

    Before the first epoch and after each one the channels are re-scored and the lowest of each group
    zeroed down to ``ctx.counts``; at the end exactly the channels zeroed last are removed. With no
    epochs this is one-shot pruning.
    """

    name = "soft"

    def stages(self, start: dict[str, int], ctx: StrategyContext) -> list[dict[str, int]]:
        """The widths to zero down to before each epoch (one entry per epoch, at least one)."""
        return [dict(ctx.counts)] * max(1, ctx.epochs)

    def run(self, model: nn.Module, ctx: StrategyContext) -> nn.Module:
        stages = self.stages(ctx.graph.widths(), ctx)
        scores = _score_and_zero(model, ctx, stages[0])

        def rezero(epoch: int, m: nn.Module) -> None:
            nonlocal scores
            scores = _score_and_zero(m, ctx, stages[min(epoch + 1, len(stages) - 1)])

        if ctx.epochs:
            ctx.finetune(model, ctx.epochs, on_epoch_end=rezero)
        # The last zeroing used these scores, so the lowest by them are exactly the zeroed channels.
        prune_to_counts(ctx.graph, ctx.counts, scores)
        return model


class ProgressiveSoftStrategy(SoftStrategy):
    """Progressive soft filter pruning (PSFP; He et al., IEEE TCYB 2019): SFP with a growing zeroed fraction.

    The zeroed fraction rises on the exponential schedule of :func:`step_widths`, one step per epoch,
    and reaches ``ctx.counts`` for the last epoch.
    """

    name = "progressive_soft"

    def stages(self, start: dict[str, int], ctx: StrategyContext) -> list[dict[str, int]]:
        return step_widths(start, ctx.counts, max(1, ctx.epochs), "exponential", ctx.graph.channel_groups())


class GlobalStrategy(BaseStrategy):
    """Rank channels across all groups with one threshold, down to the MACs budget; ignores ``ctx.counts``.

    Per-group widths come out of the ranking (as in global magnitude pruning, e.g. network slimming),
    then the model is pruned and fine-tuned for ``ctx.epochs``.
    """

    name = "global"
    follows_policy = False

    def run(self, model: nn.Module, ctx: StrategyContext) -> nn.Module:
        if ctx.cost is None or ctx.budget is None:
            raise ValueError("strategy 'global' needs ctx.cost and ctx.budget (the host sets both)")
        scores = score_groups(model, ctx.criterion, ctx.criterion_context())
        widths = global_widths(scores, ctx.graph.widths(), ctx.cost, ctx.budget)
        prune_to_counts(ctx.graph, widths, scores)
        if ctx.epochs:
            ctx.finetune(model, ctx.epochs)
        return model


@hookimpl
def autoprune_register_strategies(register: Callable[..., None]) -> None:
    for cls in (OneShotStrategy, IterativeStrategy, SoftStrategy, ProgressiveSoftStrategy, GlobalStrategy):
        register(cls)
