"""Contract test suites for criterion, strategy and scenario plugins, and the small fixtures they use.

A suite is a pytest class to subclass in your own tests, naming the plugin in one class attribute::

    from autoprune.testing import CriterionContract

    class TestMyCriterion(CriterionContract):
        criterion_class = MyCriterion

Everything runs on the CPU in seconds: a ResNet-10 re-ID model at 64x32, random batches of 2 images,
and a fine-tuning stand-in that trains nothing. Needs pytest.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoprune.criteria import BaseCriterion, Batch, CriterionContext
from autoprune.data.base import ReIDDataset
from autoprune.data.domain import Domain
from autoprune.data.loading import ImageStore
from autoprune.distill import DistillSettings
from autoprune.models.reid import outputs
from autoprune.pruning.budget import Budget, project, uniform_ratios, width_step
from autoprune.pruning.flops import CostModel
from autoprune.pruning.groups import PruningGraph
from autoprune.pruning.surgery import prune_to_counts
from autoprune.scenarios import BaseScenario, ScenarioContext
from autoprune.strategies import BaseStrategy, StrategyContext

SIZE = (64, 32)  # input (height, width) of every model here
NUM_CLASSES = 4  # identities of the random batches

# -- models, graphs and criterion contexts ------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _builtin_host() -> Any:
    """A host with only autoprune's own readers and backbones: another installed plugin, broken or not,
    cannot change (or fail) the model a plugin's contract tests run on."""
    from autoprune.host import PluginHost

    return PluginHost(load_entry_points=False)


@functools.lru_cache(maxsize=4)
def _prototype(arch: str, num_classes: int, seed: int) -> nn.Module:
    from autoprune.models import build_model

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        # A backbone of another plugin (a backbone's own contract tests) comes from the process-wide host.
        builtin = _builtin_host()
        model = build_model(arch, num_classes, host=builtin if arch in builtin.names("backbone") else None)
        # Make it look trained: BN affine parameters that differ per channel, running statistics
        # measured on data, so eval-mode BN (used by data-driven criteria) is well scaled.
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0.0, 0.1)
                    m.reset_running_stats()
                    m.momentum = None  # cumulative average over the calibration batches
            model.train()
            for _ in range(2):
                model(torch.randn(8, 3, *SIZE))
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.momentum = 0.1
    return model


def tiny_model(seed: int = 0, num_classes: int = NUM_CLASSES, arch: str = "resnet10") -> nn.Module:
    """A fresh re-ID model (the same weights for the same seed) in train mode; built once, then copied."""
    return copy.deepcopy(_prototype(arch, num_classes, seed)).train()


def tiny_graph(model: nn.Module, input_size: tuple[int, int] = SIZE) -> PruningGraph:
    """The pruning graph of ``model`` at :data:`SIZE` (or ``input_size``)."""
    return PruningGraph(model, input_size)


def random_batches(
    seed: int = 0, batch_size: int = 2, num_classes: int = NUM_CLASSES
) -> Callable[[int], Iterator[Batch]]:
    """``batches(n)`` yielding ``n`` random (images, labels) batches, the same ones on every call."""

    def batches(n: int) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(seed)
        for _ in range(n):
            yield (
                torch.randn(batch_size, 3, *SIZE, generator=gen),
                torch.randint(num_classes, (batch_size,), generator=gen),
            )

    return batches


def classification_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Cross-entropy of the model's logits (a re-ID model in train mode returns ``(logits, features)``)."""
    x, y = batch
    out = model(x)
    return F.cross_entropy(out[0] if isinstance(out, tuple) else out, y)


def criterion_context(
    graph: PruningGraph, seed: int = 0, num_batches: int = 2, batch_size: int = 2
) -> CriterionContext:
    """A CriterionContext on ``graph`` with random batches and a cross-entropy loss (for data-driven criteria)."""
    num_classes = getattr(getattr(graph.model, "classifier", None), "out_features", NUM_CLASSES)
    return CriterionContext(
        graph=graph,
        device=torch.device("cpu"),
        batches=random_batches(seed, batch_size, num_classes),
        loss=classification_loss,
        num_batches=num_batches,
        seed=seed,
    )


