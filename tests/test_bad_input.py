"""Bad input, end to end: every mistake a user can make in a config, a search space, a dataset folder, a
checkpoint or a run directory ends in exit code 2 and one line naming the thing and the fix: no
traceback, no data generated, nothing written outside the run directory.

Config and search-space files live in ``tests/bad_input/`` (first line: ``# expect: <fragment>``);
dataset trees and checkpoints are built here in ``tmp_path``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from autoprune.cli import main
from autoprune.errors import UserError

CORPUS = Path(__file__).parent / "bad_input"


def corpus(kind: str) -> list:
    """``pytest.param(path, fragment)`` for every file in ``bad_input/<kind>/``; ``# xfail:`` marks a known bug."""
    params = []
    for path in sorted((CORPUS / kind).glob("*.yaml")):
        header = path.read_bytes().split(b"\n", 2)
        expect = header[0].decode().removeprefix("# expect:").strip()
        marks = []
        if header[1].startswith(b"# xfail:"):
            marks = [pytest.mark.xfail(strict=True, reason=header[1].decode()[len("# xfail:") :].strip())]
        params.append(pytest.param(path, expect, id=f"{kind}/{path.stem}", marks=marks))
    return params


@pytest.fixture
def sandbox(tmp_path, monkeypatch, host):
    """A scratch folder that is also the working directory, with a fresh plugin host."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return tmp_path


def tree(root: Path, skip: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if skip not in p.parents and p != skip}


def refused(sandbox: Path, capsys, argv: list[str], out: Path | None = None) -> str:
    """Run the CLI in-process; check exit 2, one error line, no traceback, no file written outside the run
    directory (so no data generated either). Returns the error line."""
    out = out or sandbox / "run"
    before = tree(sandbox, out)
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2, captured
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("autoprune: error: "), captured.err
    assert "Traceback" not in captured.out + captured.err
    assert tree(sandbox, out) == before
    return lines[0]


def search(sandbox: Path, *sets: str, config: Path | None = None) -> list[str]:
    argv = [
        "search",
        "--preset",
        "smoke",
        "--quiet",
        "--out",
        str(sandbox / "run"),
        "--set",
        f"data.root={sandbox / 'data'}",
    ]
    if config is not None:
        argv += ["--config", str(config)]
    for s in sets:
        argv += ["--set", s]
    return argv


# -- config and search-space files ------------------------------------------------------------------


@pytest.mark.parametrize("path, fragment", corpus("config"))
def test_bad_config_file(sandbox, capsys, path, fragment):
    assert fragment in refused(sandbox, capsys, search(sandbox, config=path))


@pytest.mark.parametrize("path, fragment", corpus("space"))
def test_bad_search_space_file(sandbox, capsys, path, fragment):
    assert fragment in refused(sandbox, capsys, search(sandbox, f"search.space={path}"))


# -- settings on the command line ---------------------------------------------------------------------

SETTINGS = [
    (["model.last_stride=0"], "config key 'model.last_stride' is 0; choose one of: 1, 2"),
    (["search.timeout=0"], "config key 'search.timeout' must be > 0, got 0.0"),
    (["search.timeout=-60"], "config key 'search.timeout' must be > 0, got -60.0"),
    (["search.screening.candidates=0"], "config key 'search.screening.candidates' must be > 0, got 0"),
    (["train.milestones=[0, 5]"], "train.milestones must be a list of epochs (integers >= 1)"),
    (["train.milestones=[1.5]"], "train.milestones must be a list of epochs (integers >= 1)"),
    (["search.warm_start=" + "[" * 3000 + "]" * 3000], "--set search.warm_start: the value nests too deeply"),
    (["budget.macs_ratio=0"], "config key 'budget.macs_ratio' must be in (0.0, 1.0], got 0"),
    (["budget.macs_ratio=-0.25"], "config key 'budget.macs_ratio' must be in (0.0, 1.0], got -0.25"),
    (["budget.macs_ratio=1.2"], "config key 'budget.macs_ratio' must be in (0.0, 1.0], got 1.2"),
    (["budget.macs_ratio=0.05", "budget.min_keep=0.5"], "is below what budget.min_keep=0.5 allows"),
    (["budget.gmacs=100"], "budget.gmacs 100.0 is above the unpruned model's"),
    (["budget.gmacs=-1"], "budget.gmacs must be > 0 GMACs, got -1.0"),
    (["trial.criterion=taylr"], "unknown criterion 'taylr' (did you mean 'taylor'?); known: "),
    (["trial.strategy=oneshot"], "unknown strategy 'oneshot' (did you mean 'one_shot'?)"),
    (["trial.scenario=prune_then_tune"], "unknown scenario 'prune_then_tune' (did you mean 'prune_then_finetune'?)"),
    (["model.arch=resnet19"], "unknown backbone 'resnet19' (did you mean 'resnet18'?)"),
    (["data.target=imagenet:/data/imagenet"], "unknown dataset 'imagenet'"),
    (
        ["search.warm_start=[{layer9.out: 0.5}]"],
        "search.warm_start entries must map search-space parameters to keep ratios, e.g. {",
    ),
    (["search.warm_start=[{layer9.out: 0.5}]"], "unknown parameter(s) ['layer9.out']"),
    (["search.warm_start=[0.5]"], "; got 0.5"),
    (["search.warm_start=[{layer1.out: 2}]"], "layer1.out: 2 is not a keep ratio in (0, 1]"),
    (
        ["search.storage=redis://localhost/0"],
        "search.storage 'redis://localhost/0' is not a database URL or journal:PATH",
    ),
    (["search.space=no_such_space"], "search space 'no_such_space' is neither a built-in"),
    (["model.weights=/nonexistent/model.pth"], "model.weights: /nonexistent/model.pth does not exist"),
    (["model.weights=imagenet", "model.arch=resnet10"], "no ImageNet weights are known for 'resnet10'"),
    # numbers that passed validation and crashed in torch or Optuna later
    (["train.momentum=-0.5"], "config key 'train.momentum' must be in [0.0, 1.0), got -0.5"),
    (["train.momentum=1"], "config key 'train.momentum' must be in [0.0, 1.0), got 1.0"),
    (["train.weight_decay=-1e-4"], "config key 'train.weight_decay' must be >= 0, got -0.0001"),
    (["train.label_smoothing=1"], "config key 'train.label_smoothing' must be in [0.0, 1.0), got 1.0"),
    (["train.label_smoothing=-0.1"], "config key 'train.label_smoothing' must be in [0.0, 1.0), got -0.1"),
    (["train.gamma=0"], "config key 'train.gamma' must be in (0.0, 1.0], got 0.0"),
    (["train.margin=-0.3"], "config key 'train.margin' must be >= 0, got -0.3"),
    (["train.triplet_weight=-1"], "config key 'train.triplet_weight' must be >= 0, got -1.0"),
    (["train.center_weight=-1"], "config key 'train.center_weight' must be >= 0, got -1.0"),
    (["train.threads=-2"], "config key 'train.threads' must be >= 0, got -2"),
    (["data.random_erasing=1.5"], "config key 'data.random_erasing' must be in [0.0, 1.0], got 1.5"),
    (["budget.latency_batch=100000000"], "config key 'budget.latency_batch' must be in [1, 256], got 100000000"),
    (["search.ray.cpus_per_trial=0"], "config key 'search.ray.cpus_per_trial' must be > 0, got 0"),
    (["search.ray.gpus_per_trial=-1"], "config key 'search.ray.gpus_per_trial' must be >= 0, got -1.0"),
    (["search.ray.max_concurrent=0"], "config key 'search.ray.max_concurrent' must be > 0, got 0"),
    (["data.synth.num_train_ids=0"], "config key 'data.synth.num_train_ids' must be > 0, got 0"),
    (["data.synth.num_distractors=-1"], "config key 'data.synth.num_distractors' must be >= 0, got -1"),
    (["search.study_name=off"], "got False; YAML read the value as a boolean (unquoted yes/no/on/off/true/false"),
    # data.root that cannot hold the synthetic data, baselines and latency tables: refused in the preflight
    (
        ["data.root=/etc/passwd"],
        "data.root /etc/passwd is not a writable folder (/etc/passwd is a file); set data.root",
    ),
    (["data.root=/etc/passwd/data"], "data.root /etc/passwd/data is not a writable folder (/etc/passwd is a file)"),
    (["data.root=/proc/xx"], "data.root /proc/xx is not a writable folder (cannot create a file in /proc: "),
]


@pytest.mark.parametrize("sets, fragment", SETTINGS, ids=[" ".join(s) for s, _ in SETTINGS])
def test_bad_setting(sandbox, capsys, sets, fragment):
    assert fragment in refused(sandbox, capsys, search(sandbox, *sets))


def test_sgd_with_momentum_zero_is_plain_sgd():
    """train.momentum: 0 with SGD is plain SGD (torch refuses Nesterov without momentum: it crashed every trial)."""
    from autoprune.config import load_config
    from autoprune.engine.train import TrainSettings, make_optimizer

    cfg = load_config(preset="smoke", overrides=["train.optimizer=sgd", "train.momentum=0"])
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = make_optimizer(params, TrainSettings.from_config(cfg))
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0 and not opt.defaults["nesterov"]
    with_momentum = make_optimizer(params, TrainSettings(optimizer="sgd", momentum=0.9))
    assert with_momentum.defaults["nesterov"]


def test_search_space_of_another_kind_of_file_is_not_echoed(sandbox, capsys):
    """A file that YAML reads as a mapping of its lines (/etc/shadow) is not a search space: its lines stay unprinted."""
    path = sandbox / "shadow"
    path.write_text("root:$6$saltsalt$secrethash:19000:0:99999:7:::\nbob:!:19000:0:99999:7:::\n")
    line = refused(sandbox, capsys, search(sandbox, f"search.space={path}"))
    assert f"search space {path} is not a search space" in line
    assert "secrethash" not in line and "bob" not in line


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["data", "synth", "--out", "/proc/xx"], "synthetic data path /proc/xx is not a writable folder"),
        (["data", "synth", "--out", "/etc/passwd/x"], "synthetic data path /etc/passwd/x is not a writable folder"),
        (["plugin", "new", "criterion", "foo", "--out", "/proc/pp"], "--out /proc/pp is not a writable folder"),
        (["plugin", "new", "criterion", "l1", "--out", "new"], "criterion 'l1' already exists (registered by"),
        (["plugin", "new", "strategy", "one_shot", "--out", "new"], "strategy 'one_shot' already exists"),
    ],
)
def test_unwritable_out_and_taken_names_of_other_commands(sandbox, capsys, argv, fragment):
    assert fragment in refused(sandbox, capsys, argv)


def test_number_with_an_exponent_but_no_dot_is_a_number():
    """YAML 1.1 reads ``1e-3`` as a string; a user who writes it means a number."""
    from autoprune.config import load_config

    cfg = load_config(preset="smoke", overrides=["train.lr=1e-3", "budget.gmacs=2"])
    assert cfg["train"]["lr"] == 0.001 and cfg["budget"]["gmacs"] == 2.0


@pytest.mark.slow
def test_diverging_baseline(sandbox, capsys):
    """A learning rate that blows the loss up stops before any trial, naming the keys to lower."""
    spec = f"market1501:{market(sandbox / 'market')}"
    line = refused(
        sandbox,
        capsys,
        search(sandbox, f"data.source={spec}", f"data.target={spec}", "train.lr=1e30", "train.warmup_epochs=0"),
    )
    assert "training the baseline on the source diverged (loss is " in line
    assert "lower train.lr and trial.lr" in line


def test_cmaes_sampler_without_its_package(sandbox, capsys):
    try:
        import cmaes  # noqa: F401

        pytest.skip("cmaes is installed")
    except ImportError:
        pass
    line = refused(sandbox, capsys, search(sandbox, "search.sampler=cmaes"))
    assert "search.sampler cmaes needs the 'cmaes' package: pip install cmaes" in line


def test_missing_config_file(sandbox, capsys):
    line = refused(sandbox, capsys, search(sandbox, config=sandbox / "nope.yaml"))
    assert f"config file {sandbox / 'nope.yaml'} does not exist; give --config an existing YAML file" in line


def test_config_path_is_a_folder(sandbox, capsys):
    assert "does not exist; give --config an existing YAML file" in refused(
        sandbox, capsys, search(sandbox, config=CORPUS)
    )


# -- dataset folders --------------------------------------------------------------------------------

GOOD = {
    "bounding_box_train": [f"{p:04d}_c{c}s1_00{p}{c}00_01.jpg" for p in range(1, 9) for c in (1, 2)],
    "query": [f"{p:04d}_c1s1_00{p}900_00.jpg" for p in (20, 21, 22)],
    "bounding_box_test": [f"{p:04d}_c2s1_00{p}800_00.jpg" for p in (20, 21, 22)] + ["0000_c3s1_000001_00.jpg"],
}


def jpeg(path: Path) -> None:
    Image.new("RGB", (8, 16), (120, 60, 30)).save(path, "JPEG")


def market(root: Path, **splits: list[str] | None) -> Path:
    """A Market-1501 tree of tiny JPEGs: GOOD, with the named splits replaced (None: folder left out)."""
    for split, names in {**GOOD, **splits}.items():
        if names is None:
            continue
        (root / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            jpeg(root / split / name)
    return root


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


DATASETS = [
    (
        "missing_root",
        lambda r: Path("/nonexistent/market"),
        "Market-1501 root /nonexistent/market does not exist or is not a folder; pass the folder that contains "
        "bounding_box_train",
    ),
    ("missing_query_folder", lambda r: market(r, query=None), "Market-1501: expected {root}/query is missing"),
    (
        "empty_train_folder",
        lambda r: market(r, bounding_box_train=[]),
        "no images (.jpg/.jpeg/.png) in {root}/bounding_box_train; put the split's images there",
    ),
    (
        "unparsable_name",
        lambda r: market(r, query=["query_0001.jpg"]),
        "Market-1501: cannot parse pid/camera from {root}/query/query_0001.jpg; expected names like <pid>_c<cam>_...",
    ),
    (
        "camera_out_of_range",
        lambda r: market(r, query=["0020_c9s1_000451_00.jpg"]),
        "Market-1501: camera c9 in {root}/query/0020_c9s1_000451_00.jpg is out of range c1..c6",
    ),
    (
        "only_junk_in_train",
        lambda r: market(r, bounding_box_train=["-1_c1s1_000001_00.jpg"]),
        "the train split in {root}/bounding_box_train is empty after dropping junk (pid -1) and distractors (pid 0)",
    ),
    (
        "query_without_match",
        lambda r: market(r, query=["0030_c1s1_000451_00.jpg"]),
        "Market-1501: no query in {root} has a gallery image of the same pid from a different camera",
    ),
    (
        "truncated_jpeg",
        lambda r: (market(r), truncate(r / "query" / GOOD["query"][0]))[0],
        "image {root}/query/" + GOOD["query"][0] + " cannot be read (OSError: ",
    ),
    (
        "text_named_jpg",
        lambda r: (market(r), (r / "bounding_box_test" / "0020_c3s1_000001_00.jpg").write_text("hi"))[0],
        "image {root}/bounding_box_test/0020_c3s1_000001_00.jpg cannot be read (UnidentifiedImageError",
    ),
    (
        "person_id_beyond_64_bits",
        lambda r: market(r, query=["99999999999999999999999_c1s1_000451_00.jpg"]),
        "Market-1501: the person id 99999999999999999999999 in {root}/query/99999999999999999999999_c1s1_000451_00.jpg "
        "does not fit in 64 bits; renumber",
    ),
    (
        "one_camera_per_identity",
        lambda r: market(
            r, bounding_box_train=[f"{p:04d}_c1s1_00{p}{k}00_01.jpg" for p in range(1, 9) for k in (1, 2)]
        ),
        "no training identity is seen by two cameras, so no validation split can be held out; set data.val_fraction: 0",
    ),
]


@pytest.mark.parametrize("build, fragment", [pytest.param(b, f, id=i) for i, b, f in DATASETS])
def test_bad_dataset_folder(sandbox, capsys, build, fragment):
    root = build(sandbox / "market")
    spec = f"market1501:{root}"
    line = refused(sandbox, capsys, search(sandbox, f"data.source={spec}", f"data.target={spec}"))
    assert fragment.format(root=root) in line


def test_folder_dataset_camera_zero(sandbox, capsys):
    root = sandbox / "mine"
    for split in ("train", "query", "gallery"):
        (root / split).mkdir(parents=True)
        jpeg(root / split / "0001_c0_frame000001.jpg")
    line = refused(sandbox, capsys, search(sandbox, f"data.source=folder:{root}", f"data.target=folder:{root}"))
    assert "camera c0 in" in line and "is invalid; cameras are 1-based (c1 is the first)" in line


def test_folder_dataset_camera_beyond_64_bits(sandbox, capsys):
    root = sandbox / "mine"
    for split in ("train", "query", "gallery"):
        (root / split).mkdir(parents=True)
        jpeg(root / split / "0001_c18446744073709551616_frame1.jpg")  # 2**64
    line = refused(sandbox, capsys, search(sandbox, f"data.source=folder:{root}", f"data.target=folder:{root}"))
    assert "the camera id 18446744073709551616 in" in line and "does not fit in 64 bits" in line


def test_msmt_list_with_a_huge_or_odd_id(tmp_path):
    from autoprune.data.readers import read_msmt17

    root = tmp_path / "MSMT17_V1"
    for d in ("train", "test"):
        (root / d).mkdir(parents=True)
    for name in ("list_query.txt", "list_gallery.txt"):
        (root / name).write_text("0000/0000_000_01_0303morning_0015_0.jpg 0\n")
    (root / "list_train.txt").write_text("0000/0000_000_01_0303morning_0015_0.jpg 1" + "0" * 30 + "\n")
    with pytest.raises(
        UserError, match=r"person id 10000000000000000000\.\.\. in line 1 of .* does not fit in 64 bits"
    ):
        read_msmt17(tmp_path)
    (root / "list_train.txt").write_text("0000/0000_000_01_0303morning_0015_0.jpg \u00b2\n")  # isdigit, not int
    with pytest.raises(UserError, match="cannot parse line 1"):
        read_msmt17(tmp_path)
    (root / "list_train.txt").write_bytes(b"\xff\xfe\n")
    with pytest.raises(UserError, match="list_train.txt is not UTF-8 text"):
        read_msmt17(tmp_path)


# -- checkpoints (model.weights) ----------------------------------------------------------------------


class _Evil:
    """Unpickling this would run code: a checkpoint loader that executes pickles creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_of_another_architecture(sandbox, capsys):
    import torchvision

    ckpt = sandbox / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), ckpt)
    line = refused(sandbox, capsys, search(sandbox, "model.arch=resnet18", f"model.weights={ckpt}"))
    assert f"{ckpt} does not match backbone resnet18: 0 missing keys, " in line and "check model.arch" in line


