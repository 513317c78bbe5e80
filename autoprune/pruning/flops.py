"""MACs (multiply-accumulates) with thop, and an exact cost model of MACs as a function of group widths.

Unit: MACs, counted by ``ultralytics-thop`` on one image at the configured input size, inference path
(backbone, pooling and BNNeck; the classifier is training-only). Papers' "FLOPs" for ResNets are
usually these MACs; multiply by 2 for floating-point operations.

The cost model lets the budget projection evaluate thousands of candidate widths without surgery: thop
charges each layer a count that is linear in its input channels and in its output channels, so every
layer's count is its baseline count scaled by the kept fractions of the group(s) it depends on. Tests
check the model against thop on pruned networks.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass

import torch
from torch import nn

from autoprune.pruning.groups import PruningGraph


def count_macs(model: nn.Module, input_size: tuple[int, int]) -> tuple[int, int]:
    """(MACs, params) of ``model`` in eval mode for one image of ``input_size`` (height, width)."""
    import thop

    was = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros(1, 3, int(input_size[0]), int(input_size[1]), device=device)
    logger = logging.getLogger("thop")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            macs, _ = thop.profile(model, inputs=(x,), verbose=False)
    finally:
        logger.setLevel(level)
        model.train(was)
    params = sum(p.numel() for p in model.parameters())
    return int(macs), int(params)


@dataclass
class _Term:
    macs: int  # thop's count for this layer in the unpruned model
    in_group: str | None
    out_group: str | None


class CostModel:
    """MACs of the model for any widths of its prunable groups (exact for ResNets, checked in tests)."""

    def __init__(self, graph: PruningGraph) -> None:
        import thop

        model = graph.model
        self.base_widths = graph.widths()
        self.channel_groups = graph.channel_groups()  # widths must stay multiples of these (grouped convs)
        owner_out: dict[str, str] = {}
        owner_in: dict[str, str] = {}
        for gname, g in graph.groups.items():
            for m in g.out_modules:
                owner_out[m] = gname
            for m in g.in_modules:
                owner_in[m] = gname
        # thop counts leaf modules only; record each leaf's input once and count it with thop's own rules.
        shapes: dict[str, torch.Size] = {}
        hooks = []
        for name, module in model.named_modules():
            if len(list(module.children())) == 0:
                hooks.append(
                    module.register_forward_hook(
                        lambda mod, inp, out, _n=name: None if _n in shapes else shapes.update({_n: inp[0].shape})
                    )
                )
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros(1, 3, *graph.input_size, device=device))
        model.train(was)
        for h in hooks:
            h.remove()
        self.terms: list[_Term] = []
        modules = dict(model.named_modules())
        logger = logging.getLogger("thop")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            for name, shape in shapes.items():
                module = modules[name]
                with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
                    macs, _ = thop.profile(module, inputs=(torch.zeros(shape, device=device),), verbose=False)
                if macs:
                    self.terms.append(_Term(int(macs), owner_in.get(name), owner_out.get(name)))
        finally:
            logger.setLevel(level)
        self.base_macs = self.macs(self.base_widths)

    def macs(self, widths: dict[str, int]) -> int:
        total = 0.0
        for t in self.terms:
            v = float(t.macs)
            if t.in_group is not None:
                v *= widths[t.in_group] / self.base_widths[t.in_group]
            if t.out_group is not None:
                v *= widths[t.out_group] / self.base_widths[t.out_group]
            total += v
        return int(round(total))
