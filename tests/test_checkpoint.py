"""Pruning a user's own trained model (model.checkpoint): formats, architecture inference, end to end."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

import autoprune
from autoprune.cli import build_parser, main
from autoprune.config import load_config
from autoprune.errors import UserError
from autoprune.models import build_model, load_checkpoint_model
from autoprune.models.checkpoint import backbone_state, infer_arch, read_checkpoint
from autoprune.pruning.serialize import save_pruned
from autoprune_plugins.backbones import TORCHVISION_RESNETS, _resnet10, _set_last_stride

README = Path(__file__).resolve().parents[1] / "README.md"


def _trained_like(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and BatchNorm statistics, so equal features mean every tensor was imported."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                t.copy_(
                    torch.rand(t.shape, generator=gen) * 0.5 + 0.5
                    if "running_var" in name
                    else torch.randn(t.shape, generator=gen) * 0.05
                )
    return net.eval()


def _source_net(arch: str, last_stride: int) -> torch.nn.Module:
    """A torchvision ResNet whose output is the pooled feature (torchreid's resnet in eval mode)."""
    net = getattr(tvm, arch)(weights=None)
    _set_last_stride(net, last_stride)
    net.fc = torch.nn.Identity()
    return _trained_like(net)


def _optimizer_state(net: torch.nn.Module) -> dict:
    """A real optimizer's state (step counts, moments, param groups), as training leaves it in a checkpoint."""
    params = [torch.nn.Parameter(p.detach().clone()) for p in net.parameters()]  # the net itself stays as is
    opt = torch.optim.Adam(params, lr=1e-3)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    return opt.state_dict()


def _torchreid_file(path: Path, net: torch.nn.Module, num_classes: int = 751) -> Path:
    """torchreid's save_checkpoint: DataParallel's module. prefix, a classifier, optimizer state, epoch, rank1."""
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    state["module.classifier.weight"] = torch.randn(num_classes, 512)
    state["module.classifier.bias"] = torch.zeros(num_classes)
    optimizer = _optimizer_state(net)
    torch.save({"state_dict": state, "epoch": 60, "rank1": 0.873, "optimizer": optimizer}, path)
    return path


def _fastreid_file(path: Path, net: torch.nn.Module, num_classes: int = 751) -> Path:
    """fast-reid's Checkpointer: {"model": backbone.* + heads.* + pixel stats, "optimizer", "iteration"}."""
    feat = 2048 if hasattr(net.layer1[0], "conv3") else 512
    state = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    state.update(
        {
            "heads.bottleneck.0.weight": torch.ones(feat),
            "heads.bottleneck.0.bias": torch.zeros(feat),
            "heads.bottleneck.0.running_mean": torch.randn(feat),
            "heads.bottleneck.0.running_var": torch.ones(feat),
            "heads.weight": torch.randn(num_classes, feat),
            "pixel_mean": torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1),
            "pixel_std": torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1),
        }
    )
    torch.save(
        {"model": state, "optimizer": _optimizer_state(net), "scheduler": {"last_epoch": 59}, "iteration": 12000}, path
    )
    return path


def _cfg(path: Path, *overrides: str) -> dict:
    return load_config(preset="smoke", overrides=[f"model.checkpoint={json.dumps(str(path))}", *overrides])


@pytest.mark.parametrize("fmt, arch, last_stride", [("torchreid", "resnet18", 2), ("fast-reid", "resnet50", 1)])
def test_checkpoint_gives_the_source_networks_features(tmp_path, fmt, arch, last_stride):
    src = _source_net(arch, last_stride)
    write = _torchreid_file if fmt == "torchreid" else _fastreid_file
    path = write(tmp_path / "model.pth.tar-60", src)
    cfg = _cfg(path, f"model.last_stride={last_stride}")
    assert cfg["model"]["arch"] == arch  # inferred: model.arch not given
    model = load_checkpoint_model(cfg["model"], num_classes=7).eval()
    x = torch.randn(3, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, feats, embedding = src(x), model.features(x), model(x)
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-5)
    # the head is new: a fresh BNNeck in eval mode keeps the direction, the classifier has the target's classes
    assert torch.nn.functional.cosine_similarity(embedding, expected).min() > 0.9999
    assert model.classifier.out_features == 7
    assert read_checkpoint(path).format == fmt
    assert read_checkpoint(path).normalisation_note() is None  # fast-reid's default pixel statistics: ImageNet's


def test_fastreid_pixel_statistics_other_than_imagenets_are_noted(tmp_path):
    src = tvm.resnet18(weights=None)
    path = _fastreid_file(tmp_path / "model_final.pth", src)
    blob = torch.load(path, weights_only=True)
    blob["model"]["pixel_mean"] = torch.tensor([127.5, 127.5, 127.5]).view(1, 3, 1, 1)
    torch.save(blob, path)
    note = read_checkpoint(path).normalisation_note()
    assert note is not None and "mean [127.5, 127.5, 127.5]" in note and "autoprune uses ImageNet's" in note


