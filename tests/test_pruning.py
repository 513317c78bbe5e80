from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.resnet import Bottleneck, ResNet

from autoprune.errors import UserError
from autoprune.hookspecs import hookimpl
from autoprune.host import declared_options, instantiate
from autoprune.models import build_model
from autoprune.pruning.budget import Budget, project, round_channels, uniform_ratios
from autoprune.pruning.flops import CostModel, count_macs
from autoprune.pruning.groups import PruningGraph
from autoprune.pruning.serialize import load_pruned, save_pruned
from autoprune.pruning.surgery import lowest, prune_to_counts
from autoprune.testing import strategy_context, tiny_model
from autoprune_plugins.backbones import TORCHVISION_RESNETS

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
    assert (
        b.layer3[0].conv2.out_channels == b.layer3[0].downsample[0].out_channels == b.layer3[1].conv2.out_channels == 96
    )
    assert b.layer3[1].conv1.in_channels == b.layer4[0].conv1.in_channels == b.layer4[0].downsample[0].in_channels == 96


@settings(max_examples=25, deadline=None)
@given(
    arch=st.sampled_from(["resnet10", "resnet18", "resnet50"]),
    ratio=st.floats(0.12, 0.95),
    round_to=st.sampled_from([1, 4, 8, 16]),
    seed=st.integers(0, 10_000),
    size=st.sampled_from([(64, 32), (128, 64), (96, 48)]),
)
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
    counts = project(
        cost, {n: 0.3 + 0.7 * (i % 3) / 2 for i, n in enumerate(cost.base_widths)}, Budget(cost.base_macs // 3)
    )
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


# -- every architecture model.arch accepts, with every built-in criterion and strategy -----------------------
# Per architecture: both budgets with a strategy that follows the policy and one that picks its own widths
# (the structural part: groups, legal widths, surgery, saving). Criteria x strategies on one model of each
# block family: basic (resnet10) and ResNeXt's grouped bottleneck (one block per stage, same groups).

TINY = (32, 16)
_BIG = {"resnet101", "resnet152", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet101_2", "wide_resnet50_2"}


class _TinyResNeXt:
    @hookimpl
    def autoprune_register_backbones(self, register):
        def build(last_stride=1):
            model = ResNet(Bottleneck, [1, 1, 1, 1], groups=32, width_per_group=4)
            model.fc = torch.nn.Identity()
            return model

        register("tiny_resnext", build)


def _prune_and_check(model, criterion_cls, strategy_cls, ratio, steps=None, **settings):
    """Prune ``model`` as a trial would (``steps``: the option of strategies that take it); check widths,
    real MACs and a forward pass."""
    feat_dim = model.feat_dim
    ctx = strategy_context(model, criterion=criterion_cls(), budget_ratio=ratio, input_size=TINY, **settings)
    options = {"steps": steps} if steps is not None and "steps" in declared_options(strategy_cls) else {}
    out = instantiate(strategy_cls, options).run(model, ctx)
    widths = ctx.graph.widths()
    if strategy_cls.follows_policy:
        assert widths == ctx.counts
    for name, w in widths.items():
        assert w % ctx.graph.groups[name].channel_groups == 0, name
    assert count_macs(out, TINY)[0] <= ctx.budget.macs
    out.eval()
    assert out(torch.randn(2, 3, *TINY)).shape == (2, feat_dim)
    return out


@pytest.mark.parametrize(
    "arch", [pytest.param(a, marks=pytest.mark.slow) if a in _BIG else a for a in ("resnet10", *TORCHVISION_RESNETS)]
)
def test_every_architecture_prunes_at_half_and_30_percent_and_saves(arch, host, tmp_path):
    torch.manual_seed(0)
    proto = build_model(arch, 4)
    for ratio in (0.5, 0.3):
        for strategy in ("one_shot", "global"):
            model = _prune_and_check(
                copy.deepcopy(proto).train(), host.get("criterion", "l1"), host.get("strategy", strategy), ratio
            )
    loaded = load_pruned(save_pruned(model, tmp_path / "m.pt"))  # the last one: saved and loaded exactly
    x = torch.randn(2, 3, *TINY)
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("arch", [pytest.param("resnet10", marks=pytest.mark.slow), "tiny_resnext"])
@pytest.mark.parametrize(
    "criterion", ["l1", "l2", "fpgm", "bn_scale", "taylor", "taylor_activation", "gradient", "random"]
)
def test_every_criterion_with_every_strategy_at_both_budgets(arch, criterion, host):
    host.register_plugin(_TinyResNeXt(), name="tiny-resnext")
    assert {criterion} <= set(host.names("criterion"))
    for ratio in (0.5, 0.3):
        for strategy in host.names("strategy"):
            _prune_and_check(
                tiny_model(arch=arch),
                host.get("criterion", criterion),
                host.get("strategy", strategy),
                ratio,
                epochs=2,
                steps=2,
            )


def test_grouped_conv_channels_are_pruned_blockwise_and_outputs_keep_their_meaning():
    """Zeroed channels in a grouped bottleneck are exactly the ones removed: the output does not change."""
    torch.manual_seed(3)
    model = build_model("resnext50_32x4d", 4).eval()
    block = model.backbone.layer1[0]
    with torch.no_grad():  # zero offset 1 of each of the 32 blocks of 4, before and after the grouped conv2
        for conv, bn in ((block.conv1, block.bn1), (block.conv2, block.bn2)):
            conv.weight[1::4] = 0
            bn.weight[1::4] = 0
            bn.bias[1::4] = 0
    x = torch.randn(2, 3, *TINY)
    before = model(x)
    g = PruningGraph(model, TINY)
    assert g.groups["layer1.0.conv1"].channel_groups == g.groups["layer1.0.conv2"].channel_groups == 32
    assert g.groups["layer1.out"].channel_groups == 1
    counts = dict(g.widths())
    for name in ("layer1.0.conv1", "layer1.0.conv2"):
        counts[name] = 96
    scores = {n: torch.rand(pg.channels) + 1 for n, pg in g.groups.items()}
    scores["layer1.0.conv1"][1::4] = 0
    scores["layer1.0.conv2"][1::4] = 0
    prune_to_counts(g, counts, scores)
    assert (block.conv2.in_channels, block.conv2.out_channels, block.conv2.groups) == (96, 96, 32)
    assert torch.allclose(model(x), before, atol=1e-5)


def test_lowest_takes_the_same_offsets_from_every_block():
    scores = torch.tensor([5.0, 1.0, 3.0, 9.0, 6.0, 2.0, 0.0, 9.0])  # two blocks of 4; offset sums 11, 3, 3, 18
    assert lowest(scores, 4, channel_groups=2) == [1, 2, 5, 6]
    assert lowest(scores, 2) == [6, 1]
    with pytest.raises(ValueError, match="multiple of 2"):
        lowest(scores, 3, channel_groups=2)


def test_a_removal_that_breaks_conv_groups_is_refused():
    model = build_model("resnext50_32x4d", 4)
    g = PruningGraph(model, TINY)
    with pytest.raises(ValueError, match="grouped conv with 32 groups"):
        g.prune("layer1.0.conv1", list(range(32)))  # 32 channels, but all from the first 8 blocks


def test_widths_feeding_grouped_convs_are_multiples_of_the_groups_at_every_budget():
    cost = CostModel(PruningGraph(build_model("resnext50_32x4d", 3), TINY))
    for ratio in (0.7, 0.5, 0.3, 0.15):
        b = Budget(int(ratio * cost.base_macs), min_keep=0.05)
        counts = project(cost, uniform_ratios(cost), b)
        assert 0.95 * b.macs <= cost.macs(counts) <= b.macs
        assert all(c % cost.channel_groups[n] == 0 and c > 0 for n, c in counts.items())


# -- untrusted model files: the metadata is checked against the file's tensors and the architecture -----------


@pytest.fixture(scope="module")
def saved_r10(tmp_path_factory):
    """(meta, state) of a pruned resnet10 as autoprune saves it."""
    import json

    torch.manual_seed(4)
    model = build_model("resnet10", 5)
    g = PruningGraph(model, SIZE)
    prune_to_counts(
        g, {n: c // 2 for n, c in g.widths().items()}, {n: torch.rand(pg.channels) for n, pg in g.groups.items()}
    )
    path = save_pruned(model.eval(), tmp_path_factory.mktemp("saved") / "m.pt")
    blob = torch.load(path, weights_only=True)
    return json.loads(blob["meta"]), blob["state_dict"]


def _tampered(meta, state, edit):
    import json

    meta, state = json.loads(json.dumps(meta)), dict(state)
    out = edit(meta, state)
    return out if isinstance(out, str) else json.dumps(meta), state


_CONV = "backbone.layer2.0.conv1"
_TAMPERING = {
    "not JSON": (lambda m, s: "{not json", "not valid JSON"),
    "a list": (lambda m, s: "[1, 2]", "JSON list, not an object"),
    "no arch": (lambda m, s: m.pop("arch"), "'arch' must be an object"),
    "no spec": (lambda m, s: m.pop("spec"), "'spec' must be an object"),
    "unknown layer": (lambda m, s: m["spec"].update({"backbone.layer9.conv1": [8, 8]}), "layer9"),
    "negative width": (lambda m, s: m["spec"].__setitem__(_CONV, [-64, 64]), "positive integers"),
    "fractional width": (lambda m, s: m["spec"].__setitem__(_CONV, [64, 32.5]), "positive integers"),
    "string width": (lambda m, s: m["spec"].__setitem__(_CONV, [64, "32"]), "positive integers"),
    "a billion channels": (lambda m, s: m["spec"].__setitem__(_CONV, [m["spec"][_CONV][0], 10**9]), "holds a tensor"),
    "a billion classes": (lambda m, s: m["arch"].__setitem__("num_classes", 10**9), "num_classes"),
    "wider than the architecture": (
        lambda m, s: (
            m["spec"].__setitem__("backbone.conv1", [3, 128]),
            s.__setitem__("backbone.conv1.weight", torch.zeros(128, 3, 7, 7)),
        ),
        "wider than resnet10",
    ),
    "unknown architecture": (lambda m, s: m["arch"].__setitem__("arch", "resnet9000"), "no installed plugin"),
    "bad last stride": (lambda m, s: m["arch"].__setitem__("last_stride", 0), "last_stride"),
    "classes disagree with the head": (lambda m, s: m["arch"].__setitem__("num_classes", 7), "classifier has"),
}


@pytest.mark.parametrize("case", list(_TAMPERING))
def test_tampered_model_metadata_is_a_user_error_naming_the_file(case, saved_r10, tmp_path):
    edit, message = _TAMPERING[case]
    raw, state = _tampered(*saved_r10, edit)
    path = tmp_path / "evil.pt"
    torch.save({"meta": raw, "state_dict": state}, path)
    with pytest.raises(UserError, match=message) as info:
        load_pruned(path)
    assert str(path) in str(info.value)


def test_a_model_autoprune_saved_loads_exactly(saved_r10, tmp_path):
    raw, state = _tampered(*saved_r10, lambda m, s: None)  # untouched
    path = tmp_path / "ok.pt"
    torch.save({"meta": raw, "state_dict": state}, path)
    loaded = load_pruned(path)
    assert loaded.arch["num_classes"] == 5 and loaded.classifier.out_features == 5
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
