"""The embedded default backend: an Optuna study stored in the run directory (or a shared database).

- Single objective: maximise target rank-1 (every policy is at the budget by projection).
- ``rank1+macs``: maximise rank-1 and minimise MACs together; the report holds the Pareto front.
- The study is warm-started with the uniform policy (and user policies), so the search can only
  improve on the paper's hand-picked uniform pruning.
- A trial the process did not finish (SIGKILL, power loss, Ctrl-C) is marked FAIL with an
  "interrupted" error and its policy is queued again; it does not count toward ``search.n_trials``.
  A trial that failed on its own (an exception, NaN loss, out of memory) is FAIL and does count:
  retrying it would fail again.
- Workers sharing a study claim trials in the storage: a worker creates its trial, then runs it only if
  fewer than ``search.n_trials`` trials that hold a place come before it (see :meth:`OptunaBackend._claim`);
  otherwise it gives the trial back (FAIL, ``given_back``: neither counted, retried nor reported) and stops.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import TrialState

from autoprune.config import RunSettings, SearchSettings, redact
from autoprune.dashboard import dashboard_attrs
from autoprune.errors import UserError, disk_full
from autoprune.rundir import own_file
from autoprune.search import records
from autoprune.search.backend import make_sampler, warm_start_policies
from autoprune.search.records import TrialRecord, result_record
from autoprune.search.trial import (
    SearchEnv,
    TrialPruned,
    TrialResult,
    format_error,
    objective_rank1,
)

STUDY_NAME = "autoprune"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# User attribute of a trial the process stopped in (killed or Ctrl-C): FAIL, retried, not counted.
INTERRUPTED = "interrupted"
INTERRUPTED_ERROR = "interrupted: the process stopped during this trial; its policy is run again"
# User attribute of a trial a worker created but did not run, because the study already held n_trials
# trials before it: FAIL, and ignored by the count, the retries and the report.
GIVEN_BACK = "given_back"


class GivenBack(Exception):
    """Raised by the objective for a trial the study has no room for; the worker then stops."""


def given_back(t: optuna.trial.FrozenTrial) -> bool:
    return bool(t.user_attrs.get(GIVEN_BACK))


def counted(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Trials that count toward ``search.n_trials``: finished, except those the process was stopped in
    and those a worker gave back."""
    return sum(t.state in FINISHED and not t.user_attrs.get(INTERRUPTED) and not given_back(t) for t in trials)


def holds_a_place(t: optuna.trial.FrozenTrial) -> bool:
    """Counted, or going to be: running, or queued (WAITING) and run before any later trial."""
    return t.state in (TrialState.RUNNING, TrialState.WAITING) or counted([t]) == 1


def make_pruner(
    name: str, multi: bool, max_epochs: int = 0, reduction_factor: int = 2, min_resource: int = 2
) -> optuna.pruners.BasePruner:
    """Early stopping over the trials' fine-tuning epochs (the steps a trial reports, from 1).

    No pruner stops a trial before epoch ``min_resource`` (``search.min_resource``): just after pruning, the
    first epoch ranks policies almost at random (docs/decisions.md). Nor at its last epoch: the backend does
    not ask then (a rung there would discard training already paid for). ``successive_halving`` and ``hyperband``
    are the multi-fidelity searches: every trial gets ``min_resource`` epochs, and only the best
    ``1/reduction_factor`` of those at each rung (epochs m, m*r, m*r^2, ...) train on, so a search sees more
    policies for the same compute; the decisions are made on the validation split.
    """
    if name == "none" or multi:  # Optuna prunes single-objective studies only
        return optuna.pruners.NopPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=min_resource,
            max_resource=max(min_resource, max_epochs) if max_epochs else "auto",
            reduction_factor=reduction_factor,
        )
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=reduction_factor)
    # Optuna's warm-up: no decision while step < n_warmup_steps, so the first one is at epoch min_resource.
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=min_resource)


