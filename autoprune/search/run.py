"""The main job: data, baseline, search, final model, report. ``autoprune search`` calls :func:`run_search`."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from autoprune.config import RunSettings, SearchSettings, TrialSettings, config_hash, dump, without_unset_late_keys
from autoprune.data.domain import load_domains
from autoprune.engine.baseline import get_baseline
from autoprune.engine.device import resolve_device, set_threads
from autoprune.errors import UserError, disk_full, writable_folder
from autoprune.export import save_torchscript
from autoprune.host import get_host
from autoprune.pruning.serialize import load_pruned, save_pruned
from autoprune.rundir import copy_file, inside, open_no_follow, read_json, refuse_links_out, write_file
from autoprune.search.adapt import load_or_adapt
from autoprune.search.backend import Backend
from autoprune.search.records import (
    TrialRecord,
    finalists_by_noise,
    hits_string,
    metrics_summary,
    objective,
    ranked,
    same_values,
    score,
    selection_key,
)
from autoprune.search.report import (
    environment,
    pareto_front,
    summary_table,
    write_json,
    write_plots,
    write_trials_csv,
)
from autoprune.search.trial import SearchEnv, TrialResult

# What a study depends on: a run directory holds one study, so these must not change between runs
# (n_trials, timeout and final_epochs may: raising n_trials continues the search).
IDENTITY = ("model", "data", "budget", "trial", "seed")


LEGACY_MIN_RESOURCE = {"median": 2, "successive_halving": 1, "hyperband": 1}


def study_identity(cfg: dict[str, Any]) -> str:
    cfg = without_unset_late_keys(cfg)
    if cfg["model"].get("checkpoint") is not None:  # its content, not its name: a retrained file is another study
        from autoprune.models.checkpoint import read_checkpoint

        cfg["model"]["checkpoint_sha256"] = read_checkpoint(cfg["model"]["checkpoint"]).sha256
    search = {
        k: v for k, v in cfg["search"].items() if k not in ("n_trials", "timeout", "final_epochs", "finalists", "ray")
    }
    # Studies from before search.min_resource keep their identity: the key is hashed only where it changes
    # what the pruner does from what it did then (the median rule waited until epoch 2, the others epoch 1).
    if search.get("min_resource") == LEGACY_MIN_RESOURCE.get(search["pruner"], search.get("min_resource")):
        search.pop("min_resource", None)
    parts = {**{k: cfg[k] for k in IDENTITY}, "search": search}
    if cfg["budget"].get("latency_ms") is None:  # run directories from before latency budgets keep their identity
        parts["budget"] = {k: v for k, v in cfg["budget"].items() if not k.startswith("latency_")}
    # steps and schedule were trial keys before they became the iterative strategy's options: hashing their
    # old defaults keeps the run directories of earlier versions resumable.
    parts["trial"] = {**cfg["trial"], "steps": 3, "schedule": "linear"}
    keys: tuple[str, ...] = IDENTITY + ("search",)
    if cfg.get("plugins"):
        parts["plugins"] = cfg["plugins"]
        keys += ("plugins",)
    return config_hash(parts, keys)


def prepare_run_dir(cfg: dict[str, Any], out: str | Path) -> Path:
    """Create (or reuse, for resuming) the run directory; refuse one that holds another config's study."""
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file, not a directory; choose another --out")
    refuse_links_out(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.unlink(missing_ok=True)  # a stale probe (or a planted link: unlink removes the link itself)
        os.close(open_no_follow(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "write test"))
        probe.unlink()
    except OSError as exc:
        raise UserError(f"run directory {run_dir} is not writable ({exc.strerror}); choose another --out") from None
    free = shutil.disk_usage(run_dir).free
    if free < 200 * 2**20:
        raise UserError(
            f"only {free / 2**20:.0f} MiB free under {run_dir}; a search needs at least 200 MiB, "
            f"free some space or choose another --out"
        )
    marker = run_dir / "identity.json"
    if marker.is_file():
        old = read_json(marker, f"delete {run_dir} or use another --out").get("identity")
        if old != study_identity(cfg):
            raise UserError(
                f"run directory {run_dir} holds a search with another config; use a new --out, "
                f"or delete {run_dir} to start over"
            )
    return run_dir


def claim_run_dir(cfg: dict[str, Any], run_dir: Path) -> None:
    """Mark the run directory as this config's, once the config has proven valid."""
    marker = run_dir / "identity.json"
    if not marker.is_file():
        write_json(marker, {"identity": study_identity(cfg)})
    write_file(run_dir / "config.yaml", dump(cfg))


def preflight(cfg: dict[str, Any], host: Any) -> None:
    """Check everything that needs no data or training, so a typo costs seconds, not a baseline."""
    from autoprune.data import parse_spec
    from autoprune.models import build_model, load_checkpoint_model
    from autoprune.pruning.budget import Budget, check_feasible
    from autoprune.pruning.flops import CostModel
    from autoprune.pruning.groups import PruningGraph
    from autoprune.search.space import build_space

    settings = RunSettings.from_config(cfg)
    trial, search, data, m = settings.trial, settings.search, settings.data, settings.model
    _check_data_root(settings)
    for kind in ("criterion", "strategy", "scenario"):
        host.get(kind, trial.plugin(kind))
    for spec in data.specs():
        host.get("dataset", parse_spec(spec)[0])
    scenario = host.get("scenario", trial.scenario)
    if data.source is None and getattr(scenario, "needs_source", False):
        raise UserError(
            f"trial.scenario {trial.scenario!r} prunes on the source domain, but data.source "
            f"is null; give one (--source KIND:ROOT) or choose a target scenario such as "
            f"prune_then_finetune"
        )
    # A missing file or a checkpoint of another architecture (model.weights, model.checkpoint) fails here,
    # before any data is read.
    model = (
        load_checkpoint_model(cfg["model"], 2, host=host)
        if m.checkpoint is not None
        else build_model(m.arch, 2, last_stride=m.last_stride, pooling=m.pooling, weights=m.weights, host=host)
    )
    graph = PruningGraph(model, m.input_size)
    cost = CostModel(graph)
    budget = Budget.from_config(settings.budget, cost.base_macs)
    if settings.budget.latency_ms is not None:  # a bad table or an impossible latency costs seconds too
        from autoprune.engine.device import resolve_device
        from autoprune.pruning.latency import latency_budget

        budget = latency_budget(cfg, graph, budget, resolve_device(settings.device).type, log=print)[0]
    check_feasible(cost, budget)
    space = build_space(search.space, list(graph.groups), settings.budget.min_keep, settings.budget.max_keep)
    from autoprune.search import optuna_backend
    from autoprune.search.backend import check_warm_start, make_sampler

    check_warm_start(search.warm_start, space)
    # Both backends sample with Optuna: an unknown or uninstalled sampler is a config error.
    make_sampler(search.sampler, settings.seed, search.multi_objective)
    if search.backend == "optuna" and search.storage is not None:
        optuna_backend.open_storage(cfg, Path("."))  # reachable, driver installed, credentials accepted
    if search.backend == "ray" and search.ray.address:
        from autoprune.search.ray_cluster import check_cluster

        check_cluster(search.ray.address)  # reachable, token accepted, autoprune on every node


def _check_data_root(settings: RunSettings) -> None:
    """data.root receives synthetic data, cached baselines and latency tables: an unwritable one is refused
    before any of them is made (not as a traceback from the data generator)."""
    from autoprune.data import parse_spec

    writes = (
        settings.model.checkpoint is None  # the trained baseline is cached there
        or settings.budget.latency_ms is not None  # so are profiled latency tables
        or any(parse_spec(spec)[0] == "synth" for spec in settings.data.specs())
    )
    if writes:
        writable_folder(
            settings.data.root,
            "data.root",
            "set data.root to a folder autoprune may write (synthetic data, cached baselines and latency tables)",
        )


def lock_run_dir(cfg: dict[str, Any], run_dir: Path) -> Any:
    """Hold ``run_dir/.lock`` while searching, so a second process on the same study is refused.

    Only for the study in the run directory: with a shared ``search.storage`` several workers are
    the point. The lock is the kernel's (flock), so a killed process never leaves it held.
    """
    if SearchSettings.from_config(cfg).storage is not None:
        return None
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        return None
    f = os.fdopen(open_no_follow(run_dir / ".lock", os.O_RDWR | os.O_CREAT, "lock"), "r+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise UserError(
            f"run directory {run_dir} is in use by another autoprune search (pid {pid}); "
            f"wait for it to finish, or use another --out"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def trial_model(run_dir: Path, r: TrialRecord) -> Path:
    """Trial ``r``'s model file, a path read back from the study: refused unless inside the run directory."""
    return inside(run_dir, r.model, f"the study's record of trial {r.number}")


def _model_of(result: TrialResult) -> torch.nn.Module:
    """The model a trial run kept (``env.run`` keeps it unless told otherwise)."""
    assert result.model is not None, "the trial's model was not kept"
    return result.model


def _save_trial_model(run_dir: Path) -> Callable[[int, TrialResult], str]:
    def save(number: int, result: TrialResult) -> str:
        rel = f"trials/trial_{number:04d}.pt"
        save_pruned(_model_of(result), run_dir / rel, extra={"trial": number, "counts": result.counts})
        return rel

    return save


def trial_line(r: TrialRecord, best: float | None, kind: str = "rank1") -> str:
    """One finished trial: MACs, validation rank-1 (and the objective, ``search.objective``, when that is not
    rank-1), test rank-1, and the best objective so far."""
    policy = r.policy
    summary = (
        (
            f"keep min {min(policy.values()):.2f} mean {sum(policy.values()) / len(policy):.2f} "
            f"max {max(policy.values()):.2f}"
        )
        if policy
        else "-"
    )
    rank1 = f"{r.target['rank1']:.3f}" if r.target else "  -  "
    if r.target_val:
        own = f" {kind} {score(r.target_val, kind):.3f}" if kind != "rank1" else ""
        rank1 = f"{r.target_val['rank1']:.3f}{own} (test {rank1})"
    macs = f"{r.macs_ratio:.3f}" if r.macs_ratio is not None else "  -  "
    secs = f"{r.seconds:.0f}s" if r.seconds is not None else "-"
    extra = f"  ({r.error})" if r.error and r.state != "COMPLETE" else ""
    best_s = f"  best {'' if kind == 'rank1' else kind + ' '}{best:.3f}" if best is not None else ""
    return f"trial {r.number:3d} {r.state:8s} MACs {macs}  val rank-1 {rank1}  {secs:>5s}  {summary}{best_s}{extra}"


def run_search(
    cfg: dict[str, Any], out: str | Path, progress: bool = True, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run (or resume) the search described by ``cfg`` into run directory ``out``; returns the report."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours to print
    started = time.perf_counter()
    run_dir = prepare_run_dir(cfg, out)
    lock = lock_run_dir(cfg, run_dir)
    try:
        return _search(cfg, run_dir, started, progress, log)
    except UserError:
        raise
    except Exception as exc:
        # A full disk anywhere (a model, the study's SQLite file, the report): one line, not a traceback.
        if (full := disk_full(exc)) is None:
            raise
        raise _disk_full(run_dir, full) from None
    finally:
        if lock is not None:
            lock.close()


def _diverged(what: str, exc: Exception) -> UserError:
    return UserError(f"training {what} diverged ({exc}); lower train.lr and trial.lr, or check the data")


def _search(
    cfg: dict[str, Any], run_dir: Path, started: float, progress: bool, log: Callable[[str], None]
) -> dict[str, Any]:
    """One search as named steps: checks, domains, baseline and environment, adaptation and the unpruned
    reference, then the trials and :func:`finish` (final round, model, outputs)."""
    settings = RunSettings.from_config(cfg)
    set_threads(settings.threads)
    device = resolve_device(settings.device)
    host = get_host()
    preflight(cfg, host)
    source, target = _load_domains(cfg, log)
    env, base_info = _build_env(cfg, run_dir, host, device, source, target, progress, log)
    base = _adapt(cfg, run_dir, env, base_info, log)
    return _run_trials(cfg, run_dir, env, base, started, log)


def _load_domains(cfg: dict[str, Any], log: Callable[[str], None]) -> tuple[Any, Any]:
    """The source and target datasets (the target's validation split held out)."""
    data = RunSettings.from_config(cfg).data
    source_spec = data.source or "none (the trained model.checkpoint is pruned as it is)"
    log(f"data: source {source_spec}, target {data.target}")
    return load_domains(cfg)


def _build_env(
    cfg: dict[str, Any],
    run_dir: Path,
    host: Any,
    device: torch.device,
    source: Any,
    target: Any,
    progress: bool,
    log: Callable[[str], None],
) -> tuple[SearchEnv, dict[str, Any]]:
    """The baseline (trained, reused or imported) and the environment every trial shares; claims the run
    directory. Returns the environment and what :func:`get_baseline` says about the baseline."""
    from autoprune.engine.train import NonFiniteLoss

    try:
        baseline, base_info = get_baseline(cfg, source, device, progress=progress, log=log)
    except NonFiniteLoss as exc:
        raise _diverged("the baseline on the source", exc) from None
    env = SearchEnv(cfg, host, device, source, target, baseline, progress=progress)
    # Only now, with the data read and the baseline built, is the run directory this config's: a typo in a
    # dataset path must not lock the directory to the mistyped config.
    claim_run_dir(cfg, run_dir)
    _describe(cfg, env, log)
    return env, base_info


def _describe(cfg: dict[str, Any], env: SearchEnv, log: Callable[[str], None]) -> None:
    """The model, budget and space lines a search starts with."""
    if not env.strategy_cls.follows_policy and env.search.n_trials > 1:
        log(
            f"note: strategy {cfg['trial']['strategy']!r} chooses the widths itself, so every trial prunes the same "
            f"way; search.n_trials: 1 is enough"
        )
    log(
        f"model: {cfg['model']['arch']} {env.base_macs / 1e6:.1f} MMACs at {tuple(cfg['model']['input_size'])}, "
        f"{len(env.group_names)} prunable groups; budget {env.budget.macs / 1e6:.1f} MMACs "
        f"({env.budget.macs / env.base_macs:.0%}); space {env.space.name} ({len(env.space.params)} parameters)"
    )
    if env.budget.latency is not None:
        key = env.budget.latency.table.key
        log(
            f"latency budget: {env.budget.user_latency_ms} ms per image at batch {key.batch} on {key.device} "
            f"(policies aim at {env.budget.latency_ms:.3f} ms: a {env.budget.latency_margin:.0%} margin) "
            f"({key.runtime}, {key.threads} threads); unpruned predicted "
            f"{env.budget.latency.predict_ms(env.cost.base_widths):.3f} ms; "
            + ("each policy is also timed here" if env.end_to_end else "not this machine: the table is trusted")
        )


def _adapt(
    cfg: dict[str, Any], run_dir: Path, env: SearchEnv, base_info: dict[str, Any], log: Callable[[str], None]
) -> dict[str, Any]:
    """Adapt the unpruned model to the target once (``trial.adapt_epochs``), then the unpruned reference."""
    from autoprune.engine.train import NonFiniteLoss

    try:
        adaptation = load_or_adapt(env, run_dir, log)
    except NonFiniteLoss as exc:
        raise _diverged("the unpruned model on the target (trial.adapt_epochs)", exc) from None
    base = _unpruned_reference(cfg, run_dir, env, base_info, log)
    if adaptation is not None:
        base["adaptation"] = adaptation
    return base


class _TrialLines:
    """Logs one line per finished trial, with the best objective so far."""

    def __init__(self, log: Callable[[str], None], kind: str = "rank1") -> None:
        self.log, self.kind = log, kind
        self.best: float | None = None

    def __call__(self, r: TrialRecord) -> None:
        if r.state == "COMPLETE" and r.target:
            self.best = max(self.best or 0.0, objective(r.target_val, r.target, self.kind) or 0.0)
        self.log(trial_line(r, self.best, self.kind))


def _make_backend(cfg: dict[str, Any], env: SearchEnv, run_dir: Path, log: Callable[[str], None]) -> Backend:
    """The backend ``search.backend`` names (Ray is imported only when asked for)."""
    if env.search.backend == "ray":
        from autoprune.search.ray_backend import RayBackend

        return RayBackend(
            env, run_dir, on_trial=_TrialLines(log, env.search.objective), save_model=_save_trial_model(run_dir)
        )
    from autoprune.search.optuna_backend import OptunaBackend

    return OptunaBackend(
        env, run_dir, on_trial=_TrialLines(log, env.search.objective), save_model=_save_trial_model(run_dir)
    )


def _run_trials(
    cfg: dict[str, Any], run_dir: Path, env: SearchEnv, base: dict[str, Any], started: float, log: Callable[[str], None]
) -> dict[str, Any]:
    """The trials, then :func:`finish`; after a Ctrl-C, the report of the finished trials (no final round)."""
    backend = _make_backend(cfg, env, run_dir, log)
    try:
        records = backend.run(env.search.n_trials, timeout=env.search.timeout)
        report = finish(cfg, run_dir, env, base, records, log=log)
    except KeyboardInterrupt:  # in a trial, in the final round or while the report was written
        log("interrupted: writing the report for the finished trials; rerun the same command to resume")
        # Stop now: no final fine-tune (the resumed run does it). A second Ctrl-C stops this too.
        report = finish(
            {**cfg, "search": {**cfg["search"], "final_epochs": 0}}, run_dir, env, base, backend.records(), log=log
        )
        report["seconds"] = time.perf_counter() - started
        write_json(run_dir / "report.json", report)
        raise
    report["seconds"] = time.perf_counter() - started
    write_json(run_dir / "report.json", report)
    return report


def recovery_epochs(cfg: dict[str, Any]) -> int:
    """The target epochs the reported model recovers for: the final round's, or a trial's without one."""
    return SearchSettings.from_config(cfg).final_epochs or TrialSettings.from_config(cfg).finetune_epochs


def recipe(cfg: dict[str, Any]) -> dict[str, Any]:
    """The recovery recipe, reported beside every result."""
    from autoprune.distill import DistillSettings

    t = TrialSettings.from_config(cfg)
    d = DistillSettings.from_config(cfg)
    return {
        "scenario": t.scenario,
        "adapt_epochs": t.adapt_epochs,
        "finetune_epochs": t.finetune_epochs,
        "final_epochs": SearchSettings.from_config(cfg).final_epochs,
        "recovery_epochs": recovery_epochs(cfg),
        "distill": {"logit": d.logit, "embedding": d.embedding, "temperature": d.temperature},
        "summary": f"{t.scenario}"
        + (f", adapted once ({t.adapt_epochs} target epochs)" if t.adapt_epochs else "")
        + f", {d.describe()}, {recovery_epochs(cfg)} recovery epochs",
    }


def _unpruned_reference(
    cfg: dict[str, Any], run_dir: Path, env: SearchEnv, base_info: dict[str, Any], log: Callable[[str], None]
) -> dict[str, Any]:
    """The unpruned model through the same scenario and recovery epochs as the reported model (cached)."""
    from autoprune.engine.train import NonFiniteLoss

    base_file = run_dir / "baseline.json"
    epochs = recovery_epochs(cfg)
    if base_file.is_file():
        base = read_json(base_file, f"delete {base_file} to measure the unpruned reference again")
        if base.get("recipe") == recipe(cfg):  # a reference of another recipe (or epochs) is not this one's
            log(f"baseline: unpruned reference rank-1 {base['target']['rank1']:.3f}, mAP {base['target']['mAP']:.3f}")
            return base
    direct = env.evaluate(env.baseline, env.target)
    log(
        f"baseline: direct transfer to target rank-1 {direct['rank1']:.3f}; the unpruned reference recovers "
        f"{epochs} epochs as the pruned model does"
    )
    try:
        unpruned = env.unpruned(epochs=epochs)
    except NonFiniteLoss as exc:
        raise _diverged("the unpruned baseline on the target", exc) from None
    base = {
        "arch": cfg["model"]["arch"],
        "macs": env.base_macs,
        "params": env.base_params,
        "target": metrics_summary(unpruned.metrics["target"]),
        "target_val": metrics_summary(unpruned.metrics["target"].get("val")),
        "direct_transfer": metrics_summary(direct),
        "source": metrics_summary(base_info.get("source_metrics")),
        "seconds": unpruned.seconds,
        "recovery_epochs": epochs,
        "adapt_epochs": env.adapt_epochs,
        "recipe": recipe(cfg),
    }
    if base_info.get("checkpoint"):
        base["checkpoint"] = base_info["checkpoint"]
    write_json(base_file, base)
    log(f"baseline: unpruned reference rank-1 {base['target']['rank1']:.3f}, mAP {base['target']['mAP']:.3f}")
    return base


def _disk_full(run_dir: Path, exc: OSError) -> UserError:
    return UserError(
        f"the disk under {run_dir} is full ({exc.strerror}); free some space, then rerun the same "
        f"command to resume (the interrupted trial is run again)"
    )


def finish(
    cfg: dict[str, Any],
    run_dir: Path,
    env: SearchEnv,
    base: dict[str, Any],
    records: list[TrialRecord],
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Pick the best policy, give it the final fine-tune, save the model and write the report files."""
    search = SearchSettings.from_config(cfg)
    by_score = ranked(records, env.budget.macs / env.base_macs, search.objective)
    uniform = _uniform_trial(env, records)
    glob = _global_trial(search, env, records, uniform) if by_score else None
    if env.budget.latency is not None:  # each trial's predicted latency next to its MACs
        from autoprune.pruning.latency import trial_latency_ms

        for r in records:
            r.latency_ms = trial_latency_ms(env.budget.latency, r.counts)
    report = _report_head(cfg, env, base, records, uniform)
    if by_score:
        if search.final_epochs:
            always = [r for r in (uniform, glob) if r is not None]
            best = _choose_finalist(search, run_dir, env, by_score, records, always, report, log)
        else:
            best = by_score[0]
            _keep_trial_model(run_dir, env, best, search.final_epochs, log)
        _report_best(cfg, run_dir, env, best, report, log)
        _report_comparisons(report, uniform, glob)
        _drop_trial_models(run_dir, records, best)
    _write_outputs(run_dir, report, records, env.budget.latency is not None, log)
    return report


def _uniform_trial(env: SearchEnv, records: list[TrialRecord]) -> TrialRecord | None:
    """The completed trial of the uniform policy (the warm start every search begins with), at the budget."""
    budget_ratio = env.budget.macs / env.base_macs
    uniform_values = env.space.uniform_values()
    return next(
        (
            r
            for r in records
            if r.state == "COMPLETE"
            and r.target
            and r.macs_ratio is not None
            and {k: v for k, v in r.values.items() if k != "macs_ratio"} == uniform_values
            and r.macs_ratio >= 0.99 * budget_ratio
        ),
        None,
    )


def _global_trial(
    search: SearchSettings, env: SearchEnv, records: list[TrialRecord], uniform: TrialRecord | None
) -> TrialRecord | None:
    """The global-ranking warm start's trial, when the search had one: a finalist like the uniform policy."""
    if not search.warm_start_global:
        return None
    values = env.global_values()
    # Any state: successive halving may have stopped it early, and the final round trains it from scratch anyway.
    return next((r for r in records if same_values(r, values) and r is not uniform and r.state != "FAIL"), None)


def _report_head(
    cfg: dict[str, Any], env: SearchEnv, base: dict[str, Any], records: list[TrialRecord], uniform: TrialRecord | None
) -> dict[str, Any]:
    """The report without its best model: budget, baseline, config, plugins, trials, uniform policy."""
    search, trial = SearchSettings.from_config(cfg), TrialSettings.from_config(cfg)
    report: dict[str, Any] = {
        "budget": {
            "macs_ratio": round(env.budget.macs / env.base_macs, 6),
            "macs": env.budget.macs,
            "unit": "MACs",
            "input_size": list(env.input_size),
            "round_to": env.budget.round_to,
        },
        "baseline": base,
        "config": {
            "criterion": trial.criterion,
            "strategy": trial.strategy,
            "scenario": trial.scenario,
            "space": env.space.name,
            "sampler": search.sampler,
            "backend": search.backend,
            "finetune_epochs": trial.finetune_epochs,
        },
        "plugins": env.plugins_used(),
        "environment": environment(env.device),
        "recipe": recipe(cfg),
        "best": None,
        "uniform": None,
        "trials": [r.to_json() for r in sorted(records, key=lambda r: r.number)],
    }
    if search.multi_objective:
        report["pareto_front"] = pareto_front(records)
    if uniform is not None:
        report["uniform"] = {
            "trial": uniform.number,
            "policy": uniform.policy,
            "macs": uniform.macs,
            "params": uniform.params,
            "macs_ratio": uniform.macs_ratio,
            "target": uniform.target,
            "target_val": uniform.target_val,
        }
    return report


def _final_marker(model_dir: Path) -> dict[str, Any]:
    """Which trial ``model/pruned.pt`` holds, after how many final epochs (``final.json``; empty if none)."""
    marker = model_dir / "final.json"
    return read_json(marker, f"delete {marker} to choose the final model again") if marker.is_file() else {}


def _choose_finalist(
    search: SearchSettings,
    run_dir: Path,
    env: SearchEnv,
    by_score: list[TrialRecord],
    records: list[TrialRecord],
    always: list[TrialRecord],
    report: dict[str, Any],
    log: Callable[[str], None],
) -> TrialRecord:
    """With a final round: the finalist best on validation after the final fine-tune (``report["finalists"]``
    lists them all); its model becomes ``model/pruned.pt``."""
    kind, final_epochs = search.objective, search.final_epochs
    model_dir = run_dir / "model"
    model_path = model_dir / "pruned.pt"
    done = _final_marker(model_dir)
    top = finalists_by_noise(by_score, search.finalists, search.finalists_se, kind)
    finals = _final_round(env, top, always, final_epochs, model_dir, log)
    chosen = max(finals, key=lambda f: selection_key(f["target_val"], f["target"], f["trial"], kind))
    best = next(r for r in records if r.number == chosen["trial"])
    for f in finals:
        f["chosen"] = f is chosen
    report["finalists"] = finals
    if done != {"trial": best.number, "final_epochs": final_epochs} or not model_path.is_file():
        weights = model_dir / f"final_{best.number:04d}.pt"
        if weights.is_file():
            copy_file(weights, model_path)
        else:  # finalists' weights are dropped once one is chosen; a changed choice retrains it
            result = env.run(best.values, counts=best.counts, epochs=final_epochs)
            save_pruned(_model_of(result), model_path, extra={"trial": best.number, "counts": best.counts})
        write_json(model_dir / "final.json", {"trial": best.number, "final_epochs": final_epochs})
    log(
        f"final: trial {best.number} is the best of {len(finals)} finalists on the validation split after "
        f"the final fine-tune"
    )
    return best


def _keep_trial_model(
    run_dir: Path, env: SearchEnv, best: TrialRecord, final_epochs: int, log: Callable[[str], None]
) -> None:
    """Without a final round: the best trial's own model becomes ``model/pruned.pt`` (trained again from its
    policy when another worker ran it)."""
    model_dir = run_dir / "model"
    model_path = model_dir / "pruned.pt"
    done = _final_marker(model_dir)
    if done.get("trial") == best.number and done.get("final_epochs") == final_epochs and model_path.is_file():
        return
    if best.model and trial_model(run_dir, best).is_file():
        model_dir.mkdir(exist_ok=True)
        copy_file(trial_model(run_dir, best), model_path)
    else:
        log(f"final: trial {best.number} ran in another worker; training its policy again for the model")
        result = env.run(best.values, counts=best.counts)
        save_pruned(_model_of(result), model_path, extra={"trial": best.number, "counts": best.counts})
    write_json(model_dir / "final.json", {"trial": best.number, "final_epochs": final_epochs})


def _report_best(
    cfg: dict[str, Any],
    run_dir: Path,
    env: SearchEnv,
    best: TrialRecord,
    report: dict[str, Any],
    log: Callable[[str], None],
) -> None:
    """``report["best"]`` from the saved model (measured again, refused over budget), and its TorchScript."""
    from autoprune.pruning.flops import count_macs

    final_epochs = SearchSettings.from_config(cfg).final_epochs
    model_dir = run_dir / "model"
    model_path = model_dir / "pruned.pt"
    model = load_pruned(model_path)
    macs, params = count_macs(model, env.input_size)
    if macs > env.budget.macs:
        raise RuntimeError(f"refusing to report a model over budget: {macs} > {env.budget.macs} MACs")
    # The chosen finalist was evaluated in the final round (the saved model is that model): no second pass
    # over the test split.
    chosen_final = next(f for f in report["finalists"] if f["chosen"]) if final_epochs else None
    metrics: dict[str, Any] = (
        {**chosen_final["target"], "val": chosen_final["target_val"]}
        if chosen_final
        else {**(best.target or {}), "val": best.target_val}
    )
    report["best"] = {
        "trial": best.number,
        "policy": best.policy,
        "counts": best.counts,
        "macs": macs,
        "params": params,
        "macs_ratio": macs / env.base_macs,
        "target": metrics_summary(metrics),
        "target_val": metrics_summary(metrics.get("val")),
        "hits": chosen_final["hits"] if chosen_final else best.hits,
        "model": os.path.relpath(model_path, run_dir),
        "final_epochs": final_epochs,
    }
    if env.budget.latency is not None:
        _report_latency(report, env, model, best.counts, cfg, log)
    save_torchscript(model, model_dir / "pruned.torchscript.pt", torch.randn(1, 3, *env.input_size))
    report["best"]["torchscript"] = "model/pruned.torchscript.pt"


def _report_comparisons(report: dict[str, Any], uniform: TrialRecord | None, glob: TrialRecord | None) -> None:
    """The uniform policy's and the global-ranking warm start's final-round figures beside the best's."""
    if report["best"]["final_epochs"] and report["uniform"] is not None:
        # The uniform policy is always a finalist: "best vs uniform" compares like with like.
        assert uniform is not None  # report["uniform"] is set from it
        final = next(f for f in report["finalists"] if f["trial"] == uniform.number)
        report["uniform"]["final_target"] = final["target"]
        report["uniform"]["final_hits"] = final.get("hits")
    if glob is not None:
        report["global"] = {
            "trial": glob.number,
            "policy": glob.policy,
            "macs_ratio": glob.macs_ratio,
            "target": glob.target,
            "target_val": glob.target_val,
        }
        final = next((f for f in report.get("finalists", []) if f["trial"] == glob.number), None)
        if final is not None:
            report["global"].update(final_target=final["target"], final_hits=final.get("hits"))


def _drop_trial_models(run_dir: Path, records: list[TrialRecord], best: TrialRecord) -> None:
    """Trial models other than the best are not kept: they are reproducible from their policy."""
    for r in records:
        if r.model and r.number != best.number and trial_model(run_dir, r).exists():
            trial_model(run_dir, r).unlink()


def _write_outputs(
    run_dir: Path, report: dict[str, Any], records: list[TrialRecord], latency: bool, log: Callable[[str], None]
) -> None:
    """trials.csv (with the trials' predicted latency under a latency budget), the plots and report.json; then
    the summary table."""
    write_trials_csv(run_dir / "trials.csv", records, latency=latency)
    report["plots"] = write_plots(run_dir, report, records)
    write_json(run_dir / "report.json", report)
    if report.get("finalists"):  # kept until now, so that a Ctrl-C before the report costs no retraining
        for weights in (run_dir / "model").glob("final_*.pt"):
            weights.unlink()
    log("")
    log(summary_table(report))
    written = ["report.json", "trials.csv"] + (["model/pruned.pt"] if report["best"] else []) + report["plots"]
    log(f"\nrun directory: {run_dir}  ({', '.join(written)})")  # only what this run wrote


def _report_latency(
    report: dict[str, Any],
    env: SearchEnv,
    model: torch.nn.Module,
    counts: dict[str, int],
    cfg: dict[str, Any],
    log: Callable[[str], None],
) -> None:
    """Latency of the unpruned model and the best next to their MACs (timed here when this is the device)."""
    from autoprune.pruning.latency import budget_entry, latency_entry

    report["budget"].update(budget_entry(env.budget, cfg, env.end_to_end))
    report["baseline"] = {
        **report["baseline"],
        **latency_entry(env.budget, env.end_to_end, env.baseline, env.cost.base_widths),
    }
    entry = latency_entry(env.budget, env.end_to_end, model, counts)
    report["best"].update(entry)
    if entry["latency_measured"] and entry["latency_ms"] > env.budget.user_latency_ms:
        log(
            f"warning: the best model measured {entry['latency_ms']:.3f} ms per image (median of "
            f"{entry['latency_runs']}), over the budget of {env.budget.user_latency_ms} ms; the machine may be "
            f"busy, or its timings drift more than budget.latency_margin ({env.budget.latency_margin:.0%}) allows"
        )


def no_trial_completed(run_dir: Path, report: dict[str, Any]) -> str:
    """The one line that ends a search in which no trial completed (so there is no model)."""
    states: dict[str, int] = {}
    for t in report["trials"]:
        states[t["state"]] = states.get(t["state"], 0) + 1
    counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "none ran"
    return (
        f"no trial completed ({counts}), so there is no model; each trial's error is in "
        f"{run_dir / 'report.json'} (trials[].error) and {run_dir / 'trials.csv'} (column error)"
    )


def _final_round(
    env: SearchEnv,
    top: list[TrialRecord],
    always: list[TrialRecord],
    final_epochs: int,
    model_dir: Path,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Give the ``top`` trials (best first) and the ``always`` ones (the uniform policy, the global-ranking
    warm start) the final fine-tune; their final metrics, with per-query test hits.

    Why: a trial's few fine-tuning epochs favour policies that recover fast, not those that end best, so
    the final choice is made after the final fine-tune, still on the validation split. The uniform policy
    is fine-tuned anyway for the comparison, so it is a finalist for free: the result is never worse than
    the paper's hand-picked policy on validation (nor than the global ranking's, when it was a warm start).
    Each finalist's metrics are cached in ``model_dir`` (its weights until the report is written), so a
    resumed run does not train them again.
    """
    candidates = list(top)
    for r in always:
        if r.number not in {c.number for c in candidates}:
            candidates.append(r)
    model_dir.mkdir(parents=True, exist_ok=True)
    finals = []
    for r in candidates:
        meta, weights = model_dir / f"final_{r.number:04d}.json", model_dir / f"final_{r.number:04d}.pt"
        cached = read_json(meta, f"delete {meta} to fine-tune this finalist again") if meta.is_file() else {}
        if cached.get("final_epochs") != final_epochs:
            what = "finalist" if r in top else "the warm start"
            log(f"final: fine-tuning {what} (trial {r.number}) for {final_epochs} epochs")
            result = env.run(r.values, counts=r.counts or None, epochs=final_epochs)  # a stopped trial has no counts
            save_pruned(_model_of(result), weights, extra={"trial": r.number, "counts": result.counts})
            target = result.metrics["target"]
            cached = {
                "trial": r.number,
                "final_epochs": final_epochs,
                "target": metrics_summary(target),
                "target_val": metrics_summary(target.get("val")),
                "hits": hits_string(target),
                "val_hits": hits_string(target.get("val")),
            }
            write_json(meta, cached)
        finals.append(
            {
                "trial": r.number,
                "target": cached["target"],
                "target_val": cached["target_val"],
                "hits": cached.get("hits"),
                "val_hits": cached.get("val_hits"),
            }
        )
    return finals