@pytest.mark.parametrize("payload", ["module", "code"])
def test_pickled_code_checkpoint_is_never_executed(sandbox, capsys, payload):
    ckpt, marker = sandbox / "model.pth", sandbox / "pwned"
    torch.save(torch.nn.Linear(2, 2) if payload == "module" else {"state_dict": _Evil(marker)}, ckpt)
    line = refused(sandbox, capsys, search(sandbox, f"model.weights={ckpt}"))
    assert f"{ckpt} cannot be loaded safely (UnpicklingError): autoprune loads tensors only, never pickled code" in line
    assert "save a plain state_dict" in line
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"not a checkpoint", id="garbage"),
        pytest.param("tensor", id="bare-tensor"),
    ],
)
def test_checkpoint_that_is_not_a_state_dict(sandbox, capsys, content):
    ckpt = sandbox / "model.pth"
    if content == "tensor":
        torch.save(torch.zeros(3), ckpt)
    else:
        ckpt.write_bytes(content)
    line = refused(sandbox, capsys, search(sandbox, f"model.weights={ckpt}"))
    assert str(ckpt) in line


# -- run directories --------------------------------------------------------------------------------


def test_run_directory_of_another_config(sandbox, capsys):
    from autoprune.config import load_config
    from autoprune.search.run import claim_run_dir

    run = sandbox / "run"
    run.mkdir()
    claim_run_dir(load_config(preset="smoke", overrides=[f"data.root={sandbox / 'data'}"]), run)
    line = refused(sandbox, capsys, search(sandbox, "budget.macs_ratio=0.3"))
    assert f"run directory {run} holds a search with another config; use a new --out, or delete {run}" in line


