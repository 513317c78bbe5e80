"""What the two search backends share: the interface ``run_search`` drives, the sampling set-up both
take from Optuna (Ray Tune samples through ``OptunaSearch``) and the policies a search starts with. A neutral module, so neither backend imports
the other, and ``run_search`` can check the sampler and warm start before any backend is built."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from autoprune.choices import SAMPLERS
from autoprune.config import SearchSettings
from autoprune.errors import UserError
from autoprune.search.records import TrialRecord

if TYPE_CHECKING:
    import optuna


class Backend(Protocol):
    """Runs the trials of one search (``OptunaBackend`` in this process, ``RayBackend`` on a Ray cluster)."""

    def run(self, n_trials: int, timeout: float | None = None) -> list[TrialRecord]:
        """Run trials until the study holds ``n_trials`` (or ``timeout`` seconds pass); every trial's record."""
        ...

    def records(self) -> list[TrialRecord]:
        """The records of the trials so far (the report after an interrupted :meth:`run`)."""
        ...


def make_sampler(name: str, seed: int, multi: bool) -> optuna.samplers.BaseSampler:
    """The Optuna sampler ``search.sampler`` names; an unknown or uninstalled one is a config error."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        if multi:
            raise UserError(
                "search.sampler cmaes is single-objective; use nsga2 or tpe with search.objectives rank1+macs"
            )
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise UserError("search.sampler cmaes needs the 'cmaes' package: pip install cmaes") from None
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise UserError(f"unknown search.sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")


def check_warm_start(policies: Any, space: Any) -> None:
    """``search.warm_start`` must be a list of mappings from search-space parameters to keep ratios."""
    example = f"{{{next(iter(space.params), 'all')}: 0.5}}"
    for policy in policies:
        if not isinstance(policy, dict):
            problem = f"got {policy!r}"
        elif unknown := sorted(map(str, set(policy) - set(space.params) - {"macs_ratio"})):
            problem = f"unknown parameter(s) {unknown[:3]} (parameters are e.g. {', '.join(list(space.params)[:4])})"
        elif bad := [
            k for k, v in policy.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1
        ]:
            problem = f"{bad[0]}: {policy[bad[0]]!r} is not a keep ratio in (0, 1]"
        else:
            continue
        raise UserError(
            f"search.warm_start entries must map search-space parameters to keep ratios, e.g. {example}; {problem}"
        )


def warm_start_policies(env: Any, search: SearchSettings, with_global: bool = False) -> list[dict[str, float]]:
    """The policies a search starts with, in order: the uniform one (at the top of the MACs range in Pareto
    mode), the global ranking's when ``with_global``, then each ``search.warm_start`` policy completed with
    the uniform ratios. ``env`` is the search's :class:`~autoprune.search.trial.SearchEnv`."""
    uniform = env.space.uniform_values()
    if search.multi_objective:
        uniform["macs_ratio"] = env.macs_ratio_range()[1]
    policies = [uniform]
    if with_global:
        # The global-ranking policy: as strong a start as the uniform one, often stronger at low budgets.
        policies.append(env.global_values())
    check_warm_start(search.warm_start, env.space)
    return policies + [{**uniform, **policy} for policy in search.warm_start]
