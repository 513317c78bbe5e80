"""One trial: project sampled ratios onto the budget, run the scenario, measure the result.

``SearchEnv`` holds what every trial shares (data, the source-trained baseline, the cost model, the
plugins); it is built once per process, so a backend only hands it ratios.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from autoprune.config import RunSettings
from autoprune.criteria import CriterionContext
from autoprune.data.domain import Domain
from autoprune.data.loading import IdentitySampler, augment, normalize
from autoprune.distill import DistillSettings
from autoprune.engine.evaluate import evaluate_domain
from autoprune.engine.losses import cross_entropy_ls
from autoprune.engine.train import EpochCallback, LossTerm, TrainSettings, fit
from autoprune.pruning.budget import Budget, check_feasible, min_widths, project
from autoprune.pruning.flops import CostModel, count_macs
from autoprune.pruning.groups import PruningGraph
from autoprune.scenarios import ScenarioContext
from autoprune.search.records import objective, score
from autoprune.search.space import SearchSpace, build_space
from autoprune.strategies import StrategyContext


class TrialPruned(Exception):
    """Raised by a reporter when the backend decides to stop a poor trial early."""


Reporter = Callable[[int, float], None]  # (step, target rank-1) -> may raise TrialPruned


@dataclass
class TrialResult:
    counts: dict[str, int]
    policy: dict[str, float]  # keep ratio per group (kept / original channels)
    macs: int
    params: int
    macs_ratio: float
    metrics: dict[str, Any]  # {"target": {...}, "source": {...}?}
    seconds: float
    model: nn.Module | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0  # inside the training loop (forward/backward/step)
    eval_seconds: float = 0.0  # feature extraction and ranking


class SearchEnv:
    """Everything trials share: the baseline, the domains, the cost model, the budget, the space and the plugins."""

    def __init__(
        self,
        cfg: dict[str, Any],
        host: Any,
        device: torch.device,
        source: Domain | None,
        target: Domain,
        baseline: nn.Module,
        progress: bool = False,
    ) -> None:
        self.cfg, self.host, self.device = cfg, host, device
        self.config = RunSettings.from_config(cfg)  # typed and frozen: what trials and backends read
        self.search, self.trial = self.config.search, self.config.trial
        self.source, self.target = source, target
        self.baseline = baseline.cpu().eval()
        self.progress = progress
        self.input_size = self.config.model.input_size
        graph = PruningGraph(copy.deepcopy(self.baseline), self.input_size)
        self.group_names = list(graph.groups)
        self.cost = CostModel(graph)
        self.base_macs, self.base_params = count_macs(self.baseline, self.input_size)
        self.budget = Budget.from_config(self.config.budget, self.base_macs)
        self.end_to_end = None  # times projected models on this machine under a latency budget
        if self.config.budget.latency_ms is not None:
            from autoprune.pruning.latency import latency_budget

            self.budget, self.end_to_end = latency_budget(cfg, graph, self.budget, device.type, progress)
        check_feasible(self.cost, self.budget)
        self.space: SearchSpace = build_space(
            self.search.space, self.group_names, self.config.budget.min_keep, self.config.budget.max_keep
        )
        t = self.trial
        # Resolve plugin names and options now: a typo is a config error before any training, not a failed trial.
        self.criterion_cls = host.get("criterion", t.criterion)
        self.strategy_cls = host.get("strategy", t.strategy)
        self.scenario_cls = host.get("scenario", t.scenario)
        for kind in ("criterion", "strategy", "scenario"):
            host.options(kind, t.plugin(kind), self.config.plugins)
        # The target-adapted unpruned model, once computed (autoprune.search.adapt): ScenarioContext.adapted / .teacher.
        self.adapt_epochs: int = t.adapt_epochs
        self.distill = DistillSettings.from_config(cfg)
        self.adapted: nn.Module | None = None
        self.teacher: nn.Module | None = None

    def new(self, kind: str) -> Any:
        """A fresh instance of the configured criterion, strategy or scenario, with its options."""
        return self.host.create(kind, self.trial.plugin(kind), self.config.plugins)

    def plugins_used(self) -> list[dict[str, Any]]:
        """Provenance of every plugin this search runs: name, kind, distribution, version, options."""
        from autoprune.data import parse_spec

        used = [(kind, self.trial.plugin(kind)) for kind in ("criterion", "strategy", "scenario")]
        used += [("dataset", parse_spec(spec)[0]) for spec in self.config.data.specs()]
        used.append(("backbone", self.config.model.arch))
        unique = list(dict.fromkeys(used))
        return [self.host.provenance(kind, name, self.config.plugins) for kind, name in unique]

    def set_adapted(self, model: nn.Module) -> None:
        """Share ``model`` (the adapted unpruned model) with every trial: a copy per trial, one frozen teacher."""
        self.adapted = model.cpu().eval()
        self.teacher = copy.deepcopy(self.adapted).to(self.device).eval().requires_grad_(False)

    def adapt(
        self,
        model: nn.Module,
        resume: dict[str, Any] | None = None,
        checkpoint: Callable[[dict[str, Any]], None] | None = None,
    ) -> nn.Module:
        """Fine-tune ``model`` (a copy of the baseline) on the target for ``trial.adapt_epochs``, seeded as a trial is.

        ``resume`` (with the partially adapted ``model``) continues an interrupted adaptation from its checkpoint.
        """
        torch.manual_seed(self.config.seed)
        fit(
            model,
            self.target.train,
            self.settings(self.adapt_epochs),
            self.device,
            desc="adapt",
            progress=self.progress,
            resume=resume,
            checkpoint=checkpoint,
        )
        return model.cpu().eval()

    # -- services handed to plugins ------------------------------------------------------------
    def settings(self, epochs: int) -> TrainSettings:
        return TrainSettings.from_config(self.cfg, epochs=epochs, lr=self.trial.lr)

    def criterion_context(self, graph: PruningGraph, domain: Domain) -> CriterionContext:
        s = self.settings(1)
        store = domain.train
        sampler = IdentitySampler(store.pids.tolist(), s.batch_size, s.num_instances, seed=self.config.seed)
        gen = torch.Generator().manual_seed(self.config.seed)
        device = self.device

        def batches(n: int):
            for idx in sampler.batches(0)[:n]:
                yield augment(normalize(store.get(idx)), gen).to(device), store.pids[idx].to(device)

        def loss(model: Any, batch: Any) -> torch.Tensor:  # model: a ReIDNet
            x, y = batch
            if model.classifier.out_features != domain.num_classes:
                model.reset_classifier(domain.num_classes)
            logits, _ = model(x)
            return cross_entropy_ls(logits, y, s.label_smoothing)

        return CriterionContext(
            graph=graph,
            device=device,
            batches=batches,
            loss=loss,
            num_batches=self.trial.criterion_batches,
            seed=self.config.seed,
        )

    def evaluate(self, model: nn.Module, domain: Domain) -> dict[str, Any]:
        """Test-split metrics, with the validation split's under ``"val"`` when the domain has one."""
        precision = self.config.precision
        metrics = evaluate_domain(model, domain.query, domain.gallery, self.device, precision=precision)
        if domain.val_query is not None and domain.val_gallery is not None:
            metrics["val"] = evaluate_domain(
                model, domain.val_query, domain.val_gallery, self.device, precision=precision
            )
        return metrics

    def evaluate_val(self, model: nn.Module, domain: Domain) -> dict[str, Any]:
        """What the search optimises: the validation split if there is one, else the test split."""
        precision = self.config.precision
        if domain.val_query is not None and domain.val_gallery is not None:
            return evaluate_domain(model, domain.val_query, domain.val_gallery, self.device, precision=precision)
        return evaluate_domain(model, domain.query, domain.gallery, self.device, precision=precision)

    # -- one trial -----------------------------------------------------------------------------
    def counts_for(self, values: dict[str, float]) -> dict[str, int]:
        """Channel counts for sampled values; a ``macs_ratio`` value (Pareto mode) sets a lower budget."""
        budget = self.budget
        if "macs_ratio" in values:
            budget = dataclasses.replace(budget, macs=min(budget.macs, int(values["macs_ratio"] * self.base_macs)))
        ratios = self.space.ratios(values)
        counts = project(self.cost, ratios, budget)
        if self.end_to_end is not None and budget.latency_ms is not None:  # measured, not only predicted
            counts = self.end_to_end.tighten(
                counts,
                lambda ms: project(self.cost, ratios, dataclasses.replace(budget, latency_ms=ms)),
                budget.latency_ms,
            )
        return counts

    def macs_ratio_range(self) -> tuple[float, float]:
        """What Pareto mode samples: from just above the smallest feasible model up to the budget."""
        floor = self.cost.macs(min_widths(self.cost, self.budget))
        hi = self.budget.macs / self.base_macs
        return min(hi, max(floor / self.base_macs * 1.05, hi / 4)), hi

    def global_values(self) -> dict[str, float]:
        """Search-space values whose projection is (close to) the global-ranking policy at the budget.

        The ``global`` strategy's widths (one ranking of all channels by ``trial.criterion``, normalised per
        group) as keep ratios, averaged over the groups a parameter sets and kept inside its range: a warm
        start for the search as strong as the global baseline it is compared with.
        """
        from autoprune.pruning.budget import global_widths
        from autoprune.pruning.surgery import score_groups

        model = copy.deepcopy(self.baseline).to(self.device)
        graph = PruningGraph(model, self.input_size)
        scores = score_groups(model, self.new("criterion"), self.criterion_context(graph, self.target))
        widths = global_widths(scores, graph.widths(), self.cost, self.budget)
        values = {}
        for p in self.space.params.values():
            if p.fixed is not None:
                continue
            v = sum(widths[g] / self.cost.base_widths[g] for g in p.groups) / len(p.groups)
            v = min(p.high, max(p.low, v))
            if p.step:
                v = min(p.high, p.low + round((v - p.low) / p.step) * p.step)
            values[p.name] = round(v, 6)
        return values

    def screen_score(self, counts: dict[str, int]) -> float:
        """Adaptive-BN score of a policy: prune a copy once, re-estimate BatchNorm on target batches, score."""
        from autoprune.pruning.surgery import prune_to_counts, score_groups
        from autoprune.search.screening import adaptive_bn

        model = copy.deepcopy(self.baseline).to(self.device)
        graph = PruningGraph(model, self.input_size)
        scores = score_groups(model, self.new("criterion"), self.criterion_context(graph, self.target))
        prune_to_counts(graph, counts, scores)
        s = self.settings(1)
        adaptive_bn(
            model,
            self.target.train,
            self.device,
            batches=self.search.screening.batches,
            batch_size=s.batch_size,
            num_instances=s.num_instances,
            seed=self.config.seed,
        )
        return float(self.evaluate_val(model, self.target)["rank1"])

    def run(
        self,
        values: dict[str, float],
        report: Reporter | None = None,
        epochs: int | None = None,
        counts: dict[str, int] | None = None,
        screen: Callable[[float], None] | None = None,
    ) -> TrialResult:
        """Prune a fresh copy of the baseline (or the adapted model) to the projected policy, run the scenario.

        ``screen(score)``, if given, sees the candidate's adaptive-BN score first and may raise
        TrialPruned to skip its fine-tuning.
        """
        start = time.perf_counter()
        torch.manual_seed(self.config.seed)  # same noise for every trial: policies are compared fairly
        counts = dict(counts) if counts is not None else self.counts_for(values)
        if screen is not None:
            screen(self.screen_score(counts))
            torch.manual_seed(self.config.seed)
        epochs = self.trial.finetune_epochs if epochs is None else epochs
        services = TrialServices(self, counts, report)
        scenario = self.new("scenario")
        ctx = ScenarioContext(
            model=copy.deepcopy(self.baseline).to(self.device),
            source=self.source,
            target=self.target,
            epochs=epochs,
            prune=services.prune,
            finetune=services.finetune,
            evaluate=services.evaluate,
            teacher=self.teacher,
            adapted=copy.deepcopy(self.adapted).to(self.device) if self.adapted is not None else None,
            adapt_epochs=self.adapt_epochs,
            distill=self.distill,
            options=scenario.options,
        )
        with torch.enable_grad():  # restores the grad mode on exit, whatever plugin code set it to
            model, metrics = scenario.run(ctx)
        rank1 = objective_rank1(metrics, self.search.objective)
        if not math.isfinite(rank1):
            raise RuntimeError("target rank-1 is not finite")
        model = model.cpu().eval()
        macs, params = count_macs(model, self.input_size)
        counts = services.counts
        self._check_budget(counts, macs)
        policy = {n: round(c / self.cost.base_widths[n], 4) for n, c in counts.items()}
        return TrialResult(
            counts,
            policy,
            macs,
            params,
            macs / self.base_macs,
            metrics,
            time.perf_counter() - start,
            model,
            services.history,
            services.train_seconds,
            services.eval_seconds,
        )

    def _check_budget(self, counts: dict[str, int], macs: int) -> None:
        """A pruned model over the MACs or the predicted-latency budget is a failed trial, never a result."""
        if not any(c < self.cost.base_widths[n] for n, c in counts.items()):
            return  # the unpruned reference is over the budget by definition
        if macs > self.budget.macs:
            raise RuntimeError(f"pruned model has {macs} MACs, above the budget {self.budget.macs}")
        latency = self.budget.latency
        if latency is not None and self.budget.latency_ms is not None:
            predicted = latency.predict_ms(counts)
            if predicted > self.budget.latency_ms * (1 + 1e-9):
                raise RuntimeError(
                    f"pruned model is predicted at {predicted:.3f} ms, above the budget {self.budget.latency_ms} ms"
                )

    def unpruned(self, epochs: int | None = None) -> TrialResult:
        """The baseline through the same scenario with nothing pruned: what a pruned model is compared with."""
        return self.run({}, counts=dict(self.cost.base_widths), epochs=epochs)