def test_run_directory_is_a_file(sandbox, capsys):
    (sandbox / "run").write_text("my notes")
    line = refused(sandbox, capsys, search(sandbox))
    assert f"--out {sandbox / 'run'} is a file, not a directory; choose another --out" in line


def test_typo_in_a_dataset_path_does_not_claim_the_run_directory(sandbox, capsys):
    """A run that fails on its data leaves the run directory free for the corrected config."""
    good = market(sandbox / "market")
    typo = search(sandbox, f"data.source=market1501:{good}x", f"data.target=market1501:{good}")
    assert "does not exist" in refused(sandbox, capsys, typo)
    assert not (sandbox / "run" / "identity.json").exists()
    from autoprune.config import load_config
    from autoprune.search.run import prepare_run_dir

    fixed = load_config(preset="smoke", overrides=[f"data.source=market1501:{good}", f"data.target=market1501:{good}"])
    prepare_run_dir(fixed, sandbox / "run")  # not refused as "another config"


# -- security: secrets and code never come from a config ----------------------------------------------


@pytest.mark.slow
def test_storage_password_is_never_printed(tmp_path):
    """The database is unreachable (port 1); the error names the storage with the password hidden."""
    url = "postgresql://autoprune:s3cr3t-pw@127.0.0.1:1/studies"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "autoprune.cli",
            "search",
            "--preset",
            "smoke",
            "--quiet",
            "--out",
            str(tmp_path / "run"),
            "--set",
            f"data.root={tmp_path / 'data'}",
            "--set",
            f"search.storage={url}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2
    assert "s3cr3t-pw" not in r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "Traceback" not in r.stderr
    assert "cannot open the study storage postgresql://autoprune:***@127.0.0.1:1/studies" in r.stderr
    assert "check search.storage and that the database is reachable" in r.stderr
    assert not (tmp_path / "data").exists()  # checked before any data is made