def score_all(
    criterion: BaseCriterion, model: nn.Module, graph: PruningGraph, seed: int = 0
) -> dict[str, torch.Tensor]:
    """The criterion's raw scores of every group, as the host computes them (prepare once, then score)."""
    ctx = criterion_context(graph, seed=seed)
    criterion.prepare(model, ctx)
    return {name: torch.as_tensor(criterion.score(model, name, ctx)).detach().float().cpu() for name in graph.groups}


def plant_weak_channel(graph: PruningGraph, group: str, channel: int, factor: float = 1e-3) -> None:
    """Scale ``channel`` of ``group`` by ``factor`` in every out-module: conv filters, BN gamma and beta."""
    with torch.no_grad():
        for name in graph.groups[group].out_modules:
            for pname in ("weight", "bias"):
                p = getattr(graph.modules[name], pname, None)
                if isinstance(p, torch.Tensor):
                    p[channel] *= factor


def zeroed_channels(graph: PruningGraph) -> dict[str, int]:
    """How many channels of each group are soft-pruned: every filter, gamma and beta of them is zero."""
    out = {}
    for name, g in graph.groups.items():
        alive = torch.zeros(g.channels, dtype=torch.bool)
        for module_name in g.out_modules:
            for pname in ("weight", "bias"):
                p = getattr(graph.modules[module_name], pname, None)
                if isinstance(p, torch.Tensor):
                    alive |= p.detach().reshape(g.channels, -1).ne(0).any(dim=1).cpu()
        out[name] = int((~alive).sum())
    return out


# -- strategies ------------------------------------------------------------------------------------------------


@dataclass
class FinetuneCall:
    """One call of the fine-tuning stand-in."""

    epochs: int
    widths: dict[str, int]  # group widths when the call started
    zeroed: list[dict[str, int]] = field(default_factory=list)  # per epoch, soft-pruned channels at its start


class RecordingFinetune:
    """Stands in for the host's ``finetune``: records each call and runs the callbacks, training nothing.

    With ``noise`` > 0 every weight moves by that much (Gaussian) each epoch, as training would, so
    soft-pruned channels regrow.
    """

    def __init__(self, graph: PruningGraph, noise: float = 0.0, seed: int = 0) -> None:
        self.graph = graph
        self.noise = noise
        self.gen = torch.Generator().manual_seed(seed)
        self.calls: list[FinetuneCall] = []

    @property
    def epochs(self) -> int:
        """Epochs asked for over all calls."""
        return sum(c.epochs for c in self.calls)

    def __call__(
        self,
        model: nn.Module,
        epochs: int,
        on_epoch_end: Callable[[int, nn.Module], None] | None = None,
        on_step_end: Callable[[nn.Module], None] | None = None,
    ) -> list[dict[str, float]]:
        call = FinetuneCall(epochs, self.graph.widths())
        self.calls.append(call)
        history = []
        for epoch in range(epochs):
            call.zeroed.append(zeroed_channels(self.graph))
            if self.noise:
                with torch.no_grad():
                    for p in model.parameters():
                        if p.requires_grad:
                            p.add_(self.noise * torch.randn(p.shape, generator=self.gen).to(p.device))
            if on_step_end is not None:
                on_step_end(model)
            if on_epoch_end is not None:
                on_epoch_end(epoch, model)
            history.append({"epoch": epoch + 1, "loss": 0.0})
        return history


