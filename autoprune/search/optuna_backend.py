"""The embedded default backend: an Optuna study stored in the run directory (or a shared database).

- Single objective: maximise target rank-1 (every policy is at the budget by projection).
- ``rank1+macs``: maximise rank-1 and minimise MACs together; the report holds the Pareto front.
- The study is warm-started with the uniform policy (and user policies), so the search can only
  improve on the paper's hand-picked uniform pruning.
- A trial killed mid-way (SIGKILL, power loss) is marked FAIL on the next run and retried.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from autoprune.errors import UserError
from autoprune.search.records import TrialRecord, metrics_summary
from autoprune.search.trial import SearchEnv, TrialPruned, TrialResult, format_error, objective_rank1

STUDY_NAME = "autoprune"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def make_sampler(name: str, seed: int, multi: bool) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        if multi:
            raise UserError("search.sampler cmaes is single-objective; use nsga2 or tpe with search.objectives rank1+macs")
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise UserError("search.sampler cmaes needs the 'cmaes' package: pip install cmaes") from None
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise UserError(f"unknown search.sampler {name!r}")


def make_pruner(name: str, multi: bool) -> optuna.pruners.BasePruner:
    if name == "none" or multi:  # Optuna prunes single-objective studies only
        return optuna.pruners.NopPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)


def storage_url(cfg: dict[str, Any], run_dir: Path) -> str | optuna.storages.BaseStorage:
    url = cfg["search"]["storage"]
    if url is None:
        return f"sqlite:///{(run_dir / 'study.db').resolve()}"
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = url[len("journal:"):]
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    if url.startswith(("sqlite:", "postgresql", "mysql")):
        # A heartbeat lets other workers fail a trial whose worker died, instead of waiting forever.
        return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=90)
    raise UserError(f"search.storage {redact(url)!r} is not a database URL or journal:PATH; "
                    f"use e.g. postgresql://user@host/db or journal:/shared/study.log")


def redact(url: str) -> str:
    """A storage URL without its password, for messages, logs and reports."""
    import re

    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_storage(cfg: dict[str, Any], run_dir: Path) -> optuna.storages.BaseStorage:
    try:
        return optuna.storages.get_storage(storage_url(cfg, run_dir))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot open the study storage {redact(str(cfg['search']['storage']))}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def _existing_trials(storage: optuna.storages.BaseStorage, name: str) -> int:
    try:
        return len(storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False))
    except KeyError:
        return 0


def open_study(cfg: dict[str, Any], storage: optuna.storages.BaseStorage) -> optuna.Study:
    multi = cfg["search"]["objectives"] == "rank1+macs"
    directions = ["maximize", "minimize"] if multi else ["maximize"]
    name = cfg["search"]["study_name"] or STUDY_NAME
    # A resumed (or second) process must not replay the first one's random draws: offset the seed.
    seed = cfg["seed"] + 7919 * _existing_trials(storage, name)
    if cfg["search"]["storage"] is not None:
        seed += os.getpid()  # workers started together on a shared study must sample differently
    try:
        return optuna.create_study(storage=storage, study_name=name,
                                   sampler=make_sampler(cfg["search"]["sampler"], seed, multi),
                                   pruner=make_pruner(cfg["search"]["pruner"], multi), directions=directions,
                                   load_if_exists=True)
    except UserError:
        raise
    except ValueError as exc:
        raise UserError(f"the study in {redact(str(cfg['search']['storage'] or 'the run directory'))} does not match this config "
                        f"({exc}); use another --out or search.study_name") from None
    except Exception as exc:
        raise UserError(f"cannot open the study storage {redact(str(cfg['search']['storage']))}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def record_of(trial: optuna.trial.FrozenTrial) -> TrialRecord:
    data = dict(trial.user_attrs.get("record", {}))
    data.update(number=trial.number, state=trial.state.name, values=dict(trial.params))
    if trial.state == TrialState.FAIL and not data.get("error"):
        data["error"] = "interrupted (the process stopped during this trial); retried"
    return TrialRecord.from_json(data)


class OptunaBackend:
    """Runs trials in this process against a (possibly shared) Optuna study."""

    def __init__(self, env: SearchEnv, run_dir: Path, on_trial: Callable[[TrialRecord], None] | None = None,
                 save_model: Callable[[int, TrialResult], str] | None = None) -> None:
        self.env, self.run_dir = env, run_dir
        self.on_trial = on_trial
        self.save_model = save_model
        self.storage = open_storage(env.cfg, run_dir)
        self.study = open_study(env.cfg, self.storage)
        self.multi = env.cfg["search"]["objectives"] == "rank1+macs"

    def _recover_interrupted(self) -> None:
        """Fail the trials a killed process left RUNNING, and queue their policies again."""
        if self.env.cfg["search"]["storage"] is not None:
            return  # shared storages: the heartbeat fails stale trials of dead workers
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self.storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            self.study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)

    def _warm_start(self) -> None:
        space = self.env.space
        uniform = space.uniform_values()
        if self.multi:
            uniform["macs_ratio"] = self.env.macs_ratio_range()[1]
        queued = [uniform]
        for policy in self.env.cfg["search"]["warm_start"]:
            if not isinstance(policy, dict) or set(policy) - set(space.params) - {"macs_ratio"}:
                raise UserError(f"search.warm_start entries must map search-space parameters to values; "
                                f"unknown: {sorted(set(policy) - set(space.params))[:3]}")
            queued.append({**uniform, **policy})
        for params in queued:
            self.study.enqueue_trial(params, skip_if_exists=True)

    def objective(self, trial: optuna.Trial) -> float | tuple[float, float]:
        space = self.env.space
        values = {}
        for p in space.params.values():
            if p.fixed is None:
                values[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step)
        if self.multi:  # Pareto mode: the MACs target is searched too, up to the budget
            lo, hi = self.env.macs_ratio_range()
            values["macs_ratio"] = trial.suggest_float("macs_ratio", lo, hi)

        def report(step: int, rank1: float) -> None:
            if not self.multi:
                trial.report(rank1, step)
                if trial.should_prune():
                    raise TrialPruned(f"stopped early at epoch {step} (target rank-1 {rank1:.3f})")

        screening = self.env.cfg["search"]["screening"]
        screen = None
        if screening["enabled"] and not self.multi:
            def screen(score: float) -> None:
                from autoprune.search.screening import keep_candidate

                trial.set_user_attr("screen_score", score)
                previous = [t.user_attrs["screen_score"] for t in self.study.get_trials(deepcopy=False)
                            if t.number != trial.number and "screen_score" in t.user_attrs]
                if not keep_candidate(score, previous, screening["keep_fraction"], screening["candidates"]):
                    raise TrialPruned(f"screened out: adaptive-BN rank-1 {score:.3f} is not in the best "
                                      f"{screening['keep_fraction']:.0%} of {len(previous)} candidates")

        start = time.perf_counter()
        try:
            result = self.env.run(values, report=report, screen=screen)
        except TrialPruned as exc:
            trial.set_user_attr("record", {"error": str(exc), "seconds": time.perf_counter() - start})
            raise optuna.TrialPruned(str(exc)) from None
        except Exception as exc:
            trial.set_user_attr("record", {"error": format_error(exc), "seconds": time.perf_counter() - start})
            raise
        model_path = self.save_model(trial.number, result) if self.save_model else None
        record = {"policy": result.policy, "counts": result.counts, "macs": result.macs, "params": result.params,
                  "macs_ratio": result.macs_ratio, "target": metrics_summary(result.metrics.get("target")),
                  "target_val": metrics_summary(result.metrics["target"].get("val")),
                  "source": metrics_summary(result.metrics.get("source")), "seconds": result.seconds,
                  "train_seconds": result.train_seconds, "eval_seconds": result.eval_seconds,
                  "model": model_path, "error": None}
        trial.set_user_attr("record", record)
        rank1 = objective_rank1(result.metrics)
        return (rank1, float(result.macs)) if self.multi else rank1

    def run(self, n_trials: int, timeout: float | None = None) -> list[TrialRecord]:
        self._recover_interrupted()
        self._warm_start()

        def callback(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
            if self.on_trial:
                self.on_trial(record_of(frozen))
            done = len(study.get_trials(deepcopy=False, states=FINISHED))
            if done >= n_trials:
                study.stop()

        done = len(self.study.get_trials(deepcopy=False, states=FINISHED))
        if done < n_trials:
            # catch=(Exception,): a failing trial is recorded as FAIL and the search goes on.
            self.study.optimize(self.objective, n_trials=n_trials - done, timeout=timeout,
                                catch=(Exception,), callbacks=[callback])
        return self.records()

    def records(self) -> list[TrialRecord]:
        return [record_of(t) for t in self.study.get_trials(deepcopy=False)]
