"""Budget projection: any sampled per-group keep ratios -> channel counts whose MACs meet the budget.

With a latency budget (``Budget.latency``, a table bound to the model: see ``pruning/latency.py``) the
same projection keeps the predicted milliseconds per image under ``latency_ms`` as well; both must hold.

Every trial's policy meets the budget by construction, so no trial is wasted on an infeasible policy.
The sampled ratios are read as relative preferences: they are scaled by one common factor (binary
search) until the rounded widths fit, then single rounding steps are added back greedily, most
under-served group first, while they still fit. The result is at most the budget and, unless the
min/max ratios prevent it, within 1% below it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from autoprune.errors import UserError
from autoprune.pruning.flops import CostModel

if TYPE_CHECKING:
    from autoprune.config import BudgetSettings


@dataclass
class Budget:
    """The MACs limit (and optional latency limit) and the per-group constraints of a search."""

    macs: int
    min_keep: float = 0.1
    max_keep: float = 1.0
    round_to: int = 8
    latency_ms: float | None = None  # per image, what policies must meet (the user's budget less the margin)
    latency_margin: float = 0.0  # the share of the user's budget kept free for timing drift
    latency: Any = None  # a LatencyModel: ``predict_ms(widths)``

    @classmethod
    def from_config(cls, budget: BudgetSettings, base_macs: int) -> Budget:
        """The MACs side of ``budget``; a latency-only budget (no macs_ratio, no gmacs) caps MACs at the model's."""
        if budget.gmacs is not None:
            macs = int(budget.gmacs * 1e9)
            if macs > base_macs:
                raise UserError(
                    f"budget.gmacs {budget.gmacs} is above the unpruned model's "
                    f"{base_macs / 1e9:.3f} GMACs; give a smaller budget"
                )
        elif budget.macs_ratio is not None:
            macs = int(budget.macs_ratio * base_macs)
        else:
            macs = base_macs
        return cls(macs, budget.min_keep, budget.max_keep, budget.round_to)

    @property
    def user_latency_ms(self) -> float | None:
        """``budget.latency_ms`` as given: the limit before the margin is taken off."""
        return None if self.latency_ms is None else round(self.latency_ms / (1 - self.latency_margin), 6)

    def fits(self, cost: CostModel, counts: dict[str, int]) -> bool:
        """Whether ``counts`` meets every limit of this budget."""
        if cost.macs(counts) > self.macs:
            return False
        return self.latency is None or self.latency_ms is None or self.latency.predict_ms(counts) <= self.latency_ms


def width_step(channels: int, round_to: int, channel_groups: int = 1) -> int:
    """The granularity of a group's width: ``round_to`` (1 for groups of at most that many channels).

    A group feeding a grouped conv keeps a multiple of its ``channel_groups`` blocks, rounded to
    ``round_to`` too where the full width allows it.
    """
    step = 1 if channels <= round_to or round_to <= 1 else round_to
    if channel_groups > 1:
        both = math.lcm(step, channel_groups)
        step = both if channels % both == 0 else channel_groups
    return step


def round_channels(channels: int, ratio: float, round_to: int, channel_groups: int = 1) -> int:
    """Kept channels for ``ratio`` of ``channels``, a multiple of the group's :func:`width_step`."""
    if ratio >= 1.0:
        return channels
    step = width_step(channels, round_to, channel_groups)
    if step == 1:
        return max(1, min(channels, int(round(ratio * channels))))
    kept = int(round(ratio * channels / step)) * step
    return max(step, min(channels, kept))


def group_step(cost: CostModel, name: str, b: Budget) -> int:
    """:func:`width_step` of group ``name`` of ``cost``'s model under ``b``."""
    return width_step(cost.base_widths[name], b.round_to, cost.channel_groups.get(name, 1))


def _counts(cost: CostModel, ratios: dict[str, float], scale: float, b: Budget) -> dict[str, int]:
    out = {}
    for name, base in cost.base_widths.items():
        r = min(b.max_keep, max(b.min_keep, scale * ratios.get(name, 1.0)))
        out[name] = round_channels(base, r, b.round_to, cost.channel_groups.get(name, 1))
    return out