def strategy_context(
    model: nn.Module,
    criterion: BaseCriterion | None = None,
    budget_ratio: float = 0.5,
    counts: dict[str, int] | None = None,
    epochs: int = 3,
    noise: float = 0.0,
    min_keep: float = 0.1,
    round_to: int = 8,
    input_size: tuple[int, int] = SIZE,
) -> StrategyContext:
    """A StrategyContext on ``model`` with a :class:`RecordingFinetune` as ``ctx.finetune``.

    The target ``counts`` default to the uniform policy projected onto ``budget_ratio`` of the model's
    MACs, as the host would; the criterion defaults to the built-in ``l1``.
    """
    if criterion is None:
        from autoprune_plugins.criteria import L1Criterion

        criterion = L1Criterion()
    graph = tiny_graph(model, input_size)
    cost = CostModel(graph)
    budget = Budget(int(cost.base_macs * budget_ratio), min_keep=min_keep, round_to=round_to)
    if counts is None:
        counts = project(cost, uniform_ratios(cost), budget)
    return StrategyContext(
        graph=graph,
        counts=dict(counts),
        criterion=criterion,
        criterion_context=lambda: criterion_context(graph),
        finetune=RecordingFinetune(graph, noise=noise),
        epochs=epochs,
        cost=cost,
        budget=budget,
    )


def min_width(base: int, budget: Budget, channel_groups: int = 1) -> int:
    """The narrowest a group may become under ``budget``: one rounding step (or 1 channel) and min_keep."""
    return max(width_step(base, budget.round_to, channel_groups), math.ceil(budget.min_keep * base - 1e-9))


# -- scenarios -------------------------------------------------------------------------------------------------


def fake_domain(spec: str, num_ids: int = 3, num_query: int = 2) -> Domain:
    """A Domain with made-up samples (its images are never read), for scenarios run on fake services."""
    train = [(f"/nonexistent/{spec}/train/{i}.jpg", i % num_ids, i % 2) for i in range(2 * num_ids)]
    query = [(f"/nonexistent/{spec}/query/{i}.jpg", i, 0) for i in range(num_query)]
    gallery = [(f"/nonexistent/{spec}/gallery/{i}.jpg", i, 1) for i in range(max(1, num_query))]
    ds = ReIDDataset(spec, train, query, gallery)
    return Domain(spec, ds, ImageStore(train, SIZE), ImageStore(query, SIZE), ImageStore(gallery, SIZE))


@dataclass
class ServiceCall:
    """One call a scenario made: ``kind`` is prune, finetune or evaluate; ``extra_loss`` the term it passed."""

    kind: str
    domain: str
    epochs: int | None
    model: nn.Module
    result: Any = None
    extra_loss: Any = None


class ScenarioRecorder:
    """Fake host services for a scenario: records every call in order; ``prune`` returns a new stand-in model."""

    def __init__(self) -> None:
        self.calls: list[ServiceCall] = []

    def of(self, kind: str) -> list[ServiceCall]:
        return [c for c in self.calls if c.kind == kind]

    def prune(self, model: nn.Module, domain: Domain, epochs: int, extra_loss: Any = None) -> nn.Module:
        pruned = nn.Identity()
        self.calls.append(ServiceCall("prune", domain.spec, epochs, model, pruned, extra_loss))
        return pruned

    def finetune(self, model: nn.Module, domain: Domain, epochs: int, extra_loss: Any = None) -> None:
        self.calls.append(ServiceCall("finetune", domain.spec, epochs, model, None, extra_loss))

    def evaluate(self, model: nn.Module, domain: Domain) -> dict[str, Any]:
        metrics = {"rank1": 0.5, "mAP": 0.25, "domain": domain.spec, "model": id(model)}
        self.calls.append(ServiceCall("evaluate", domain.spec, None, model, metrics))
        return metrics


