"""The smoke preset end to end: what `autoprune search --preset smoke` writes, checked for real."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from collections.abc import Mapping

import pytest
import torch

import autoprune
from autoprune.pruning.flops import count_macs

pytestmark = pytest.mark.slow


def test_report_schema_and_budget(smoke_run):
    out, _ = smoke_run
    report = json.loads((out / "report.json").read_text())
    assert report["budget"] == {**report["budget"], "macs_ratio": 0.5, "unit": "MACs"}
    base = report["baseline"]
    assert base["arch"] == "resnet10" and base["macs"] > 0 and base["params"] > 0
    for key in ("target", "direct_transfer"):
        assert 0.0 <= base[key]["rank1"] <= 1.0 and 0.0 <= base[key]["mAP"] <= 1.0
    trials = report["trials"]
    assert len(trials) == 3
    assert sorted(t["number"] for t in trials) == [0, 1, 2]
    for t in trials:
        assert t["state"] in ("COMPLETE", "PRUNED", "FAIL")
        if t["state"] == "COMPLETE":
            assert t["macs_ratio"] <= 0.5
            assert t["macs"] <= report["budget"]["macs"]
            assert 0.0 <= t["target"]["rank1"] <= 1.0
            assert set(t["policy"]) == set(report["best"]["policy"])
            assert t["error"] is None
    # trial 0 is the warm start: the uniform policy
    assert report["uniform"]["trial"] == 0
    best = report["best"]
    assert best["macs_ratio"] <= 0.5 and best["macs"] <= report["budget"]["macs"]
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    # selected on the held-out validation identities, reported on the untouched test split
    assert best["target_val"]["rank1"] == max(t["target_val"]["rank1"] for t in complete)
    chosen = next(t for t in complete if t["number"] == best["trial"])
    assert best["target"] == chosen["target"]


def test_best_model_reloads_with_reported_macs_and_rank1(smoke_run):
    out, root = smoke_run
    report = json.loads((out / "report.json").read_text())
    best = report["best"]
    model = autoprune.load_pruned(str(out / best["model"]))
    assert count_macs(model, (64, 32))[0] == best["macs"]
    assert sum(p.numel() for p in model.parameters()) == best["params"]
    # the model is physically smaller than the baseline
    assert best["params"] < report["baseline"]["params"]
    # re-score on the target with the same data: the reported rank-1 is reproduced
    from autoprune.config import load_config
    from autoprune.data.domain import build_domain
    from autoprune.engine.evaluate import evaluate_domain

    cfg = load_config(preset="smoke", overrides=[f"data.root={root / 'data'}"])
    target = build_domain(cfg["data"]["target"], cfg)
    metrics = evaluate_domain(model, target.query, target.gallery, torch.device("cpu"))
    assert metrics["rank1"] == pytest.approx(best["target"]["rank1"], abs=1e-6)
    assert metrics["mAP"] == pytest.approx(best["target"]["mAP"], abs=1e-6)


def test_run_directory_contents(smoke_run):
    out, _ = smoke_run
    for name in (
        "config.yaml",
        "trials.csv",
        "study.db",
        "model/pruned.pt",
        "model/pruned.torchscript.pt",
        "progress.png",
        "comparison.png",
        "policy.png",
    ):
        assert (out / name).is_file(), name
    ts = torch.jit.load(str(out / "model/pruned.torchscript.pt"))
    model = autoprune.load_pruned(str(out / "model/pruned.pt"))
    x = torch.randn(2, 3, 64, 32)
    assert torch.allclose(ts(x), model(x), atol=1e-5)
    # only the best trial's model is kept
    assert len(list((out / "trials").glob("*.pt"))) == 1


def test_rerun_resumes_without_repeating(smoke_run, capsys):
    out, root = smoke_run
    from autoprune.cli import main

    rc = main(
        [
            "search",
            "--preset",
            "smoke",
            "--quiet",
            "--out",
            str(out),
            "--set",
            f"data.root={root / 'data'}",
            "--set",
            "search.n_trials=4",
        ]
    )
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert [t["number"] for t in report["trials"]] == [0, 1, 2, 3]
    policies = [json.dumps(t["values"], sort_keys=True) for t in report["trials"]]
    assert len(set(policies)) == 4  # the resumed process did not replay the first one's samples
    assert "baseline: reusing" in capsys.readouterr().out


def test_arch_override_does_what_it_says(tmp_path):
    from autoprune.cli import main

    out = tmp_path / "r34"
    rc = main(
        [
            "search",
            "--preset",
            "smoke",
            "--quiet",
            "--out",
            str(out),
            "--set",
            "model.arch=resnet34",
            "--set",
            "search.n_trials=2",
            "--set",
            f"data.root={tmp_path / 'data'}",
            "--set",
            "train.epochs=1",
        ]
    )
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["baseline"]["arch"] == "resnet34"
    assert len(report["trials"]) == 2
    assert "layer3.5.conv1" in report["best"]["policy"]  # ResNet-34 has six blocks in layer3


def test_pareto_mode_gives_a_valid_front(smoke_run, capsys):
    """rank1+macs: trials sample their own MACs target under the budget; the front is non-dominated."""
    from autoprune.cli import main

    _, root = smoke_run
    out = root / "pareto"
    rc = main(
        [
            "search",
            "--preset",
            "smoke",
            "--quiet",
            "--out",
            str(out),
            "--set",
            f"data.root={root / 'data'}",
            "--set",
            "search.objectives=rank1+macs",
            "--set",
            "search.n_trials=4",
        ]
    )
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    done = [t for t in report["trials"] if t["state"] == "COMPLETE"]
    assert len({round(t["macs_ratio"], 3) for t in done}) > 1  # the MACs target is searched too
    assert all(t["macs_ratio"] <= 0.5 for t in done)
    front = [t for t in done if t["number"] in report["pareto_front"]]
    assert front
    for f in front:
        for o in done:
            better = (
                o["target_val"]["rank1"] >= f["target_val"]["rank1"]
                and o["macs"] <= f["macs"]
                and (o["target_val"]["rank1"] > f["target_val"]["rank1"] or o["macs"] < f["macs"])
            )
            assert not better, (f["number"], o["number"])
    rc = main(["report", str(out), "--budget", "0.3"])
    text = capsys.readouterr().out
    cheap = [t for t in done if t["macs_ratio"] <= 0.3]
    assert (rc == 0 and "best at <= 30% MACs" in text) if cheap else rc == 2
    assert (out / "report.md").is_file() or not cheap


def test_final_round_chooses_on_validation_after_the_final_fine_tune(smoke_run, tmp_path, capsys):
    """The top ``search.finalists`` trials and the uniform policy get the final fine-tune; the best of them
    on validation afterwards is the model; a rerun trains none of them again."""
    from autoprune.cli import main

    _, root = smoke_run
    args = [
        "search",
        "--preset",
        "smoke",
        "--quiet",
        "--out",
        str(tmp_path / "run"),
        "--set",
        f"data.root={root / 'data'}",
        "--set",
        "search.n_trials=4",
        "--set",
        "search.final_epochs=1",
        "--set",
        "search.finalists=2",
    ]
    assert main(args) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    complete = [t for t in report["trials"] if t["state"] == "COMPLETE"]
    ranked = sorted(
        complete, key=lambda t: (t["target_val"]["rank1"], t["target_val"]["mAP"], -t["number"]), reverse=True
    )
    expected = [t["number"] for t in ranked[:2]]
    expected += [] if 0 in expected else [0]
    finals = report["finalists"]
    assert [f["trial"] for f in finals] == expected
    chosen = [f for f in finals if f["chosen"]]
    assert len(chosen) == 1
    assert chosen[0]["target_val"]["rank1"] == max(f["target_val"]["rank1"] for f in finals)
    best = report["best"]
    assert best["trial"] == chosen[0]["trial"] and best["final_epochs"] == 1
    # the saved model is the chosen finalist's: re-evaluated, it scores what the final round measured
    assert best["target"]["rank1"] == pytest.approx(chosen[0]["target"]["rank1"], abs=1e-6)
    assert best["target_val"]["mAP"] == pytest.approx(chosen[0]["target_val"]["mAP"], abs=1e-6)
    assert report["uniform"]["final_target"] == next(f["target"] for f in finals if f["trial"] == 0)
    assert not list((tmp_path / "run" / "model").glob("final_*.pt"))  # only the chosen model is kept
    capsys.readouterr()
    assert main(args) == 0
    assert "final: fine-tuning" not in capsys.readouterr().out


def test_report_records_plugin_provenance_and_versions(smoke_run):
    out, _ = smoke_run
    report = json.loads((out / "report.json").read_text())
    used = {(p["kind"], p["name"]): p for p in report["plugins"]}
    assert set(used) == {
        ("criterion", "l1"),
        ("strategy", "one_shot"),
        ("scenario", "prune_then_finetune"),
        ("dataset", "synth"),
        ("backbone", "resnet10"),
    }
    version = importlib.metadata.version("autoprune")
    assert all(p["distribution"] == "autoprune" and p["version"] == version for p in used.values())
    env = report["environment"]
    assert env["torch"] == importlib.metadata.version("torch") and env["optuna"] == importlib.metadata.version("optuna")
    assert env["torch-pruning"] == importlib.metadata.version("torch-pruning") and env["device"] == "cpu"
    assert env["python"] == platform.python_version()


def test_a_third_party_plugin_runs_in_a_search_with_its_options(smoke_run, example_installed, tmp_path, monkeypatch):
    """The example package, installed, is searched with: its options reach the instances and the report."""
    import autoprune_example

    from autoprune.cli import main

    seen: dict[str, object] = {}
    for cls in (autoprune_example.GradualStrategy, autoprune_example.WarmupThenPruneScenario):

        def run(self, *args, _run=cls.run, _name=cls.name):  # (model, ctx) for a strategy, (ctx) for a scenario
            seen[_name] = dict(self.options)
            if isinstance(getattr(args[-1], "options", None), Mapping):
                seen[_name + " ctx"] = dict(args[-1].options)
            return _run(self, *args)

        monkeypatch.setattr(cls, "run", run)
    _, root = smoke_run
    out = tmp_path / "run"
    rc = main(
        [
            "search",
            "--preset",
            "smoke",
            "--quiet",
            "--out",
            str(out),
            "--set",
            f"data.root={root / 'data'}",
            "--set",
            "search.n_trials=2",
            "--set",
            "trial.criterion=example_mean_abs",
            "--set",
            "trial.strategy=example_gradual",
            "--set",
            "trial.scenario=example_warmup_then_prune",
            "--set",
            "plugins.example_gradual.rounds=1",
            "--set",
            "plugins.example_warmup_then_prune.warmup=0",
        ]
    )
    assert rc == 0
    assert seen == {
        "example_gradual": {"rounds": 1},
        "example_warmup_then_prune": {"warmup": 0.0},
        "example_warmup_then_prune ctx": {"warmup": 0.0},
    }
    report = json.loads((out / "report.json").read_text())
    assert report["best"] is not None
    used = {p["name"]: p for p in report["plugins"]}
    assert used["example_gradual"] == {
        "name": "example_gradual",
        "kind": "strategy",
        "distribution": "autoprune-example-plugin",
        "version": "0.1.0",
        "options": {"rounds": 1},
    }
    assert used["example_mean_abs"]["options"] == {"bn_weight": 0.0}
    assert used["example_warmup_then_prune"]["options"] == {"warmup": 0.0}
