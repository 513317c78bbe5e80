"""The cluster backend: the Optuna backend's trials, scheduled by Ray Tune on a Ray cluster (or a local Ray).

- Sampling: ``OptunaSearch`` over the same space, warm-started with the uniform policy (and
  ``search.warm_start``), so trial 0 is the uniform policy, numbered as the Optuna backend numbers it.
- Early stopping: ASHA on the per-epoch target rank-1 reports (FIFO for ``rank1+macs`` or
  ``search.pruner: none``); an ASHA-stopped trial is recorded as PRUNED.
- Workers rebuild the shared :class:`SearchEnv` once per process from the config; the baseline weights and
  the driver's target-adapted model (adapt once, computed before the search starts) travel through Ray's
  object store (``tune.with_parameters``), never in a pickled closure, so no worker adapts again and no
  shared disk is needed for them.
- A trial's final record (JSON) is its Tune checkpoint. The experiment lives in ``<run_dir>/ray``; running
  the same command again restores it: finished trials are kept, trials cut short are run again.

This module is imported only when ``search.backend`` is ``ray``: ``import autoprune`` never imports Ray.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoprune.config import RunSettings, SearchSettings, config_hash
from autoprune.errors import UserError
from autoprune.rundir import read_json, write_file
from autoprune.search import records
from autoprune.search.backend import make_sampler, warm_start_policies
from autoprune.search.ray_cluster import check_nodes, join
from autoprune.search.records import TrialRecord, objective, result_record
from autoprune.search.trial import SearchEnv, TrialResult, format_error, objective_rank1

try:
    import ray
    from optuna.distributions import FloatDistribution
    from ray import tune
    from ray.tune import Callback
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
    from ray.tune.search.optuna import OptunaSearch
except ImportError as _exc:  # pragma: no cover - ray[tune] is a declared dependency
    raise UserError(
        f"search.backend ray needs Ray Tune ({_exc}); install it with: pip install 'ray[tune]', "
        f"or use search.backend optuna"
    ) from None

EXPERIMENT = "autoprune"  # <run_dir>/ray/autoprune holds the Tune experiment
NUMBER = "autoprune_trial"  # config key carrying the Optuna trial number to the worker
RECORD = "record.json"  # the checkpoint's one file
RETRIES = 2  # times a trial is run again after its worker process or node died

# The backend whose run() is in progress in this (driver) process. Tune pickles its callbacks and searcher
# into the experiment for Tuner.restore; they find the live backend here instead of holding it.
_live: RayBackend | None = None


# -- worker side ---------------------------------------------------------------------------------------------
_ENV: dict[str, SearchEnv] = {}  # one SearchEnv per worker process, reused by the trials it runs


def _worker_env(cfg: dict[str, Any], baseline: Any, adapted: Any = None) -> SearchEnv:
    from autoprune.data.domain import load_domains
    from autoprune.engine.device import resolve_device
    from autoprune.host import get_host

    key = config_hash(cfg, tuple(cfg))
    if key not in _ENV:
        _ENV.clear()
        device = resolve_device(RunSettings.from_config(cfg).device)
        # The driver's domains: the target's validation split held out, so Ray trials are chosen on it too.
        source, target = load_domains(cfg)
        _ENV[key] = SearchEnv(cfg, get_host(), device, source, target, baseline, progress=False)
        if adapted is not None:  # the driver's adapted model (adapt once), shipped as the baseline is
            _ENV[key].set_adapted(adapted)
    return _ENV[key]


def unregistered_record(exp_dir: str | None, number: int) -> Path | None:
    """The record trial ``number`` saved in a run stopped before Tune's experiment state registered it.

    Ctrl-C can land between a trial's last report (which writes its checkpoint into the experiment) and the
    snapshot of the experiment's state; the restored trial then has no checkpoint and would train again,
    and ASHA could stop the rerun, leaving a finished trial's record beside a PRUNED trial. The newest
    ``checkpoint_*/record.json`` in the trial's own folder, inside the experiment, is that record."""
    if not exp_dir:
        return None
    root = Path(exp_dir).resolve()
    trial_dir = root / f"trial_{number:04d}"
    found = []
    for path in sorted(trial_dir.glob(f"checkpoint_*/{RECORD}")):
        real = path.resolve()  # a link planted in the experiment must not lead the worker out of it
        if real.is_relative_to(root) and real.is_file() and not path.is_symlink():
            found.append(real)
    return found[-1] if found else None