def scenario_context(
    epochs: int = 3,
    source_query: int = 2,
    with_source: bool = True,
    options: Mapping[str, Any] | None = None,
    adapted: bool = False,
    distill: DistillSettings | None = None,
) -> tuple[ScenarioContext, ScenarioRecorder]:
    """A ScenarioContext with fake services, and the recorder of what the scenario asked of them.

    ``with_source=False``: no source domain (``ctx.source`` is None), as when a user's trained model is pruned.
    ``options`` is what the host puts in ``ctx.options``: the scenario instance's ``options``.
    ``adapted=True`` gives it an adapted model and a teacher (tiny real models, as the host's are), for
    scenarios that start from the target-adapted model or distil; ``distill`` sets ``ctx.distill``.
    """
    rec = ScenarioRecorder()
    source = fake_domain("source", num_query=source_query) if with_source else None
    ctx = ScenarioContext(
        model=nn.Identity(),
        source=source,
        target=fake_domain("target"),
        epochs=epochs,
        prune=rec.prune,
        finetune=rec.finetune,
        evaluate=rec.evaluate,
        options=options if options is not None else {},
        distill=distill or DistillSettings(),
    )
    if adapted:
        ctx.teacher = tiny_model(seed=1).eval().requires_grad_(False)
        ctx.adapted, ctx.adapt_epochs = tiny_model(seed=1), epochs
    return ctx, rec


def loss_term_value(
    term: Callable[..., torch.Tensor], with_teacher: bool = True, seed: int = 0
) -> tuple[torch.Tensor, nn.Module]:
    """Call an extra loss term as the host's fine-tuning does, on a tiny student (train mode) and teacher.

    Returns the term's value and the student, so a test can check the value and that it back-propagates.
    """
    student, teacher = tiny_model(seed=seed), tiny_model(seed=seed + 1).eval().requires_grad_(False)
    x, y = next(random_batches(seed, batch_size=4)(1))
    with torch.no_grad():
        t_out = outputs(teacher, x) if with_teacher else None
    return term((x, y), outputs(student, x), t_out), student


# -- the contracts ---------------------------------------------------------------------------------------------
# Failures say what was expected and what came: pytest does not rewrite the asserts of an installed package,
# so a bare ``assert`` would report nothing but its line.


def _shape(t: torch.Tensor) -> str:
    return str(t.shape[0]) if t.dim() == 1 else f"a tensor of shape {list(t.shape)}"


def check_scores(scores: dict[str, torch.Tensor], graph: PruningGraph, who: str) -> None:
    """Every group scored, one finite score per channel, as a 1-D tensor (what the host accepts)."""
    missing = sorted(set(graph.groups) - set(scores))
    assert not missing, f"{who} scored no channel of {', '.join(missing)}"
    for name, s in scores.items():
        channels = graph.groups[name].channels
        assert tuple(s.shape) == (channels,), f"{who}: expected {channels} scores for {name}, got {_shape(s)}"
        bad = int((~torch.isfinite(s)).sum())
        assert bad == 0, f"{who}: {bad} of the {channels} scores for {name} are not finite"


def check_options(cls: type, given: Mapping[str, Any]) -> Any:
    """``cls`` declares its options properly and accepts ``given``; returns an instance with them."""
    from autoprune.host import declared_options, instantiate

    defaults = declared_options(cls, cls.__name__)
    obj = instantiate(cls, given)
    expected = {**defaults, **given}
    assert dict(obj.options) == expected, f"{cls.__name__}.options: expected {expected}, got {dict(obj.options)}"
    for key in defaults:
        try:
            obj.options[key] = defaults[key]
        except TypeError:
            continue
        raise AssertionError(f"{cls.__name__}: the instance's options must be read-only")
    return obj


class _PluginContract:
    """What every criterion, strategy and scenario shares: a name, a docstring, options."""

    plugin_attr: ClassVar[str]
    options_attr: ClassVar[str]

    @property
    def _cls(self) -> type:
        return getattr(self, self.plugin_attr)

    def test_has_a_name_and_a_docstring(self) -> None:
        name = getattr(self._cls, "name", None)
        assert isinstance(name, str) and name, f"{self._cls.__name__} needs a class attribute name = '...'"
        assert (self._cls.__doc__ or "").strip(), (
            f"{self._cls.__name__} needs a docstring (`autoprune plugins` shows it)"
        )

    def test_declares_options_with_defaults(self) -> None:
        check_options(self._cls, getattr(self, self.options_attr))