def test_storage_password_is_hidden_in_printed_config(capsys):
    assert main(["config", "--preset", "smoke", "--set", "search.storage=mysql://me:hunter22@db/x"]) == 0
    out = capsys.readouterr().out
    assert "hunter22" not in out and "storage: mysql://me:***@db/x" in out


@pytest.mark.parametrize("key", ["trial.criterion", "trial.strategy", "trial.scenario", "model.arch"])
@pytest.mark.parametrize("name", ["{evil}", "os.system", "evil_module:Thing"])
def test_plugins_only_come_from_entry_points(sandbox, capsys, key, name):
    """A path or dotted name in a config is just an unknown name: nothing is imported or run."""
    evil = sandbox / "evil_module.py"
    evil.write_text(f"open({str(sandbox / 'pwned')!r}, 'w').close()\n")
    value = name.format(evil=evil)
    line = refused(sandbox, capsys, search(sandbox, f"{key}={value}"))
    kind = {
        "trial.criterion": "criterion",
        "trial.strategy": "strategy",
        "trial.scenario": "scenario",
        "model.arch": "backbone",
    }[key]
    assert f"unknown {kind} {value!r}" in line
    assert not (sandbox / "pwned").exists() and "evil_module" not in sys.modules


# -- subprocess: the real stderr of an installed CLI ----------------------------------------------------


