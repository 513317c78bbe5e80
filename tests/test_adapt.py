"""Adapt once: the target-adapted unpruned model is computed once per search, kept in the run directory,
resumed after an interruption, shared by trials (a copy each, one frozen teacher) and named in the report."""

from __future__ import annotations

import json

import pytest
import torch

from autoprune.errors import UserError

TINY = [
    "train.epochs=1",
    "train.precision=fp32",
    "train.max_batches_per_epoch=2",
    "model.input_size=[32, 16]",
    "trial.criterion_batches=1",
    "trial.eval_every_epoch=false",
    "trial.finetune_epochs=1",
    "trial.scenario=finetune_then_prune",
    "trial.adapt_epochs=2",
]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Data and a source baseline for the module (tiny), built once."""
    from autoprune.config import load_config
    from autoprune.data.domain import load_domains
    from autoprune.engine.baseline import get_baseline

    root = tmp_path_factory.mktemp("adapt-data")
    cfg = load_config(preset="smoke", overrides=[f"data.root={root}", *TINY])
    source, target = load_domains(cfg)
    baseline, _ = get_baseline(cfg, source, torch.device("cpu"), progress=False, log=lambda m: None)
    return root, source, target, baseline


def make_env(parts, *sets):
    from autoprune.config import load_config
    from autoprune.host import get_host
    from autoprune.search.trial import SearchEnv

    root, source, target, baseline = parts
    cfg = load_config(preset="smoke", overrides=[f"data.root={root}", *TINY, *sets])
    return SearchEnv(cfg, get_host(), torch.device("cpu"), source, target, baseline)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_adapted_once_then_read_back_by_another_process(parts, tmp_path):
    from autoprune.search.adapt import load_or_adapt

    env = make_env(parts)
    lines = []
    meta = load_or_adapt(env, tmp_path, log=lines.append)
    assert (
        meta["epochs"] == 2 and (tmp_path / "adapted.pt").is_file() and not (tmp_path / "adapted.partial.pt").exists()
    )
    assert any("fine-tuning the unpruned model" in line for line in lines)
    other = make_env(parts)  # a worker: same config, same run directory
    other.adapt = lambda *a, **k: pytest.fail("the adapted model was trained again")
    load_or_adapt(other, tmp_path, log=lines.append)
    assert "reusing" in lines[-1]
    assert same(weights(other.adapted), weights(env.adapted))
    # the teacher: frozen, eval mode, a separate copy (trials train their own copy of `adapted`)
    assert not other.teacher.training and not any(p.requires_grad for p in other.teacher.parameters())
    assert other.teacher is not other.adapted


def test_another_adaptation_recipe_is_not_reused(parts, tmp_path):
    from autoprune.search.adapt import load_or_adapt

    load_or_adapt(make_env(parts), tmp_path, log=lambda m: None)
    lines = []
    load_or_adapt(make_env(parts, "trial.adapt_epochs=1"), tmp_path, log=lines.append)
    assert any("for 1 epochs" in line for line in lines)
    assert json.loads((tmp_path / "adapted.json").read_text())["epochs"] == 1


def test_off_without_adapt_epochs(parts, tmp_path):
    from autoprune.search.adapt import load_or_adapt

    env = make_env(parts, "trial.adapt_epochs=0")
    assert load_or_adapt(env, tmp_path) is None and env.adapted is None and env.teacher is None
    assert not (tmp_path / "adapted.pt").exists()


def test_a_link_in_the_run_directory_is_refused(parts, tmp_path):
    from autoprune.search.adapt import load_or_adapt

    outside = tmp_path / "elsewhere.pt"
    outside.write_bytes(b"")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "adapted.pt").symlink_to(outside)
    with pytest.raises(UserError, match="symbolic link"):
        load_or_adapt(make_env(parts), run_dir, log=lambda m: None)


def test_interrupted_adaptation_resumes_to_the_same_model(parts, tmp_path):
    from autoprune.search import adapt as adapt_mod

    straight = make_env(parts)
    (tmp_path / "straight").mkdir()
    adapt_mod.load_or_adapt(straight, tmp_path / "straight", log=lambda m: None)

    env = make_env(parts)
    real = env.adapt

    def killed_after_one_epoch(model, resume=None, checkpoint=None):
        def ckpt(state):
            checkpoint(state)
            raise KeyboardInterrupt

        return real(model, resume=resume, checkpoint=ckpt)

    env.adapt = killed_after_one_epoch
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(KeyboardInterrupt):
        adapt_mod.load_or_adapt(env, run_dir, log=lambda m: None)
    assert (run_dir / "adapted.partial.pt").is_file() and not (run_dir / "adapted.pt").exists()
    lines = []
    resumed = make_env(parts)
    adapt_mod.load_or_adapt(resumed, run_dir, log=lines.append)
    assert any("resuming the adaptation at epoch 2/2" in line for line in lines)
    assert same(weights(resumed.adapted), weights(straight.adapted))


def test_adapt_once_is_the_per_trial_adaptation_it_replaces(parts, tmp_path):
    """finetune_then_prune on the shared adapted model gives exactly what adapting inside the trial gave."""
    from autoprune.search.adapt import load_or_adapt
    from autoprune.search.trial import TrialServices

    once = make_env(parts, "trial.adapt_epochs=1")
    load_or_adapt(once, tmp_path, log=lambda m: None)
    per_trial = make_env(parts, "trial.adapt_epochs=0")  # the old way: each trial adapts its own copy first
    values = once.space.uniform_values()
    epochs: list[int] = []
    real_fit = TrialServices._fit

    def counting_fit(self, model, domain, n_epochs, *args, **kwargs):
        epochs.append(n_epochs)
        return real_fit(self, model, domain, n_epochs, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TrialServices, "_fit", counting_fit)
        a = once.run(values)
        trained_once, epochs[:] = list(epochs), []
        b = per_trial.run(values)
    assert a.counts == b.counts
    assert same(weights(a.model), weights(b.model))
    assert all(a.metrics["target"]["val"][k] == b.metrics["target"]["val"][k] for k in ("rank1", "mAP"))
    # the trial trains the recovery epochs only; adapting inside the trial trained the adaptation epoch too
    assert sum(trained_once) == once.trial.finetune_epochs and sum(epochs) == sum(trained_once) + 1


def test_trials_distil_from_the_teacher_without_changing_it(parts, tmp_path):
    from autoprune.search.adapt import load_or_adapt

    plain = make_env(parts)
    distilled = make_env(parts, "trial.distill.logit=1.0", "trial.distill.embedding=1.0")
    for env in (plain, distilled):
        load_or_adapt(env, tmp_path, log=lambda m: None)
    teacher_before, adapted_before = weights(distilled.teacher), weights(distilled.adapted)
    values = plain.space.uniform_values()
    a, b = plain.run(values), distilled.run(values)
    assert a.counts == b.counts and not same(weights(a.model), weights(b.model))
    assert same(weights(distilled.teacher), teacher_before) and same(weights(distilled.adapted), adapted_before)


@pytest.mark.slow
def test_search_reports_the_recipe_and_an_equal_epoch_reference(parts, tmp_path):
    from autoprune.cli import main

    root = parts[0]
    out = tmp_path / "run"
    args = [
        "search",
        "--preset",
        "smoke",
        "--quiet",
        "--out",
        str(out),
        "--set",
        f"data.root={root}",
        "--set",
        "search.n_trials=1",
        "--set",
        "search.final_epochs=2",
        "--set",
        "trial.distill.logit=1.0",
    ]
    for s in TINY:
        args += ["--set", s]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"]["scenario"] == "finetune_then_prune" and report["recipe"]["adapt_epochs"] == 2
    assert report["recipe"]["recovery_epochs"] == 2 and report["recipe"]["distill"]["logit"] == 1.0
    assert report["baseline"]["recovery_epochs"] == 2 and report["baseline"]["adaptation"]["epochs"] == 2
    assert (out / "adapted.pt").is_file()
    from autoprune.search.report import summary_table

    assert "finetune_then_prune, adapted once (2 target epochs), distillation (logit KL x1 at T=4)" in summary_table(
        report
    )