def test_autoprune_model_file_comes_back_as_saved(tmp_path):
    model = build_model("resnet10", 5, last_stride=2, pooling="gem")
    _trained_like(model)
    save_pruned(model, tmp_path / "baseline.pt")
    cfg = _cfg(tmp_path / "baseline.pt")
    assert (cfg["model"]["arch"], cfg["model"]["last_stride"], cfg["model"]["pooling"]) == ("resnet10", 2, "gem")
    loaded = load_checkpoint_model(cfg["model"], num_classes=3).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))  # BNNeck and GeM kept, not only the backbone
    with pytest.raises(UserError, match="model.last_stride is 1 but .* was built with last stride 2"):
        _cfg(tmp_path / "baseline.pt", "model.last_stride=1")


@pytest.mark.parametrize("arch", ["resnet10", *TORCHVISION_RESNETS])
def test_arch_is_inferred_for_every_supported_architecture(arch):
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        net = _resnet10() if arch == "resnet10" else getattr(tvm, arch)(weights=None)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    name, seen = infer_arch(backbone_state(state, "x.pth"))
    assert name == arch, seen


def _save_resnet18(tmp_path: Path, prefixes: tuple[str, ...] = ("module.",)) -> Path:
    net = tvm.resnet18(weights=None).state_dict()
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {p + k: v for p in prefixes for k, v in net.items()}}, path)
    return path


def test_arch_disagreeing_with_the_checkpoint_is_refused(tmp_path):
    path = _save_resnet18(tmp_path)
    with pytest.raises(
        UserError, match=r"model.arch is resnet34 but .*r18.pth holds a resnet18 \(basic blocks 2-2-2-2"
    ):
        _cfg(path, "model.arch=resnet34")
    assert _cfg(path, "model.arch=resnet18")["model"]["arch"] == "resnet18"


def test_arch_in_a_config_file_is_stated_but_a_presets_is_not(tmp_path):
    path = _save_resnet18(tmp_path)
    (tmp_path / "my.yaml").write_text(f"model: {{arch: resnet34, checkpoint: {json.dumps(str(path))}}}\n")
    with pytest.raises(UserError, match="model.arch is resnet34 but"):
        load_config(tmp_path / "my.yaml")
    cfg = load_config(preset="demo", overrides=[f"model.checkpoint={path}"])  # the demo trains a resnet18, stride 2
    assert (cfg["model"]["arch"], cfg["model"]["last_stride"]) == ("resnet18", 1)


def test_two_networks_in_one_file_are_ambiguous(tmp_path):
    path = _save_resnet18(tmp_path, ("model_1.", "model_1_ema."))  # a mean-teacher checkpoint
    with pytest.raises(UserError, match=r"is ambiguous: it holds 2 networks \(under 'model_1.', 'model_1_ema.'\)"):
        _cfg(path)


def test_unknown_structure_needs_model_arch(tmp_path):
    net = tvm.resnet18(weights=None).state_dict()
    path = tmp_path / "odd.pth"
    torch.save({k: v for k, v in net.items() if not k.startswith("layer4.1.")}, path)  # 2-2-2-1 blocks
    with pytest.raises(UserError, match=r"cannot tell the architecture of .*\(basic blocks 2-2-2-1.*set model.arch"):
        _cfg(path)
    with pytest.raises(UserError, match="does not match backbone resnet18: 10 missing keys"):
        load_checkpoint_model(_cfg(path, "model.arch=resnet18")["model"], 2)  # strict: no partial import
    torch.save({"osnet.conv1.weight": torch.zeros(1)}, tmp_path / "osnet.pth")
    with pytest.raises(UserError, match="holds no ResNet-family backbone"):
        _cfg(tmp_path / "osnet.pth")


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["model.weights=/x.pth"], "model.weights (an initialisation for training) and model.checkpoint"),
        (["model.checkpoint=/nonexistent.pth"], "model.checkpoint: /nonexistent.pth does not exist"),
        (["model.checkpoint=' '"], "model.checkpoint is empty"),
    ],
)
def test_checkpoint_config_errors(tmp_path, overrides, fragment):
    path = _save_resnet18(tmp_path)
    with pytest.raises(UserError) as err:
        _cfg(path, *overrides)
    assert fragment in str(err.value)


def test_null_source_needs_a_checkpoint(tmp_path):
    with pytest.raises(UserError, match=r"data.source must .* got None \(data.source: null needs model.checkpoint"):
        load_config(preset="smoke", overrides=["data.source=null"])
    assert _cfg(_save_resnet18(tmp_path), "data.source=null")["data"]["source"] is None