@pytest.mark.slow
def test_corrupt_image_through_the_real_cli(tmp_path):
    root = market(tmp_path / "market")
    truncate(root / "bounding_box_train" / GOOD["bounding_box_train"][3])
    spec = f"market1501:{root}"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "autoprune.cli",
            "search",
            "--preset",
            "smoke",
            "--quiet",
            "--out",
            str(tmp_path / "run"),
            "--set",
            f"data.source={spec}",
            "--set",
            f"data.target={spec}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "Traceback" not in r.stderr
    bad = root / "bounding_box_train" / GOOD["bounding_box_train"][3]
    assert f"image {bad} cannot be read (OSError: " in r.stderr
    assert "remove or replace the file" in r.stderr
    assert not (tmp_path / "data").exists()  # the default data root (under cwd) was not touched


@pytest.mark.slow
def test_debug_shows_the_traceback_of_a_bad_input(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "autoprune.cli",
            "--debug",
            "search",
            "--config",
            str(CORPUS / "config" / "unknown_key.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert r.returncode != 0 and "Traceback" in r.stderr and "UserError: unknown config key" in r.stderr


# -- fuzz: Market-1501 file names ----------------------------------------------------------------------

_names = st.one_of(
    st.from_regex(r"\A-?\d{1,5}_c-?\d{1,3}(s\d_\d{6}_\d{2})?\.(jpg|JPG|jpeg|png|txt)\Z"),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=40).map(
        lambda s: s + ".jpg"
    ),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=60),
).filter(lambda n: n not in (".", "..") and len(n.encode()) <= 255)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(_names, min_size=1, max_size=4, unique=True), max_cam=st.sampled_from([6, 8, None]))
def test_fuzzed_market_file_names_parse_or_raise_user_error(tmp_path_factory, names, max_cam):
    """Whatever the file names, reading a split either gives valid (path, pid >= -1, camid >= 0) samples or
    raises a UserError: never another exception."""
    from autoprune.data.readers import _parse_market_dir

    folder = tmp_path_factory.mktemp("names")
    for name in names:
        (folder / name).write_bytes(b"")
    try:
        samples = _parse_market_dir(folder, max_cam, "Market-1501")
    except UserError as exc:
        assert str(exc)
        return
    assert samples
    for path, pid, camid in samples:
        assert Path(path).parent == folder and pid >= -1 and camid >= 0
        assert max_cam is None or camid < max_cam
