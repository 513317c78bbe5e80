"""Prunable groups from Torch-Pruning's dependency graph, with stable human-readable names.

A group is a set of channels that must be removed together: the output channels of one conv (an inner
block width, named after the conv, e.g. ``layer3.1.conv1``) or a stage's residual-coupled width (every
conv adding into the same residual stream, named ``layer3.out``). The group feeding the BNNeck (the
embedding width) is never pruned, nor are the BNNeck and the classifier.

Grouped convolutions (ResNeXt) split their channels into ``channel_groups`` equal blocks, and each
block must keep the same channels: a group touching one is pruned as Torch-Pruning's own pruners
do it, by removing the same offsets from every block (so its width stays a multiple of the blocks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn


@dataclass
class PrunableGroup:
    """One group: its name, the conv whose output defines it, and which modules it touches."""

    name: str
    root: str  # module name (in the model) of the conv that roots the group
    channels: int  # current number of channels
    out_modules: list[str] = field(default_factory=list)  # modules whose output channels are these
    in_modules: list[str] = field(default_factory=list)  # modules whose input channels are these
    channel_groups: int = 1  # blocks of a grouped conv these channels feed or leave; width is a multiple

    @property
    def stage(self) -> str:
        m = re.match(r"(layer\d+)", self.name)
        return m.group(1) if m else "stem"


def _short(name: str) -> str:
    return name[len("backbone.") :] if name.startswith("backbone.") else name


def _group_name(convs: list[str]) -> str:
    short = sorted(_short(c) for c in convs)
    if len(short) == 1:
        return short[0]
    stages = sorted({m.group(1) for c in short if (m := re.match(r"(layer\d+)", c))})
    return f"{stages[-1]}.out" if stages else "+".join(short)


class PruningGraph:
    """A model's dependency graph and its named prunable groups; prunes the model in place."""

    def __init__(self, model: nn.Module, input_size: tuple[int, int]) -> None:
        self.model = model
        self.input_size = (int(input_size[0]), int(input_size[1]))
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        example = torch.randn(1, 3, *self.input_size, device=device)
        self.dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        model.train(was_training)
        self.names = {m: n for n, m in model.named_modules()}
        self.modules = dict(model.named_modules())
        head = [m for m in (getattr(model, "bnneck", None), getattr(model, "classifier", None)) if m is not None]
        self.groups: dict[str, PrunableGroup] = {}
        for group in self.dg.get_all_groups(ignored_layers=head, root_module_types=[nn.Conv2d]):
            outs, ins, convs = [], [], []
            blocks = 1
            for dep, _ in group:
                module = dep.target.module
                if isinstance(module, nn.Conv2d) and 1 < module.groups < module.out_channels:
                    blocks = max(blocks, module.groups)  # grouped, not depthwise (TP couples depthwise itself)
                name = self.names.get(module)
                if name is None:
                    continue
                if self.dg.is_out_channel_pruning_fn(dep.handler):
                    outs.append(name)
                    if isinstance(module, nn.Conv2d):
                        convs.append(name)
                else:
                    ins.append(name)
            root_module = group[0].dep.target.module
            pg = PrunableGroup(
                _group_name(convs),
                self.names[root_module],
                self.dg.get_out_channels(root_module),
                sorted(set(outs)),
                sorted(set(ins)),
                blocks,
            )
            self.groups[pg.name] = pg
        order = {name: i for i, name in enumerate(self.modules)}
        self.groups = dict(sorted(self.groups.items(), key=lambda kv: order[kv[1].root]))

    def tp_group(self, name: str) -> tp.Group:
        """The Torch-Pruning group with all current channels, for importance scoring."""
        g = self.groups[name]
        root = self.modules[g.root]
        return self.dg.get_pruning_group(root, tp.prune_conv_out_channels, list(range(g.channels)))

    def prune(self, name: str, remove: list[int]) -> None:
        """Remove channels ``remove`` (indices into the current channels) of group ``name``."""
        if not remove:
            return
        g = self.groups[name]
        if len(remove) >= g.channels:
            raise ValueError(f"cannot remove all {g.channels} channels of group {name}")
        check_blockwise(name, g.channels, g.channel_groups, remove)
        root = self.modules[g.root]
        self.dg.get_pruning_group(root, tp.prune_conv_out_channels, sorted(int(i) for i in remove)).prune()
        g.channels = self.dg.get_out_channels(root)

    def widths(self) -> dict[str, int]:
        return {name: g.channels for name, g in self.groups.items()}

    def channel_groups(self) -> dict[str, int]:
        """Each group's number of equal channel blocks (1 unless it touches a grouped conv)."""
        return {name: g.channel_groups for name, g in self.groups.items()}


def check_blockwise(name: str, channels: int, blocks: int, remove: list[int]) -> None:
    """Refuse a removal that does not take the same offsets from each of ``blocks`` equal blocks."""
    if blocks <= 1:
        return
    size = channels // blocks
    offsets = {i for i in remove if i < size}
    if set(remove) != {o + k * size for o in offsets for k in range(blocks)}:
        raise ValueError(
            f"group {name} feeds a grouped conv with {blocks} groups: remove the same channels "
            f"from each of its {blocks} blocks (a multiple of {blocks} channels)"
        )
