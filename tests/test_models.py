from __future__ import annotations

from functools import partial

import pytest
import torch

from autoprune.errors import UserError
from autoprune.models import build_model, load_backbone_weights
from autoprune.models.checkpoint import backbone_state
from autoprune.testing import BackboneContract
from autoprune_plugins.backbones import _resnet10, _torchvision

SIZE = (64, 32)


@pytest.mark.parametrize(
    "arch, dim",
    [
        ("resnet10", 512),
        ("resnet18", 512),
        ("resnet34", 512),
        ("resnet50", 2048),
        ("resnext50_32x4d", 2048),
        ("wide_resnet50_2", 2048),
    ],
)
def test_feature_dims_and_shapes(arch, dim):
    model = build_model(arch, 7)
    assert model.feat_dim == dim
    model.train()
    logits, feat = model(torch.randn(4, 3, *SIZE))
    assert logits.shape == (4, 7) and feat.shape == (4, dim)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *SIZE)).shape == (2, dim)


def test_last_stride_one_doubles_final_map():
    s1 = build_model("resnet18", 2, last_stride=1).backbone
    s2 = build_model("resnet18", 2, last_stride=2).backbone
    x = torch.randn(1, 3, 128, 64)

    def final_map(b):
        y = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(y)))).shape[-2:]

    assert tuple(final_map(s1)) == (8, 4) and tuple(final_map(s2)) == (4, 2)


def test_bnneck_train_vs_eval():
    torch.manual_seed(0)
    model = build_model("resnet10", 3)
    assert not model.bnneck.bias.requires_grad  # BNNeck has no shift
    x = torch.randn(8, 3, *SIZE)
    model.train()
    _, feat = model(x)
    model.eval()
    with torch.no_grad():
        emb = model(x)
        expected = model.bnneck(model.features(x))
    assert torch.allclose(emb, expected)
    assert not torch.allclose(emb, feat.detach())  # inference uses the features after the BNNeck


def test_gem_pooling_between_avg_and_max():
    from autoprune.models.reid import GeM

    x = torch.rand(2, 4, 3, 3) + 0.1
    g = GeM(p=3.0)(x).flatten(1)
    assert torch.all(g >= x.mean(dim=(2, 3)) - 1e-6) and torch.all(g <= x.amax(dim=(2, 3)) + 1e-6)


def _torchreid_state(arch: str) -> dict[str, torch.Tensor]:
    """A synthetic torchreid/fast-reid style checkpoint: right shapes, prefixed keys, a classifier."""
    ref = build_model(arch, 2).backbone.state_dict()
    state = {f"module.backbone.{k}": torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in ref.items()}
    state["module.classifier.weight"] = torch.zeros(751, 512)
    return {"state_dict": state, "epoch": 60}


def test_torchreid_fastreid_checkpoint_loads(tmp_path):
    path = tmp_path / "model.pth.tar"
    torch.save(_torchreid_state("resnet18"), path)
    model = build_model("resnet18", 5, weights=str(path))
    assert torch.all(model.backbone.layer3[0].conv1.weight == 0.5)


def test_key_mapping():
    z = torch.zeros(1)
    mapped = backbone_state(
        {
            "module.backbone.layer1.0.conv1.weight": z,
            "module.backbone.conv1.weight": z,
            "module.backbone.bn1.num_batches_tracked": z,
            "module.classifier.weight": z,
            "module.heads.bnneck.weight": z,
            "module.backbone.fc.weight": z,
        },
        "x.pth",
    )
    assert set(mapped) == {"layer1.0.conv1.weight", "conv1.weight"}
    assert set(backbone_state({"base.layer1.0.conv1.weight": z, "base.bn1.bias": z}, "x.pth")) == {
        "layer1.0.conv1.weight",
        "bn1.bias",
    }


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(_torchreid_state("resnet50"), path)
    with pytest.raises(UserError, match="does not match backbone resnet18"):
        build_model("resnet18", 5, weights=str(path))


def test_missing_imagenet_weights_say_where_to_put_them(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match=r"place resnet18-.*\.pth in .*hub/checkpoints"):
        build_model("resnet18", 5, weights="imagenet")


def test_imagenet_weights_load_from_local_cache(monkeypatch, tmp_path):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ckpt_dir = tmp_path / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    ref = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(
        {k: torch.full_like(v, 0.25) if v.is_floating_point() else v for k, v in ref.items()},
        ckpt_dir / url.rsplit("/", 1)[-1],
    )
    model = build_model("resnet18", 5, weights="imagenet")
    assert torch.all(model.backbone.conv1.weight == 0.25)


def test_malicious_pickle_checkpoint_is_refused(tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (exec, ("open('/tmp/autoprune-pwned', 'w').write('x')",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"state_dict": Payload()}))
    with pytest.raises(UserError, match="cannot be loaded safely"):
        load_backbone_weights(build_model("resnet18", 2).backbone, "resnet18", str(path))
    import os

    assert not os.path.exists("/tmp/autoprune-pwned")


def test_unknown_backbone(host):
    with pytest.raises(UserError, match=r"unknown backbone 'resnet19' \(did you mean"):
        build_model("resnet19", 2, host=host)


class TestResNet10BackboneContract(BackboneContract):
    factory = staticmethod(_resnet10)


class TestResNet18BackboneContract(BackboneContract):
    factory = staticmethod(partial(_torchvision, "resnet18"))