class TrialServices:
    """The host services one trial hands its scenario (``prune``, ``finetune``, ``evaluate``), and what they count.

    ``counts`` is the trial's policy; a strategy that chooses its own widths (``follows_policy = False``)
    replaces it with the widths it reached. Target fine-tuning reports validation rank-1 after every epoch
    (``history``, and ``report`` for the backend's early stopping) when ``trial.eval_every_epoch`` is set.
    """

    def __init__(self, env: SearchEnv, counts: dict[str, int], report: Reporter | None) -> None:
        self.env, self.counts, self.report = env, counts, report
        self.history: list[dict[str, Any]] = []
        self.train_seconds = 0.0  # inside the training loop, evaluation excluded
        self.eval_seconds = 0.0
        self._step = 0

    def evaluate(self, model: nn.Module, domain: Domain) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            return self.env.evaluate(model, domain)
        finally:
            self.eval_seconds += time.perf_counter() - t0

    def finetune(self, model: nn.Module, domain: Domain, epochs: int, extra_loss: LossTerm | None = None) -> None:
        """Plain fine-tuning of ``model`` in place (no pruning)."""
        if epochs:
            self._fit(model, domain, epochs, extra_loss=extra_loss)

    def prune(self, model: nn.Module, domain: Domain, epochs: int, extra_loss: LossTerm | None = None) -> nn.Module:
        """Prune ``model`` in place with the configured strategy and criterion; returns it."""
        env = self.env
        if self.counts == env.cost.base_widths:  # the unpruned reference: same fine-tuning, no strategy at all
            self.finetune(model, domain, epochs, extra_loss=extra_loss)
            return model
        graph = PruningGraph(model, env.input_size)

        def finetune(
            m: nn.Module,
            n_epochs: int,
            on_epoch_end: EpochCallback | None = None,
            on_step_end: Callable[[nn.Module], None] | None = None,
        ) -> list:
            return self._fit(m, domain, n_epochs, on_epoch_end, on_step_end, extra_loss)

        sctx = StrategyContext(
            graph=graph,
            counts=self.counts,
            criterion=env.new("criterion"),
            criterion_context=lambda: env.criterion_context(graph, domain),
            finetune=finetune,
            epochs=epochs,
            cost=env.cost,
            budget=env.budget,
        )
        out = env.new("strategy").run(model, sctx)
        widths = graph.widths()
        if not env.strategy_cls.follows_policy:
            self.counts.clear()
            self.counts.update(widths)
        elif widths != self.counts:
            wrong = [n for n in self.counts if widths.get(n) != self.counts[n]][:3]
            raise RuntimeError(
                f"strategy {env.strategy_cls.name!r} left groups {wrong} at other widths than the policy asks"
            )
        return out

    def _fit(
        self,
        model: nn.Module,
        domain: Domain,
        epochs: int,
        on_epoch_end: EpochCallback | None = None,
        on_step_end: Callable[[nn.Module], None] | None = None,
        extra_loss: LossTerm | None = None,
    ) -> list:
        env = self.env

        def epoch_end(epoch: int, m: nn.Module) -> None:
            if on_epoch_end is not None:
                on_epoch_end(epoch, m)
            if domain is env.target and env.trial.eval_every_epoch and self.report is not None:
                self._report_epoch(m)

        t0, eval_before = time.perf_counter(), self.eval_seconds
        try:
            return fit(
                model,
                domain.train,
                env.settings(epochs),
                env.device,
                on_epoch_end=epoch_end,
                on_step_end=on_step_end,
                desc="finetune",
                progress=env.progress,
                extra_loss=extra_loss,
                teacher=env.teacher if extra_loss is not None else None,
            )
        finally:
            self.train_seconds += time.perf_counter() - t0 - (self.eval_seconds - eval_before)

    def _report_epoch(self, model: nn.Module) -> None:
        """Validation rank-1 after a target epoch, to the history and the backend (which may stop the trial)."""
        self._step += 1
        t0 = time.perf_counter()
        r1 = score(self.env.evaluate_val(model, self.env.target), self.env.search.objective)
        self.eval_seconds += time.perf_counter() - t0
        self.history.append({"step": self._step, "target_rank1": r1})
        assert self.report is not None
        self.report(self._step, r1)


def objective_rank1(metrics: dict[str, Any], kind: str = "rank1") -> float:
    """The number a search maximises: the target validation split's ``search.objective`` (rank-1 by
    default; the test split's without a validation split)."""
    target = metrics["target"]
    return float(cast(float, objective(target.get("val"), target, kind)))


def format_error(exc: BaseException) -> str:
    """One line for report.json: the exception and where in plugin or engine code it came from."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" ({tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno} in {tb[-1].name})" if tb else ""
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {msg}{where}"