class CriterionContract(_PluginContract):
    """What every criterion must do; subclass and set ``criterion_class`` (``criterion_options`` to test
    with other option values than the defaults).

    Set ``ranks_planted = False`` for a criterion that is not meant to find weak channels (``random``).
    """

    plugin_attr = "criterion_class"
    options_attr = "criterion_options"
    criterion_class: ClassVar[type[BaseCriterion]]
    criterion_options: ClassVar[dict[str, Any]] = {}
    ranks_planted: ClassVar[bool] = True
    # the stem+layer1 residual width, an inner width, a residual width with a downsample, the widest inner width
    planted_groups: ClassVar[tuple[str, ...]] = ("layer1.out", "layer2.0.conv1", "layer3.out", "layer4.0.conv1")
    planted_channel: ClassVar[int] = 3

    def make_criterion(self) -> BaseCriterion:
        from autoprune.host import instantiate

        return instantiate(self.criterion_class, self.criterion_options)

    def test_one_finite_score_per_channel_of_every_group(self) -> None:
        model = tiny_model()
        graph = tiny_graph(model)
        check_scores(score_all(self.make_criterion(), model, graph), graph, self.criterion_class.__name__)

    def test_scores_a_pruned_model(self) -> None:
        model = tiny_model()
        graph = tiny_graph(model)
        gen = torch.Generator().manual_seed(1)
        prune_to_counts(
            graph,
            {n: c - c // 3 for n, c in graph.widths().items()},
            {n: torch.rand(c, generator=gen) for n, c in graph.widths().items()},
        )
        check_scores(
            score_all(self.make_criterion(), model, graph),
            graph,
            f"{self.criterion_class.__name__} (on a model pruned by a third)",
        )

    def test_deterministic_for_a_fixed_seed(self) -> None:
        a, b = tiny_model(), tiny_model()
        first = score_all(self.make_criterion(), a, tiny_graph(a), seed=5)
        second = score_all(self.make_criterion(), b, tiny_graph(b), seed=5)
        for name in first:
            torch.testing.assert_close(
                first[name],
                second[name],
                rtol=1e-5,
                atol=0.0,
                msg=f"{self.criterion_class.__name__}: two runs with seed 5 differ for {name}",
            )

    @pytest.mark.parametrize("training", [True, False])
    def test_leaves_the_model_unchanged(self, training: bool) -> None:
        model = tiny_model().train(training)
        graph = tiny_graph(model)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        modes = {n: m.training for n, m in model.named_modules()}
        score_all(self.make_criterion(), model, graph)
        after = model.state_dict()
        changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
        assert not changed, f"scoring changed {', '.join(changed[:5])}"
        with_grad = [n for n, p in model.named_parameters() if p.grad is not None]
        assert not with_grad, f"scoring left gradients on {', '.join(with_grad[:5])}; clear them (set_to_none)"
        flipped = [n or "<model>" for n, m in model.named_modules() if m.training != modes[n]]
        assert not flipped, f"scoring changed train/eval mode of {', '.join(flipped[:5])}"

    def test_ranks_a_planted_weak_channel_last(self) -> None:
        if not self.ranks_planted:
            pytest.skip(f"{self.criterion_class.__name__} does not rank weak channels (ranks_planted = False)")
        model = tiny_model()
        graph = tiny_graph(model)
        for group in self.planted_groups:
            plant_weak_channel(graph, group, self.planted_channel)
        scores = score_all(self.make_criterion(), model, graph)
        for group in self.planted_groups:
            lowest = int(scores[group].argmin())
            assert lowest == self.planted_channel, (
                f"{group}: channel {self.planted_channel} (filters, gamma and beta scaled by 1e-3) should score "
                f"lowest, but channel {lowest} does"
            )


class StrategyContract(_PluginContract):
    """What every strategy must do; subclass and set ``strategy_class`` (``criterion_class`` to score with,
    ``strategy_options`` to test with other option values than the defaults).

    A strategy with ``follows_policy = True`` must end at exactly ``ctx.counts``; one that chooses its
    own widths must end within ``ctx.budget``.
    """

    plugin_attr = "strategy_class"
    options_attr = "strategy_options"
    strategy_class: ClassVar[type[BaseStrategy]]
    strategy_options: ClassVar[dict[str, Any]] = {}
    criterion_class: ClassVar[type[BaseCriterion] | None] = None  # None: the built-in l1

    def make_context(self, model: nn.Module, **settings: Any) -> StrategyContext:
        criterion = self.criterion_class() if self.criterion_class is not None else None
        return strategy_context(model, criterion=criterion, **settings)

    def make_strategy(self) -> BaseStrategy:
        from autoprune.host import instantiate

        return instantiate(self.strategy_class, self.strategy_options)

    def check_target(self, ctx: StrategyContext) -> None:
        widths = ctx.graph.widths()
        who = self.strategy_class.__name__
        if self.strategy_class.follows_policy:
            wrong = {n: (widths[n], c) for n, c in ctx.counts.items() if widths.get(n) != c}
            assert not wrong, f"{who} must end at ctx.counts; (width, target) of the groups that differ: " + ", ".join(
                f"{n} {w} != {c}" for n, (w, c) in list(wrong.items())[:5]
            )
        else:
            assert ctx.cost is not None and ctx.budget is not None
            macs = ctx.cost.macs(widths)
            assert macs <= ctx.budget.macs, f"{who} ended at {macs} MACs, above the budget of {ctx.budget.macs}"
            for name, w in widths.items():
                base = ctx.cost.base_widths[name]
                floor = min(base, min_width(base, ctx.budget, ctx.cost.channel_groups.get(name, 1)))
                assert w >= floor, f"{who} left {name} at {w} channels, under the floor of {floor}"

    def run_strategy(self, **settings: Any) -> tuple[nn.Module, StrategyContext]:
        model = tiny_model()
        ctx = self.make_context(model, **settings)
        out = self.make_strategy().run(model, ctx)
        return out, ctx

    def test_reaches_its_target_within_its_epochs(self) -> None:
        out, ctx = self.run_strategy(epochs=4, noise=1e-3)
        self.check_target(ctx)
        spent = ctx.finetune.epochs  # type: ignore[attr-defined]
        assert spent <= ctx.epochs, f"fine-tuned {spent} epochs, more than ctx.epochs = {ctx.epochs}"
        out.eval()
        with torch.no_grad():
            shape = tuple(out(torch.randn(2, 3, *SIZE)).shape)
        assert shape[0] == 2, f"the pruned model maps a batch of 2 to shape {shape}"

    def test_reaches_its_target_without_finetuning(self) -> None:
        _, ctx = self.run_strategy(epochs=0)
        self.check_target(ctx)
        spent = ctx.finetune.epochs  # type: ignore[attr-defined]
        assert spent == 0, f"fine-tuned {spent} epochs with ctx.epochs = 0"

    def test_nothing_to_prune_keeps_every_channel(self) -> None:
        model = tiny_model()
        ctx = self.make_context(model, budget_ratio=1.0, epochs=1)
        base = ctx.graph.widths()
        self.make_strategy().run(model, ctx)
        changed = {n: w for n, w in ctx.graph.widths().items() if w != base[n]}
        assert not changed, f"at a 100% budget every channel stays; pruned {changed}"

    def test_deterministic(self) -> None:
        a, ctx_a = self.run_strategy(epochs=2, noise=1e-3)
        b, ctx_b = self.run_strategy(epochs=2, noise=1e-3)
        assert ctx_a.graph.widths() == ctx_b.graph.widths(), "two identical runs end at other widths"
        sb = b.state_dict()
        differ = [k for k, v in a.state_dict().items() if not torch.equal(v, sb[k])]
        assert not differ, f"two identical runs end with other weights: {', '.join(differ[:5])}"


class ScenarioContract(_PluginContract):
    """What every scenario must do; subclass and set ``scenario_class`` (``scenario_options`` to test with
    other option values than the defaults). Runs on fake host services."""

    plugin_attr = "scenario_class"
    options_attr = "scenario_options"
    scenario_class: ClassVar[type[BaseScenario]]
    scenario_options: ClassVar[dict[str, Any]] = {}

    def run_scenario(self, **settings: Any) -> tuple[nn.Module, dict[str, Any], ScenarioContext, ScenarioRecorder]:
        from autoprune.host import instantiate

        scenario = instantiate(self.scenario_class, self.scenario_options)
        ctx, rec = scenario_context(options=scenario.options, **settings)
        model, metrics = scenario.run(ctx)
        return model, metrics, ctx, rec

    def test_returns_the_pruned_model_and_its_target_metrics(self) -> None:
        model, metrics, ctx, rec = self.run_scenario()
        prunes = rec.of("prune")
        assert prunes, "the scenario never called ctx.prune"
        assert model is prunes[-1].result, "the scenario must return the model its last ctx.prune returned"
        assert set(metrics) >= {"target", "source"}, f"expected keys 'target' and 'source', got {sorted(metrics)}"
        evaluated = [c for c in rec.of("evaluate") if c.domain == ctx.target.spec and c.model is model]
        assert evaluated, "the scenario never called ctx.evaluate(model, ctx.target) on the model it returns"
        assert metrics["target"] == evaluated[-1].result, "metrics['target'] must be what ctx.evaluate returned"

    def test_reports_source_metrics_when_the_source_has_queries(self) -> None:
        model, metrics, ctx, rec = self.run_scenario(source_query=2)
        assert ctx.source is not None
        evaluated = [c for c in rec.of("evaluate") if c.domain == ctx.source.spec and c.model is model]
        assert evaluated and metrics["source"] == evaluated[-1].result, (
            "with source queries, metrics['source'] must be ctx.evaluate(model, ctx.source) of the returned model"
        )
        _, metrics, _, _ = self.run_scenario(source_query=0)
        assert metrics["source"] is None, (
            f"without source queries metrics['source'] must be None, got {metrics['source']}"
        )

    def test_runs_without_a_source_unless_it_declares_it_needs_one(self) -> None:
        if self.scenario_class.needs_source:
            pytest.skip("needs_source: the host refuses it up front when data.source is null")
        model, metrics, _, rec = self.run_scenario(with_source=False)
        assert rec.of("prune") and model is rec.of("prune")[-1].result
        assert metrics["source"] is None

    def test_uses_only_its_epochs(self) -> None:
        _, _, ctx, rec = self.run_scenario(epochs=3)
        for call in rec.of("prune") + rec.of("finetune"):
            assert call.epochs is not None and 0 <= call.epochs <= ctx.epochs, (
                f"ctx.{call.kind} was asked for {call.epochs} epochs; each call may use 0..ctx.epochs = {ctx.epochs}"
            )

    @pytest.mark.parametrize("adapted", [False, True])
    def test_extra_loss_terms_are_finite_scalars_that_train_the_student(self, adapted: bool) -> None:
        _, _, _, rec = self.run_scenario(adapted=adapted, distill=DistillSettings(logit=1.0, embedding=1.0))
        for call in rec.of("prune") + rec.of("finetune"):
            if call.extra_loss is None:
                continue
            value, student = loss_term_value(call.extra_loss, with_teacher=adapted)
            assert value.dim() == 0 and torch.isfinite(value), f"{call.kind}: the extra loss is not a finite scalar"
            value.backward()
            assert any(p.grad is not None for p in student.parameters()), (
                f"{call.kind}: no gradient reaches the student"
            )