def test_search_shortcuts_map_to_config_keys_and_pick_the_checkpoint_preset(tmp_path):
    from autoprune.cli import _default_out, _load

    path = _save_resnet18(tmp_path)
    args = build_parser().parse_args(
        [
            "search",
            "--checkpoint",
            str(path),
            "--target",
            "market1501:/data/M",
            "--budget",
            "0.3",
            "--input-size",
            "96",
            "48",
        ]
    )
    cfg = _load(args)
    assert cfg["model"]["checkpoint"] == str(path) and cfg["model"]["arch"] == "resnet18"
    assert cfg["data"]["target"] == "market1501:/data/M" and cfg["data"]["source"] is None  # checkpoint preset
    assert cfg["budget"]["macs_ratio"] == 0.3 and cfg["model"]["input_size"] == [96, 48]
    assert _default_out(args) == str(Path("runs") / "r18.pth")
    assert load_config(overrides=[f"model.checkpoint={path}", "data.target=synth:B"])["model"]["input_size"] == [
        256,
        128,
    ]
    usage = build_parser()._subparsers._group_actions[0].choices["search"].format_help()
    options = re.findall(r"^  (--[a-z-]+)", usage, re.MULTILINE)
    assert options[:6] == ["--checkpoint", "--target", "--budget", "--arch", "--input-size", "--source"]


def test_direct_transfer_without_a_source_is_refused_up_front(tmp_path, capsys):
    path = _save_resnet18(tmp_path)
    rc = main(
        [
            "search",
            "--preset",
            "smoke",
            "--checkpoint",
            str(path),
            "--set",
            "data.source=null",
            "--set",
            "trial.scenario=direct_transfer",
            "--out",
            str(tmp_path / "run"),
            "--set",
            f"data.root={tmp_path}",
        ]
    )
    assert rc == 2
    assert (
        "trial.scenario 'direct_transfer' prunes on the source domain, but data.source is null"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "synth").exists()  # refused before any data was read


def test_a_retrained_checkpoint_under_the_same_name_is_another_study(tmp_path):
    from autoprune.search.run import claim_run_dir, prepare_run_dir

    path = _save_resnet18(tmp_path)
    cfg = _cfg(path)
    claim_run_dir(cfg, prepare_run_dir(cfg, tmp_path / "run"))
    prepare_run_dir(cfg, tmp_path / "run")  # the same file: the same study, resumed
    torch.save({"state_dict": {k: v + 1 for k, v in read_checkpoint(path).state.items()}}, path)
    with pytest.raises(UserError, match="holds a search with another config"):
        prepare_run_dir(_cfg(path), tmp_path / "run")


def _readme_example() -> str:
    text = README.read_text()
    section = text.split("## Prune your own model", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)[0]


def test_readme_feature_extraction_example_runs(tmp_path, monkeypatch):
    code = _readme_example()
    assert len(code.strip().splitlines()) <= 5
    path = re.search(r'"(runs/[^"]+\.pt)"', code).group(1)
    model = _trained_like(build_model("resnet10", 4))
    save_pruned(model, tmp_path / path)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 -- the README example is the code under test
    features = scope["features"]
    assert features.shape[1] == model.feat_dim and features.shape[0] >= 1
    torch.testing.assert_close(features.norm(dim=1), torch.ones(features.shape[0]))


@pytest.mark.slow
def test_search_from_a_checkpoint_without_source_data(tmp_path, capsys):
    src = _trained_like(build_model("resnet10", 4, last_stride=1))
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    path = tmp_path / "model.pth.tar-60"
    torch.save({"state_dict": state, "epoch": 60, "optimizer": _optimizer_state(src)}, path)
    out, root = tmp_path / "run", tmp_path / "data"
    rc = main(
        [
            "search",
            "--preset",
            "smoke",
            "--checkpoint",
            str(path),
            "--target",
            "synth:B",
            "--budget",
            "0.5",
            "--quiet",
            "--out",
            str(out),
            "--set",
            "data.source=null",
            "--set",
            f"data.root={root}",
            "--set",
            "search.n_trials=1",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    ck = report["baseline"]["checkpoint"]
    assert ck == {
        "path": str(path.resolve()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "format": "torchreid",
        "arch": "resnet10",
    }
    assert report["baseline"]["source"] is None
    assert "no source training" in printed and "baseline: training" not in printed
    assert f"torchreid checkpoint {path.resolve()} (sha256 {ck['sha256'][:16]})" in printed  # the summary
    # nothing trained or even read on a source: no baseline cache, only the target's synthetic data written
    assert not (root / "baselines").exists()
    assert [p.name[0] for p in (root / "synth").iterdir()] == ["B"]
    model = autoprune.load_pruned(str(out / report["best"]["model"]))
    assert model(torch.randn(2, 3, 64, 32)).shape[0] == 2
    assert report["best"]["macs"] <= report["budget"]["macs"]