def _ceil_min(base: int, b: Budget, channel_groups: int = 1) -> int:
    """The smallest width allowed by min_keep after rounding up to the group's step."""
    step = width_step(base, b.round_to, channel_groups)
    if step == 1:
        return max(1, -(-int(b.min_keep * base * 1000) // 1000))
    return min(base, max(step, -(-int(b.min_keep * base) // step) * step))


def min_widths(cost: CostModel, b: Budget) -> dict[str, int]:
    """The narrowest every group may become under ``b``: the smallest model the budget could ask for."""
    return {n: _ceil_min(c, b, cost.channel_groups.get(n, 1)) for n, c in cost.base_widths.items()}


def check_feasible(cost: CostModel, b: Budget) -> None:
    """An impossible budget is a UserError up front, not a failed trial."""
    floor = cost.macs(min_widths(cost, b))
    if floor > b.macs:
        raise UserError(
            f"the budget of {b.macs / 1e6:.1f} MMACs ({b.macs / cost.base_macs:.1%} of the model) is below what "
            f"budget.min_keep={b.min_keep} allows ({floor / 1e6:.1f} MMACs, {floor / cost.base_macs:.1%}); "
            f"lower budget.min_keep or raise the budget"
        )
    if b.latency is not None and b.latency_ms is not None:
        floor_ms = b.latency.predict_ms(min_widths(cost, b))
        if floor_ms > b.latency_ms:
            margin = (
                f" less its {b.latency_margin:.0%} budget.latency_margin ({b.latency_ms:.3f} ms)"
                if b.latency_margin
                else ""
            )
            raise UserError(
                f"budget.latency_ms={b.user_latency_ms:g}{margin} is below the smallest model's latency "
                f"({floor_ms:.3f} ms per image with budget.min_keep={b.min_keep}, {b.latency.table.key.device}); "
                f"raise budget.latency_ms or lower budget.min_keep" + (" or budget.latency_margin" if margin else "")
            )


def project(cost: CostModel, ratios: dict[str, float], b: Budget) -> dict[str, int]:
    """Channel counts per group: MACs <= budget, as close to it as rounding allows, shaped like ``ratios``."""
    unknown = set(ratios) - set(cost.base_widths)
    if unknown:
        raise UserError(f"policy names groups the model does not have: {sorted(unknown)[:3]}")
    check_feasible(cost, b)
    if b.fits(cost, _counts(cost, ratios, 1e9, b)):
        return _counts(cost, ratios, 1e9, b)  # everything at max_keep already fits
    lo, hi = 0.0, 1.0 / max(1e-6, min(ratios.values(), default=1.0))
    while b.fits(cost, _counts(cost, ratios, hi, b)):
        hi *= 2
    for _ in range(40):
        mid = (lo + hi) / 2
        if b.fits(cost, _counts(cost, ratios, mid, b)):
            lo = mid
        else:
            hi = mid
    counts = _counts(cost, ratios, lo, b)
    floor = min_widths(cost, b)
    counts = {n: max(c, floor[n]) for n, c in counts.items()}
    if not b.fits(cost, counts):  # min widths pushed it over; shrink the largest relative groups
        for name in sorted(counts, key=lambda n: -counts[n] / cost.base_widths[n]):
            step = group_step(cost, name, b)
            while not b.fits(cost, counts) and counts[name] - step >= floor[name]:
                counts[name] -= step
    # Greedy fill: give back rounding steps to the groups furthest below their preferred width.
    frozen: set[str] = set()
    while True:
        best, best_gap = None, None
        for name, c in counts.items():
            base = cost.base_widths[name]
            if name in frozen or c >= base or c / base >= b.max_keep:
                continue
            want = min(b.max_keep, max(b.min_keep, lo * ratios.get(name, 1.0)))
            gap = c / base - want
            if best_gap is None or gap < best_gap:
                best, best_gap = name, gap
        if best is None:
            break
        step = group_step(cost, best, b)
        trial = dict(counts)
        trial[best] = min(cost.base_widths[best], counts[best] + step)
        if b.fits(cost, trial):
            counts = trial
        else:
            frozen.add(best)
    return counts


def uniform_ratios(cost: CostModel) -> dict[str, float]:
    """Equal preferences for every group: the hand-picked uniform policy of the paper, after projection."""
    return {name: 1.0 for name in cost.base_widths}


def global_widths(
    scores: dict[str, torch.Tensor], widths: dict[str, int], cost: CostModel, budget: Budget
) -> dict[str, int]:
    """Widths from one global ranking of channels, removed a rounding step at a time until MACs fit the budget.

    Scores are divided by their group's mean so groups compare; the group holding the globally lowest
    remaining channel loses one step (:func:`group_step`: ``budget.round_to`` channels, 1 for groups of at
    most that many, a multiple of the conv groups for a group feeding a grouped conv).
    No group goes below one step (or 1 channel) nor below ``budget.min_keep`` of its original width.
    """
    widths = dict(widths)
    ranked: dict[str, list[float]] = {}
    for name in widths:
        s = scores[name].float()
        finite = s[torch.isfinite(s)]
        mean = float(finite.mean()) if finite.numel() else 0.0
        ranked[name] = sorted((s / mean if mean > 0 else s).tolist())
    removed = dict.fromkeys(widths, 0)

    def step(name: str) -> int:
        r = group_step(cost, name, budget)
        return widths[name] % r or r

    def floor(name: str) -> int:
        return max(group_step(cost, name, budget), math.ceil(budget.min_keep * cost.base_widths[name] - 1e-9))

    while not budget.fits(cost, widths):  # MACs, and the latency table when the budget has one
        candidates = [n for n in widths if widths[n] - step(n) >= floor(n)]
        if not candidates:
            raise UserError(
                f"strategy 'global' cannot reach the budget of {budget.macs / 1e6:.1f} MMACs with "
                f"budget.min_keep={budget.min_keep}; lower budget.min_keep or raise the budget"
            )
        best = min(candidates, key=lambda n: ranked[n][removed[n]])  # first in group order on ties
        k = step(best)
        widths[best] -= k
        removed[best] += k
    return widths
