"""Contract suites for dataset readers and backbones (needs pytest).

::

    from autoprune.testing import BackboneContract, DatasetReaderContract

    class TestMyReader(DatasetReaderContract):
        reader = staticmethod(read_mine)       # reader(root) -> ReIDDataset

        def write_sample(self, root):          # a few images in your layout (default: Market-1501's)
            ...

    class TestMyBackbone(BackboneContract):
        factory = staticmethod(my_backbone)    # factory(last_stride) -> nn.Module
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from autoprune.data.base import ReIDDataset
from autoprune.errors import UserError
from autoprune.pruning.budget import Budget, project, uniform_ratios
from autoprune.pruning.flops import CostModel
from autoprune.pruning.groups import PruningGraph
from autoprune.pruning.surgery import prune_to_counts
from autoprune.testing.contracts import SIZE


def _static(obj: object, attr: str) -> Callable[..., Any]:
    """A function class attribute as written, whether or not it was wrapped in ``staticmethod``."""
    value = inspect.getattr_static(obj, attr)
    return value.__func__ if isinstance(value, staticmethod) else value


class DatasetReaderContract:
    """What every dataset reader must do; subclass, set ``reader`` and, unless your layout is Market-1501's,
    override :meth:`write_sample` to write a small dataset in it."""

    reader: ClassVar[Callable[[str], ReIDDataset]]

    def write_sample(self, root: Path) -> None:
        """A few identities in the Market-1501 layout (the synthetic generator's output)."""
        from autoprune.data.synth import generate

        generate(root, domain="A", num_train_ids=4, num_test_ids=3, images_per_id_per_cam=1, num_distractors=1)

    def read(self, root: Path) -> ReIDDataset:
        return _static(self, "reader")(str(root))

    def test_reads_train_query_gallery(self, tmp_path: Path) -> None:
        self.write_sample(tmp_path / "data")
        ds = self.read(tmp_path / "data")
        assert isinstance(ds, ReIDDataset), f"the reader must return a ReIDDataset, got {type(ds).__name__}"
        for split in ("train", "query", "gallery"):
            samples = getattr(ds, split)
            assert samples, f"the {split} split of the sample is empty"
            for sample in samples:
                assert len(sample) == 3, f"{split}: samples are (image_path, pid, camid), got {sample!r}"
                path, pid, camid = sample
                assert Path(path).is_file(), f"{split}: image {path} does not exist"
                assert isinstance(pid, int) and isinstance(camid, int) and camid >= 0, (
                    f"{split}: pid and camid must be ints, camid 0-based; got {sample!r}"
                )
        pids = sorted({pid for _, pid, _ in ds.train})
        assert pids == list(range(len(pids))), f"train pids must be relabelled 0..{len(pids) - 1}, got {pids[:10]}"
        gallery = {pid for _, pid, _ in ds.gallery}
        assert any(pid in gallery for _, pid, _ in ds.query), "no query identity appears in the gallery"

    def test_a_missing_folder_is_a_user_error(self, tmp_path: Path) -> None:
        with pytest.raises(UserError) as info:
            self.read(tmp_path / "missing")
        assert "missing" in str(info.value), f"the error should name the folder: {info.value}"


class BackboneContract:
    """What every backbone must do; subclass and set ``factory`` (``factory(last_stride) -> nn.Module``)."""

    factory: ClassVar[Callable[..., nn.Module]]
    num_classes: ClassVar[int] = 4

    def build(self, last_stride: int = 1) -> nn.Module:
        """The re-ID model autoprune builds around the backbone (pooling, BNNeck, classifier)."""
        from autoprune.hookspecs import hookimpl
        from autoprune.host import PluginHost
        from autoprune.models import build_model

        factory = _static(self, "factory")

        class Register:
            @hookimpl
            def autoprune_register_backbones(self, register: Callable[..., None]) -> None:
                register("contract_backbone", factory)

        host = PluginHost(load_entry_points=False)
        host.register_plugin(Register(), name="backbone-contract")
        torch.manual_seed(0)
        return build_model("contract_backbone", self.num_classes, last_stride=last_stride, host=host)

    @pytest.mark.parametrize("last_stride", [1, 2])
    def test_train_and_eval_outputs(self, last_stride: int) -> None:
        model = self.build(last_stride).train()
        x = torch.randn(2, 3, *SIZE)
        out = model(x)
        assert isinstance(out, tuple) and len(out) == 2, "train mode returns (logits, features)"
        logits, feats = out
        assert tuple(logits.shape) == (2, self.num_classes), (
            f"logits: expected (2, {self.num_classes}), got {tuple(logits.shape)}"
        )
        model.eval()
        with torch.no_grad():
            emb = model(x)
        assert tuple(emb.shape) == (2, model.feat_dim), (
            f"eval mode: expected (2, {model.feat_dim}), got {tuple(emb.shape)}"
        )
        assert torch.isfinite(emb).all(), "the embedding is not finite"

    def test_has_prunable_groups_and_prunes_to_half_the_macs(self) -> None:
        model = self.build().train()
        graph = PruningGraph(model, SIZE)
        assert graph.groups, "no prunable channel group found: autoprune can prune convs followed by BatchNorm"
        cost = CostModel(graph)
        budget = Budget(cost.base_macs // 2, min_keep=0.1, round_to=1)
        counts = project(cost, uniform_ratios(cost), budget)
        gen = torch.Generator().manual_seed(0)
        prune_to_counts(graph, counts, {n: torch.rand(c, generator=gen) for n, c in graph.widths().items()})
        assert graph.widths() == counts
        macs = cost.macs(graph.widths())
        assert macs <= budget.macs, f"pruned to {macs} MACs, above half ({budget.macs})"
        model.eval()
        with torch.no_grad():
            emb = model(torch.randn(2, 3, *SIZE))
        assert tuple(emb.shape) == (2, model.feat_dim), "pruning must keep the embedding width"