def _read_record(path: Path, number: int, search: SearchSettings) -> tuple[dict[str, float], bytes] | None:
    """A saved record's objective and MACs (what the trial reports again) and its bytes; None when it is not
    a record autoprune wrote (cut short, edited): the trial then runs again."""
    try:
        data = path.read_bytes()
        done = TrialRecord.from_json(json.loads(data) | {"number": number, "state": ""})
        rank1 = objective(done.target_val, done.target, search.objective)
        if rank1 is None or done.macs is None:
            return None
        values = {"rank1": float(rank1), "macs": float(done.macs)}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return values, data


def _replay(values: dict[str, float], data: bytes, *, replayed: bool) -> None:
    """Report a saved record again as the trial's final result, with the record as its checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, RECORD).write_bytes(data)
        # "replayed": the trial finished in the run that was stopped, so its line is not printed again.
        tune.report({**values, "final": True, "replayed": replayed}, checkpoint=tune.Checkpoint.from_directory(tmp))


def run_trial(
    config: dict[str, Any],
    *,
    cfg: dict[str, Any],
    baseline: Any,
    cwd: str,
    save_model: Callable[[int, TrialResult], str] | None,
    adapted: Any = None,
    exp_dir: str | None = None,
) -> None:
    """The Tune function trainable: one trial, reporting the objective (rank-1) after every target epoch."""
    from autoprune.engine.device import set_threads

    if os.path.isdir(cwd):
        os.chdir(cwd)  # Tune starts trials in their own folder; relative paths in the config mean the driver's
    settings = RunSettings.from_config(cfg)
    search = settings.search
    set_threads(settings.threads or max(1, int(search.ray.cpus_per_trial)))
    number = int(config[NUMBER])
    values = {k: float(v) for k, v in config.items() if k != NUMBER}
    multi = search.multi_objective
    previous = tune.get_checkpoint()
    saved = None
    if previous is not None:
        # Resumed after its record was saved (Ctrl-C came between the two): report it again, do not train again.
        with previous.as_directory() as d:
            saved = _read_record(Path(d, RECORD), number, search)
    if saved is not None:
        _replay(*saved, replayed=True)
        return
    orphan = unregistered_record(exp_dir, number)
    saved = _read_record(orphan, number, search) if orphan is not None else None
    if saved is not None:
        # Finished in the stopped run, but that run's report shows it cut short: replayed, and printed now.
        _replay(*saved, replayed=False)
        return

    def report(step: int, rank1: float) -> None:
        # rank1: the search objective (target validation rank-1). ASHA decides here; it may stop this trial.
        tune.report({"rank1": rank1, "step": step, "final": False})

    try:
        result = _worker_env(cfg, baseline, adapted).run(values, report=None if multi else report)
    except Exception as exc:
        # The trial failed on its own (a plugin, the data, out of memory): a finished FAIL, not retried. Only a
        # worker or node that dies is an ERROR to Tune, and Tune runs that trial again (FailureConfig).
        tune.report({"final": True, "error": format_error(exc), "node_id": _node_id()})
        return
    model_path = save_model(number, result) if save_model else None
    # The same record the Optuna backend keeps in the trial's user attributes, and where it ran.
    record = result_record(result, model_path)
    record["worker"] = {"host": socket.gethostname(), "node_id": _node_id(), "pid": os.getpid()}
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, RECORD).write_text(json.dumps(record))
        # report() copies the checkpoint into the experiment's storage before it returns.
        tune.report(
            {"rank1": objective_rank1(result.metrics, search.objective), "macs": float(result.macs), "final": True},
            checkpoint=tune.Checkpoint.from_directory(tmp),
        )


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


# -- driver side ---------------------------------------------------------------------------------------------
class NumberedOptunaSearch(OptunaSearch):
    """OptunaSearch that tells each trial its Optuna trial number (0 = the uniform warm start)."""

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        if config is None:
            return None
        return {**config, NUMBER: self._ot_trials[trial_id].number}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if "error" in result:
            return  # a failed trial's last report carries no objective
        with warnings.catch_warnings():
            # A trial run again after an interruption reports its first epochs again; Optuna keeps the first.
            warnings.filterwarnings("ignore", message="The reported value is ignored")
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if result and "error" in result:  # failed in the trial's code: FAIL in the Optuna study, as with Optuna
            result, error = None, True
        super().on_trial_complete(trial_id, result, error)


class WarmStartASHA(ASHAScheduler):
    """ASHA that lets the warm-start trials (the uniform policy first) run to the end: the report compares
    the best policy with the uniform one, as the Optuna backend's median rule (3 startup trials) allows."""

    def __init__(self, protected: int, last_epoch: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.protected = protected
        self.last_epoch = last_epoch

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        # As the Optuna backend: no decision at a trial's last epoch (its training is paid for; complete, it
        # informs the sampler and may enter the final round).
        if result.get("step", 0) >= self.last_epoch:
            return TrialScheduler.CONTINUE
        decision = super().on_trial_result(tune_controller, trial, result)
        # A trial's final report carries its record as a checkpoint: stopping on it could end the trial before
        # Tune registers the checkpoint, leaving a finished trial read back as stopped early (seen on resume).
        if result.get("final") or int(trial.config[NUMBER]) < self.protected:
            return TrialScheduler.CONTINUE
        return decision


def trial_name(trial: Trial) -> str:
    """``trial_0003``: Tune's names for trials and their folders, matching the run's trial numbers."""
    return f"trial_{int(trial.config[NUMBER]):04d}"


class _Progress(Callback):
    """Hands each finished trial to the live backend (one progress line per trial, as it finishes)."""

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        if _live is not None:
            _live._finished(trials, trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        if _live is not None:
            _live._finished(trials, trial)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        if _live is not None:
            _live.log(
                f"ray: {trial_name(trial)} lost its worker ({_error_of(trial)}); running it again "
                f"(retry {trial.num_failures} of {RETRIES})"
            )

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        if _live is not None:
            _live._trials = trials


def _error_of(trial: Trial) -> str:
    """One line for an ERROR trial: its worker process or node died (Ray's error); the trace is in error.txt."""
    import ray.cloudpickle

    exc: BaseException | None = None
    try:  # the driver's copy is written first; the experiment's copy (storage) after a sync
        local = trial.pickled_error_file
        if local and os.path.isfile(local):
            with open(local, "rb") as f:
                exc = ray.cloudpickle.load(f)
        else:
            exc = trial.get_pickled_error()
    except Exception:
        exc = None
    lines = [line.strip() for line in str(exc or "").splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else "its Ray worker failed; see the trial's error.txt"


def record_of(trial: Trial, kind: str = "rank1") -> TrialRecord | None:
    """A Tune trial's record (see :func:`records.record_of`); None for a trial that never started. ``kind``
    names the objective the trial reported (``search.objective``) in a stopped trial's error."""
    config = trial.config or {}
    if NUMBER not in config:
        return None
    number = int(config[NUMBER])
    values = {k: v for k, v in config.items() if k != NUMBER}
    last = trial.last_result or {}
    seconds = last.get("time_total_s")
    worker = {
        "host": last.get("hostname"),
        "node_id": last.get("node_id"),
        "pid": last.get("pid"),
        "retries": trial.num_failures,
    }
    if trial.status == Trial.ERROR:
        return records.record_of(
            number,
            "FAIL",
            values,
            error=f"retried {RETRIES} times, its worker died each time: {_error_of(trial)}",
            seconds=seconds,
            worker=worker,
        )
    if last.get("final") and "error" in last:
        return records.record_of(number, "FAIL", values, error=last["error"], seconds=seconds, worker=worker)
    if last.get("final") and trial.checkpoint is not None:
        with trial.checkpoint.as_directory() as d:
            data = json.loads(Path(d, RECORD).read_text())
        return records.record_of(
            number, "COMPLETE", values, data, worker={**(data.get("worker") or {}), "retries": trial.num_failures}
        )
    if trial.status == Trial.TERMINATED and last.get("done"):
        error = (
            f"stopped early by ASHA at epoch {last.get('step')} (validation {kind} {last['rank1']:.3f})"
            if "rank1" in last
            else "stopped early by the scheduler"
        )
        return records.record_of(number, "PRUNED", values, error=error, seconds=seconds)
    if trial.status == Trial.PENDING and not last:
        return None
    return records.record_of(
        number,
        "RUNNING",
        values,
        seconds=seconds,
        error="cut short (interrupted or search.timeout); rerun the same command to run it again",
    )


class RayBackend:
    """Runs trials as a Ray Tune experiment in ``<run_dir>/ray`` (a :class:`~autoprune.search.backend.Backend`)."""

    def __init__(
        self,
        env: SearchEnv,
        run_dir: Path,
        on_trial: Callable[[TrialRecord], None] | None = None,
        save_model: Callable[[int, TrialResult], str] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.env, self.run_dir = env, run_dir
        self.on_trial = on_trial
        self.save_model = save_model
        self.log = log
        self.exp_dir = (Path(run_dir) / "ray" / EXPERIMENT).resolve()
        self.search = env.search  # the typed section the environment already holds
        self.multi = self.search.multi_objective
        self._trials: list[Trial] = []
        self._done: dict[str, TrialRecord] = {}  # trial id -> record of a finished trial
        self._reported: set[str] = set()

    # -- pieces of the experiment ---------------------------------------------------------------------------
    def _space(self) -> dict[str, Any]:
        """The Optuna backend's parameters: free keep ratios, and in Pareto mode the MACs target."""
        space = {
            p.name: FloatDistribution(p.low, p.high, step=p.step)
            for p in self.env.space.params.values()
            if p.fixed is None
        }
        if self.multi:
            lo, hi = self.env.macs_ratio_range()
            space["macs_ratio"] = FloatDistribution(lo, hi)
        return space

    def _points_to_evaluate(self) -> list[dict[str, float]]:
        """The shared warm start (without the global ranking's policy), each point once, on the space's keys."""
        uniform, *rest = warm_start_policies(self.env, self.search)
        points = [uniform]
        for policy in rest:
            point = {k: v for k, v in policy.items() if k in uniform}
            if point not in points:
                points.append(point)
        return points

    def _searcher(self) -> NumberedOptunaSearch:
        metric, mode = (["rank1", "macs"], ["max", "min"]) if self.multi else ("rank1", "max")
        return NumberedOptunaSearch(
            space=self._space(),
            metric=metric,
            mode=mode,
            points_to_evaluate=self._points_to_evaluate(),
            sampler=make_sampler(self.search.sampler, self.env.config.seed, self.multi),
        )

    def _scheduler(self) -> TrialScheduler:
        if self.multi or self.search.pruner == "none":
            return FIFOScheduler()
        # Keep the best 1/reduction_factor at every rung (m, m*r, m*r^2, ... reports; m = search.min_resource,
        # the first epoch at which the Optuna backend's pruners may stop a trial too).
        return WarmStartASHA(
            len(self._points_to_evaluate()),
            self.env.trial.finetune_epochs,
            metric="rank1",
            mode="max",
            time_attr="training_iteration",
            grace_period=self.search.min_resource,
            reduction_factor=self.search.reduction_factor,
            max_t=10_000,
        )

    def _trainable(self) -> Any:
        res = self.search.ray
        fn = tune.with_parameters(
            run_trial,
            cfg=self.env.cfg,
            baseline=self.env.baseline,
            cwd=os.getcwd(),
            save_model=self.save_model,
            adapted=self.env.adapted,
            exp_dir=str(self.exp_dir),
        )
        return tune.with_resources(fn, {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})

    def _check_resumable(self, n_trials: int) -> bool:
        """True when the run directory holds an experiment to restore; refuse one started for another n_trials."""
        marker = self.exp_dir.parent / "experiment.json"
        if not tune.Tuner.can_restore(str(self.exp_dir)):
            return False
        fix = f"delete {self.exp_dir.parent} to start the Ray search over"
        started = read_json(marker, fix).get("n_trials") if marker.is_file() else n_trials
        if started != n_trials:
            raise UserError(
                f"the Ray experiment in {self.exp_dir} was started with search.n_trials={started} and "
                f"Ray Tune cannot change that; rerun with --set search.n_trials={started} to finish it, "
                f"or use a new --out (search.backend optuna can grow a finished study)"
            )
        return True

    def _tuner(self, n_trials: int, timeout: float | None, resume: bool) -> tune.Tuner:
        # Tune's newer console output prints a header and paths even at verbose=0; our per-trial lines suffice.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        # A failed trial's last report is its error, without the objective: Tune must not refuse it.
        os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
        trainable = self._trainable()
        if resume:
            self.log(f"ray: resuming the experiment in {self.exp_dir}")
            return tune.Tuner.restore(
                str(self.exp_dir),
                trainable=trainable,
                resume_unfinished=True,
                resume_errored=False,
                restart_errored=False,
            )
        self.exp_dir.parent.mkdir(parents=True, exist_ok=True)
        write_file(self.exp_dir.parent / "experiment.json", json.dumps({"n_trials": n_trials}))
        res = self.search.ray
        if self.search.screening.enabled:
            self.log(
                "ray: search.screening is for the Optuna backend (it ranks a candidate against the study's "
                "earlier ones); here ASHA stops poor trials after their first epochs instead"
            )
        return tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=self._searcher(),
                scheduler=self._scheduler(),
                num_samples=n_trials,
                max_concurrent_trials=res.max_concurrent,
                time_budget_s=timeout,
                reuse_actors=True,
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_name,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT,
                storage_path=str(self.exp_dir.parent),
                verbose=0,
                callbacks=[_Progress()],
                failure_config=tune.FailureConfig(max_failures=RETRIES),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            ),
        )

    # -- running ----------------------------------------------------------------------------------------------
    def _init_ray(self) -> bool:
        """Join search.ray.address, or start a local Ray; True when this call started it (and must stop it).

        Joining a cluster (or a Ray this process already joined) first runs a small check on every node, so a
        node without autoprune or without the shared paths is one clear error, not a failed trial per node."""
        res = self.search.ray
        address = res.address
        joined = ray.is_initialized()
        if joined:
            how = "already joined"
        elif address:
            how = join(address)
        else:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            try:
                ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UserError(
                    f"cannot start a local Ray instance: {str(exc).splitlines()[0] if str(exc) else exc};"
                    f" set search.ray.address to join a running cluster"
                ) from None
            how = ""
        started = not joined
        total = ray.cluster_resources()
        for key, want in (("CPU", res.cpus_per_trial), ("GPU", res.gpus_per_trial)):
            if want and total.get(key, 0) < want and not address:  # a cluster's autoscaler may add nodes
                if started:
                    ray.shutdown()
                raise UserError(
                    f"search.ray.{key.lower()}s_per_trial is {want} but this machine gives Ray "
                    f"{total.get(key, 0):g} {key}s; lower it"
                )
        where = (
            f"cluster at {address} ({how})"
            if address
            else ("the Ray this process joined" if joined else "local instance")
        )
        self.log(
            f"ray: {where} with {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs; "
            f"up to {res.max_concurrent} trials at a time, {res.cpus_per_trial:g} CPU / "
            f"{res.gpus_per_trial:g} GPU each"
        )
        if address or joined:
            try:
                check_nodes(self._shared_paths(), self.log)
            except BaseException:
                if started:
                    ray.shutdown()
                raise
        return started

    def _shared_paths(self) -> dict[str, tuple[str, bool]]:
        """What every node's trials read (data.root) and write (the run directory), as the driver resolves them."""
        root = self.env.config.data.root
        paths = {
            "data.root": (str(Path(root).resolve()), False),
            "the run directory (--out)": (str(Path(self.run_dir).resolve()), True),
        }
        if not Path(root).is_absolute():  # trials chdir to the driver's working directory to resolve it
            paths["the driver's working directory"] = (os.getcwd(), False)
        return paths

    def _record(self, trial: Trial) -> TrialRecord | None:
        record = self._done.get(trial.trial_id)
        if record is None:
            record = record_of(trial, self.search.objective)
            if record is not None and record.state != "RUNNING":
                self._done[trial.trial_id] = record  # read once, while Ray and the driver's files are there
        return record

    def _finished(self, trials: list[Trial], trial: Trial) -> None:
        self._trials = trials
        if trial.trial_id in self._reported:
            return
        self._reported.add(trial.trial_id)
        record = self._record(trial)
        if (trial.last_result or {}).get("replayed"):
            return  # finished before the interruption (it is in that run's report): kept, not run again
        if record is not None and self.on_trial:
            self.on_trial(record)

    def run(self, n_trials: int, timeout: float | None = None) -> list[TrialRecord]:
        global _live
        resume = self._check_resumable(n_trials)
        started = self._init_ray()
        try:
            tuner = self._tuner(n_trials, timeout, resume)
            _live = self
            start = time.perf_counter()
            tune_log = logging.getLogger("ray.tune")
            level = tune_log.level
            tune_log.setLevel(logging.CRITICAL)  # a failed trial is one FAIL line here, not Tune's traceback
            try:
                tuner.fit()  # on_experiment_end hands us every trial, restored ones included
            finally:
                _live = None
                tune_log.setLevel(level)
            found = self.records()
        finally:
            if started:
                ray.shutdown()
        finished = sum(r.state != "RUNNING" for r in found)
        if finished < n_trials and (timeout is None or time.perf_counter() - start < timeout):
            raise KeyboardInterrupt  # Tune caught Ctrl-C, saved the experiment and returned early
        return found

    def records(self) -> list[TrialRecord]:
        out = [r for t in self._trials if (r := self._record(t)) is not None]
        return sorted(out, key=lambda r: r.number)
