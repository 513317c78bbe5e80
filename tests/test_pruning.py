from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings, strategies as st

from autoprune.errors import UserError
from autoprune.models import build_model
from autoprune.pruning.budget import Budget, project, round_channels, uniform_ratios
from autoprune.pruning.flops import CostModel, count_macs
from autoprune.pruning.groups import PruningGraph
from autoprune.pruning.serialize import load_pruned, save_pruned
from autoprune.pruning.surgery import prune_to_counts

SIZE = (64, 32)


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return build_model("resnet18", 5)


def test_group_names_are_stable_and_head_is_never_pruned(r18):
    g = PruningGraph(copy.deepcopy(r18), SIZE)
    names = list(g.groups)
    assert names[0] == "layer1.out"  # stem conv + layer1 residual stream are one coupled width
    assert {"layer2.out", "layer3.out", "layer1.0.conv1", "layer4.1.conv1"} <= set(names)
    assert "layer4.out" not in names  # the embedding width feeds the BNNeck: kept
    touched = {m for pg in g.groups.values() for m in pg.out_modules + pg.in_modules}
    assert "bnneck" not in touched and "classifier" not in touched


@pytest.mark.parametrize("arch", ["resnet10", "resnet34", "resnet50"])
def test_cost_model_matches_thop_after_surgery(arch):
    torch.manual_seed(1)
    model = build_model(arch, 3)
    g = PruningGraph(model, SIZE)
    cost = CostModel(g)
    assert cost.base_macs == count_macs(model, SIZE)[0]
    gen = torch.Generator().manual_seed(2)
    counts = {n: max(1, int(c * (0.2 + 0.8 * torch.rand(1, generator=gen).item()))) for n, c in g.widths().items()}
    prune_to_counts(g, counts, {n: torch.randn(pg.channels, generator=gen) for n, pg in g.groups.items()})
    assert g.widths() == counts
    assert count_macs(model, SIZE)[0] == cost.macs(counts)


def test_pruning_really_shrinks_and_runs(r18):
    model = copy.deepcopy(r18)
    g = PruningGraph(model, SIZE)
    cost = CostModel(g)
    params0 = sum(p.numel() for p in model.parameters())
    counts = project(cost, uniform_ratios(cost), Budget(cost.base_macs // 2))
    prune_to_counts(g, counts, {n: torch.rand(pg.channels) for n, pg in g.groups.items()})
    macs, params = count_macs(model, SIZE)
    assert macs <= cost.base_macs // 2
    assert params < 0.7 * params0
    assert model.backbone.layer2[0].conv2.out_channels == counts["layer2.out"] < 128
    model.eval()
    assert model(torch.randn(2, 3, *SIZE)).shape == (2, 512)


def test_removing_zero_channels_leaves_outputs_unchanged():
    torch.manual_seed(3)
    model = build_model("resnet10", 4).eval()
    # zero the weakest half of layer3.0.conv1's filters (and its BN so the channel is exactly 0 after ReLU)
    conv = model.backbone.layer3[0].conv1
    bn = model.backbone.layer3[0].bn1
    with torch.no_grad():
        conv.weight[::2] = 0
        bn.weight[::2] = 0
        bn.bias[::2] = 0
    x = torch.randn(2, 3, *SIZE)
    before = model(x)
    g = PruningGraph(model, SIZE)
    scores = {n: torch.ones(pg.channels) for n, pg in g.groups.items()}
    scores["layer3.0.conv1"] = conv.weight.detach().abs().flatten(1).sum(1)
    counts = dict(g.widths())
    counts["layer3.0.conv1"] = conv.out_channels // 2
    prune_to_counts(g, counts, scores)
    assert model.backbone.layer3[0].conv1.out_channels == 128
    assert torch.allclose(model(x), before, atol=1e-5)


def test_coupled_residual_channels_stay_consistent(r18):
    model = copy.deepcopy(r18)
    g = PruningGraph(model, SIZE)
    counts = dict(g.widths())
    counts["layer3.out"] = 96
    prune_to_counts(g, counts, {n: torch.rand(pg.channels) for n, pg in g.groups.items()})
    b = model.backbone
    assert b.layer3[0].conv2.out_channels == b.layer3[0].downsample[0].out_channels == b.layer3[1].conv2.out_channels == 96
    assert b.layer3[1].conv1.in_channels == b.layer4[0].conv1.in_channels == b.layer4[0].downsample[0].in_channels == 96


@settings(max_examples=25, deadline=None)
@given(arch=st.sampled_from(["resnet10", "resnet18", "resnet50"]), ratio=st.floats(0.12, 0.95),
       round_to=st.sampled_from([1, 4, 8, 16]), seed=st.integers(0, 10_000),
       size=st.sampled_from([(64, 32), (128, 64), (96, 48)]))
def test_projection_always_meets_budget_and_lands_close(arch, ratio, round_to, seed, size):
    cost = _cost(arch, size)
    gen = torch.Generator().manual_seed(seed)
    ratios = {n: 0.1 + 0.9 * torch.rand(1, generator=gen).item() for n in cost.base_widths}
    b = Budget(int(ratio * cost.base_macs), min_keep=0.05, round_to=round_to)
    counts = project(cost, ratios, b)
    macs = cost.macs(counts)
    assert macs <= b.macs
    assert macs >= 0.97 * b.macs  # within a few rounding steps of the budget (1% for round_to <= 8 on r18+)
    for n, c in counts.items():
        base = cost.base_widths[n]
        assert 1 <= c <= base
        if round_to > 1 and base > round_to and c < base:
            assert c % round_to == 0


_COSTS: dict = {}


def _cost(arch, size):
    key = (arch, size)
    if key not in _COSTS:
        _COSTS[key] = CostModel(PruningGraph(build_model(arch, 3), size))
    return _COSTS[key]


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.15])
def test_projection_within_one_percent_on_resnet18(ratio):
    cost = _cost("resnet18", (128, 64))
    counts = project(cost, uniform_ratios(cost), Budget(int(ratio * cost.base_macs)))
    assert 0.99 * ratio * cost.base_macs <= cost.macs(counts) <= ratio * cost.base_macs


def test_impossible_budget_is_a_clear_error():
    cost = _cost("resnet18", (64, 32))
    with pytest.raises(UserError, match="below what budget.min_keep=0.5 allows"):
        project(cost, uniform_ratios(cost), Budget(int(0.1 * cost.base_macs), min_keep=0.5))


def test_round_channels():
    assert round_channels(64, 0.5, 8) == 32
    assert round_channels(64, 0.01, 8) == 8
    assert round_channels(64, 1.0, 8) == 64
    assert round_channels(6, 0.5, 8) == 3


def test_save_load_round_trip_is_exact(tmp_path, r18):
    model = copy.deepcopy(r18)
    g = PruningGraph(model, SIZE)
    cost = CostModel(g)
    counts = project(cost, {n: 0.3 + 0.7 * (i % 3) / 2 for i, n in enumerate(cost.base_widths)}, Budget(cost.base_macs // 3))
    prune_to_counts(g, counts, {n: torch.rand(pg.channels) for n, pg in g.groups.items()})
    model.eval()
    path = save_pruned(model, tmp_path / "m.pt")
    loaded = load_pruned(path)
    x = torch.randn(3, 3, *SIZE)
    assert torch.allclose(loaded(x), model(x), atol=1e-6)
    assert count_macs(loaded, SIZE) == count_macs(model, SIZE)


def test_loading_refuses_pickled_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"meta": Evil(), "state_dict": {}}, f)
    with pytest.raises(UserError, match="cannot be loaded safely"):
        load_pruned(path)