def storage_url(cfg: dict[str, Any], run_dir: Path) -> str | optuna.storages.BaseStorage:
    url = SearchSettings.from_config(cfg).storage
    if url is None:
        return f"sqlite:///{own_file(run_dir, 'study.db').resolve()}"  # SQLite would write through a link
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = url[len("journal:") :]
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    if url.startswith(("sqlite:", "postgresql", "mysql")):
        if url.startswith("postgresql://") and _has_module("psycopg2") and not _has_module("psycopg"):
            # SQLAlchemy 2.1 defaults postgresql:// to psycopg 3; use psycopg2 when only it is installed.
            url = "postgresql+psycopg2://" + url[len("postgresql://") :]
        # A heartbeat lets other workers fail a trial whose worker died, instead of waiting forever.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=90)
    raise UserError(
        f"search.storage {redact(url)!r} is not a database URL or journal:PATH; "
        f"use e.g. postgresql://user@host/db or journal:/shared/study.log"
    )


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _storage_error(cfg: dict[str, Any], exc: Exception) -> UserError:
    """One line naming the storage (password hidden, also inside the driver's message) and the cause."""
    url = str(SearchSettings.from_config(cfg).storage)
    if isinstance(exc, ImportError):
        scheme = url.split("://", 1)[0]
        reason = (
            f"the database driver for {scheme}:// is not installed; install it (e.g. pip install "
            f"psycopg2-binary for postgresql) or use journal:PATH"
        )
    else:
        reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
    return UserError(
        f"cannot open the study storage {redact(url)}: {redact(reason, url)}; "
        f"check search.storage and that the database is reachable"
    )


def open_storage(cfg: dict[str, Any], run_dir: Path) -> optuna.storages.BaseStorage:
    for attempt in range(4):
        try:
            return optuna.storages.get_storage(storage_url(cfg, run_dir))
        except UserError:
            raise
        except Exception as exc:
            # Two workers creating Optuna's tables at once on a fresh database: one loses the race; retry.
            if type(exc).__name__ in ("IntegrityError", "ProgrammingError") and attempt < 3:
                time.sleep(0.5 + random.random())
                continue
            raise _storage_error(cfg, exc) from None
    raise AssertionError("unreachable")


def _existing_trials(storage: optuna.storages.BaseStorage, name: str) -> int:
    try:
        return len(storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False))
    except KeyError:
        return 0


