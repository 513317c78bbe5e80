"""The choice lists of config keys, each kept once: :mod:`autoprune.config` validates against them and the
code that acts on a choice (the samplers, the pruners, the objectives, precision, pooling) imports them from
here. A neutral module that imports nothing, so the core, the engine and the search can all share it."""

from __future__ import annotations

POOLINGS = ("avg", "gem")  # model.pooling
LAST_STRIDES = (1, 2)  # model.last_stride
OPTIMIZERS = ("adam", "sgd")  # train.optimizer
SCHEDULES = ("cosine", "step", "constant")  # train.schedule
PRECISIONS = ("auto", "bf16", "fp32")  # train.precision
BACKENDS = ("optuna", "ray")  # search.backend
SAMPLERS = ("tpe", "random", "cmaes", "gp", "nsga2")  # search.sampler
PRUNERS = ("median", "hyperband", "successive_halving", "none")  # search.pruner
OBJECTIVES = ("rank1", "mAP", "mix")  # search.objective: what selects trials
MULTI_OBJECTIVE = "rank1+macs"  # search.objectives for the Pareto search
OBJECTIVE_SETS = ("rank1", MULTI_OBJECTIVE)  # search.objectives