def sampler_seed(seed: int, existing_trials: int, pid: int | None) -> int:
    """The sampler's seed: ``seed`` for a new study in one process; otherwise one derived from it, so that a
    resumed process does not replay the first one's draws and workers started together on a shared study
    (``pid``) sample differently. Hashed into [0, 2**32), the range every sampler accepts, whatever the seed."""
    if existing_trials == 0 and pid is None:
        return seed
    digest = hashlib.sha256(f"{seed}:{existing_trials}:{pid}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def open_study(cfg: dict[str, Any], storage: optuna.storages.BaseStorage) -> optuna.Study:
    settings = RunSettings.from_config(cfg)
    search = settings.search
    multi = search.multi_objective
    directions: list[Literal["maximize", "minimize"]] = ["maximize", "minimize"] if multi else ["maximize"]
    name = search.study_name or STUDY_NAME
    seed = sampler_seed(
        settings.seed, _existing_trials(storage, name), os.getpid() if search.storage is not None else None
    )
    try:
        return optuna.create_study(
            storage=storage,
            study_name=name,
            sampler=make_sampler(search.sampler, seed, multi),
            pruner=make_pruner(
                search.pruner, multi, settings.trial.finetune_epochs, search.reduction_factor, search.min_resource
            ),
            directions=directions,
            load_if_exists=True,
        )
    except UserError:
        raise
    except ValueError as exc:
        raise UserError(
            f"the study in {redact(str(search.storage or 'the run directory'))} does not match this config "
            f"({exc}); use another --out or search.study_name"
        ) from None
    except Exception as exc:
        raise _storage_error(cfg, exc) from None


def record_of(trial: optuna.trial.FrozenTrial) -> TrialRecord:
    """An Optuna trial's record: what the objective stored in its user attributes (see :func:`records.record_of`)."""
    stored = trial.user_attrs.get("record", {})
    fields = {}
    if trial.state == TrialState.FAIL and not stored.get("error"):
        fields["error"] = (
            INTERRUPTED_ERROR
            if trial.user_attrs.get(INTERRUPTED)
            else "failed, no error recorded (the process running it may have stopped)"
        )
    return records.record_of(trial.number, trial.state.name, trial.params, stored, **fields)


class OptunaBackend:
    """Runs trials in this process against a (possibly shared) Optuna study."""

    def __init__(
        self,
        env: SearchEnv,
        run_dir: Path,
        on_trial: Callable[[TrialRecord], None] | None = None,
        save_model: Callable[[int, TrialResult], str] | None = None,
    ) -> None:
        self.env, self.run_dir = env, run_dir
        self.on_trial = on_trial
        self.save_model = save_model
        self.storage = open_storage(env.cfg, run_dir)
        self.study = open_study(env.cfg, self.storage)
        self.search = env.search  # the typed section the environment already holds
        self.multi = self.search.multi_objective
        self._disk_full: OSError | None = None
        self._failed = False
        self._n_trials = self.search.n_trials
        # No pruner decides at a trial's last epoch (Ray's ASHA neither): its training is paid for, and as a
        # complete trial it informs the sampler and may enter the final round.
        self.last_epoch = env.trial.finetune_epochs

    def _recover_interrupted(self) -> None:
        """Fail the trials a killed process left RUNNING, and queue the policies of every interrupted trial again.

        A Ctrl-C'd trial is already FAIL (marked interrupted by :meth:`objective`); it is queued here too.
        Each interrupted trial is queued once: its retry carries ``retry_of``.
        """
        if self.search.storage is None:  # shared storages: the heartbeat fails dead workers' trials
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                self.storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
                self.storage.set_trial_user_attr(t._trial_id, "record", {"error": INTERRUPTED_ERROR})
                self.storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        trials = self.study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("retry_of") for t in trials}
        for t in trials:
            if t.state == TrialState.FAIL and t.user_attrs.get(INTERRUPTED) and t.number not in retried:
                self.study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
                if self.on_trial:  # say so: the trial ran in a process that is gone
                    self.on_trial(record_of(t))

    def _warm_start(self) -> None:
        with_global = self.search.warm_start_global and not self.multi
        for params in warm_start_policies(self.env, self.search, with_global):
            self.study.enqueue_trial(params, skip_if_exists=True)

    def _claim(self, trial: optuna.Trial) -> None:
        """Run ``trial`` only if fewer than ``n_trials`` trials that hold a place come before it; else give it back.

        Why this is exact under any timing: the storage numbers trials in the order it creates them (Optuna
        locks the study row in a database; a journal is one ordered log), and every trial is created RUNNING
        or WAITING before its worker reads the study. Of any n_trials + 1 trials, the one created last sees
        the others before it and gives itself back. A queued policy (the warm start, a retry) is given back
        too when it duplicates a policy before it (two workers queued it at once). A given-back policy is not
        queued again: the study had no room for it, and queuing it while full left a WAITING trial that held
        a place nobody ran (seen with PostgreSQL: 18 of 20 trials, then 21 kept for 20 counted).
        """
        trials = self.storage.get_all_trials(self.study._study_id, deepcopy=False)
        mine = next(t for t in trials if t._trial_id == trial._trial_id)
        before = [t for t in trials if t.number < mine.number and holds_a_place(t)]
        fixed = mine.system_attrs.get("fixed_params")
        duplicate = fixed is not None and any(t.system_attrs.get("fixed_params") == fixed for t in before)
        if len(before) < self._n_trials and not duplicate:
            return
        trial.set_user_attr(GIVEN_BACK, True)
        raise GivenBack(f"trial {trial.number}: the study already holds {len(before)} trials")

    def _give_back_surplus(self) -> None:
        """Give back the queued policies that n_trials trials before them leave no room for.

        They are left when the study filled up before a worker reached them (more warm-start policies than
        n_trials, or policies queued by a worker that joined late). Each is taken the way Optuna takes a
        queued trial (WAITING -> RUNNING fails if another worker took it first), then given back."""
        trials = self.storage.get_all_trials(self.study._study_id, deepcopy=False)
        for t in trials:
            if t.state != TrialState.WAITING:
                continue
            if sum(holds_a_place(o) for o in trials if o.number < t.number) < self._n_trials:
                continue
            try:
                if not self.storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            self.storage.set_trial_user_attr(t._trial_id, GIVEN_BACK, True)
            self.storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)

    def _suggest(self, trial: optuna.Trial) -> dict[str, float]:
        """The trial's policy: the free keep ratios, and in Pareto mode the MACs target (up to the budget)."""
        values = {}
        for p in self.env.space.params.values():
            if p.fixed is None:
                values[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step)
        if self.multi:  # Pareto mode: the MACs target is searched too, up to the budget
            lo, hi = self.env.macs_ratio_range()
            values["macs_ratio"] = trial.suggest_float("macs_ratio", lo, hi)
        return values

    def _screener(self, trial: optuna.Trial) -> Callable[[float], None] | None:
        """``search.screening``: stop a candidate whose adaptive-BN score is not among the study's best."""
        screening = self.search.screening
        if not screening.enabled or self.multi:
            return None

        def screen(score: float) -> None:
            from autoprune.search.screening import keep_candidate

            trial.set_user_attr("screen_score", score)
            previous = [
                t.user_attrs["screen_score"]
                for t in self.study.get_trials(deepcopy=False)
                if t.number != trial.number and "screen_score" in t.user_attrs
            ]
            if not keep_candidate(score, previous, screening.keep_fraction, screening.candidates):
                raise TrialPruned(
                    f"screened out: adaptive-BN rank-1 {score:.3f} is not in the best "
                    f"{screening.keep_fraction:.0%} of {len(previous)} candidates"
                )

        return screen

    def objective(self, trial: optuna.Trial) -> float | tuple[float, float]:
        self._claim(trial)
        if self._failed:  # the failed trial's frames are gone now: give its memory back (out of memory, most likely)
            self._failed = False
            _release_memory(self.env.device)
        values = self._suggest(trial)

        def report(step: int, rank1: float) -> None:
            if not self.multi:
                trial.report(rank1, step)
                if step < self.last_epoch and trial.should_prune():
                    raise TrialPruned(f"stopped early at epoch {step} (validation {self.search.objective} {rank1:.3f})")

        start = time.perf_counter()
        try:
            result = self.env.run(values, report=report, screen=self._screener(trial))
        except TrialPruned as exc:
            trial.set_user_attr("record", {"error": str(exc), "seconds": time.perf_counter() - start})
            raise optuna.TrialPruned(str(exc)) from None
        except KeyboardInterrupt:
            # Not the policy's fault: FAIL now (Optuna), queued again and not counted on the next run.
            trial.set_user_attr(INTERRUPTED, True)
            trial.set_user_attr("record", {"error": INTERRUPTED_ERROR, "seconds": time.perf_counter() - start})
            raise
        except Exception as exc:
            if (full := disk_full(exc)) is not None:  # e.g. SQLite could not store an epoch's score
                self._stop_for_full_disk(trial, full)
                raise
            trial.set_user_attr("record", {"error": format_error(exc), "seconds": time.perf_counter() - start})
            self._failed = True
            raise
        try:
            model_path = self.save_model(trial.number, result) if self.save_model else None
        except OSError as exc:
            if (full := disk_full(exc)) is None:
                raise
            self._stop_for_full_disk(trial, full)
            raise
        record = result_record(result, model_path)
        trial.set_user_attr("record", record)
        for key, value in dashboard_attrs(record).items():  # what `autoprune dashboard` shows per trial
            trial.set_user_attr(key, value)
        rank1 = objective_rank1(result.metrics, self.search.objective)
        return (rank1, float(result.macs)) if self.multi else rank1

    def _stop_for_full_disk(self, trial: optuna.Trial, exc: OSError) -> None:
        """The disk, not the policy: stop the search (run() raises ``exc``) and run this policy again on resume."""
        self._disk_full = exc
        try:
            trial.set_user_attr(INTERRUPTED, True)
            trial.set_user_attr("record", {"error": f"{INTERRUPTED_ERROR} ({exc.strerror})"})
        except Exception as err:
            if disk_full(err) is None:
                raise
            # The study's own file is on the full disk: the trial stays RUNNING, which the next run retries too.

    def run(self, n_trials: int, timeout: float | None = None) -> list[TrialRecord]:
        self._n_trials = n_trials
        self._recover_interrupted()
        self._warm_start()

        shared = self.search.storage is not None

        def claimed(study: optuna.Study) -> int:
            """Finished trials, plus those other workers are running now (so workers stop at n_trials)."""
            if not shared:
                return counted(study.get_trials(deepcopy=False))
            if isinstance(self.storage, optuna.storages.RDBStorage):
                optuna.storages.fail_stale_trials(study)  # a dead worker's trial, past the heartbeat grace period
            trials = study.get_trials(deepcopy=False)
            return counted(trials) + sum(t.state == TrialState.RUNNING for t in trials)

        def callback(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
            if given_back(frozen):  # the study is full, unless a policy queued in the meantime still waits
                # A policy given back and queued again by another worker holds a place that no worker would
                # run if every worker stopped here (seen with PostgreSQL: 18 of 20 trials): run it first.
                waiting = any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False))
                if not waiting or claimed(study) >= n_trials:
                    study.stop()
                return
            if self.on_trial:
                self.on_trial(record_of(frozen))
            # Only saves creating a trial to give back: _claim is what keeps the count exact.
            if claimed(study) >= n_trials or self._disk_full is not None:
                study.stop()

        done = claimed(self.study)
        if done < n_trials:
            # Optuna logs a failed trial with its traceback; for a stopped process that is noise around our line.
            optimize_log = logging.getLogger("optuna.study._optimize")
            quiet = _QuietStops()
            optimize_log.addFilter(quiet)
            try:
                # catch=(Exception,): a failing trial is recorded as FAIL and the search goes on.
                self.study.optimize(
                    self.objective, n_trials=n_trials - done, timeout=timeout, catch=(Exception,), callbacks=[callback]
                )
            except Exception as exc:
                # Optuna could not store the trial's end (SQLite on the full disk) and raised an error of its own.
                if (full := self._disk_full or disk_full(exc)) is None:
                    raise
                raise full from None
            finally:
                optimize_log.removeFilter(quiet)
        if self._disk_full is not None:
            raise self._disk_full
        if counted(self.study.get_trials(deepcopy=False)) >= n_trials:
            self._give_back_surplus()
        return self.records()

    def records(self) -> list[TrialRecord]:
        return [record_of(t) for t in self.study.get_trials(deepcopy=False) if not given_back(t)]


class _QuietStops(logging.Filter):
    """Drops Optuna's two "trial failed" records of a Ctrl-C, a full disk (each reported in one line of ours)
    and a trial given back (not a failure); other failures keep their warning and traceback."""

    def __init__(self) -> None:
        super().__init__()
        self.quiet: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (KeyboardInterrupt, GivenBack)) or (exc is not None and disk_full(exc) is not None):
            self.quiet.add(message.split(" failed with parameters", 1)[0])  # "Trial 12"
            return False
        return message.split(" failed with value", 1)[0] not in self.quiet


def _release_memory(device: Any) -> None:
    """Collect garbage and, on CUDA, return cached blocks, so the next trial starts with the memory a fresh one has."""
    gc.collect()
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.empty_cache()
