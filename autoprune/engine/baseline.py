"""The source-trained baseline, trained once and cached by a hash of everything that determines it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from autoprune.config import config_hash, without_unset_late_keys
from autoprune.data.domain import Domain, source_synth
from autoprune.engine.device import autocast_dtype, resolve_device
from autoprune.engine.evaluate import evaluate_domain
from autoprune.engine.train import TrainSettings, fit
from autoprune.errors import UserError
from autoprune.models import ReIDNet, build_model, load_checkpoint_model
from autoprune.models.checkpoint import checkpoint_record, read_checkpoint
from autoprune.pruning.serialize import load_pruned, save_pruned
from autoprune.rundir import replacing, write_file


def baseline_key(cfg: dict[str, Any]) -> str:
    """What determines the baseline: model, source data, training recipe, numeric precision and seed.

    The precision enters as the autocast dtype it resolves to here, and only when not float32, so float32
    baselines keep the key they had before ``train.precision`` existed.
    """
    t = cfg["train"]
    part = {
        "model": without_unset_late_keys(cfg)["model"],
        "source": cfg["data"]["source"],
        "synth": source_synth(cfg["data"]["synth"]),
        "batch": [cfg["data"]["batch_size"], cfg["data"]["num_instances"], cfg["data"]["random_erasing"]],
        "train": {k: v for k, v in t.items() if k not in ("device", "threads", "precision")},
        "seed": cfg["seed"],
    }
    dtype = autocast_dtype(resolve_device(t["device"]), t["precision"], t["amp"])
    if dtype is not None:
        part["precision"] = str(dtype)
    return config_hash({"b": part}, ("b",))


def baseline_path(cfg: dict[str, Any]) -> Path:
    return Path(cfg["data"]["root"]) / "baselines" / f"{cfg['model']['arch']}-{baseline_key(cfg)}.pt"


def checkpoint_baseline(
    cfg: dict[str, Any], source: Domain | None, device: torch.device, log: Any = print
) -> tuple[ReIDNet, dict[str, Any]]:
    """The trained model of ``model.checkpoint``, as it is: nothing is trained; scored on the source if given."""
    m = cfg["model"]
    record = checkpoint_record(m)
    log(
        f"baseline: {m['arch']} from {record['format']} checkpoint {record['path']} (sha256 {record['sha256'][:12]}); "
        f"no source training"
    )
    note = read_checkpoint(m["checkpoint"]).normalisation_note()
    if note:
        log(note)
    model = load_checkpoint_model(m, source.num_classes if source is not None else 1)
    source_metrics = evaluate_domain(model, source.query, source.gallery, device) if source is not None else None
    return model, {
        "arch": m["arch"],
        "source": source.spec if source is not None else None,
        "source_metrics": source_metrics,
        "history": [],
        "checkpoint": record,
    }


def get_baseline(
    cfg: dict[str, Any], source: Domain | None, device: torch.device, progress: bool = True, log: Any = print
) -> tuple[ReIDNet, dict[str, Any]]:
    """The model to prune: ``model.checkpoint`` as it is, else the cached source-trained model, else train it
    on the source domain and cache it."""
    if cfg["model"]["checkpoint"] is not None:
        return checkpoint_baseline(cfg, source, device, log)
    if source is None:
        raise UserError(
            "data.source is null: without model.checkpoint there is no trained model to prune; "
            "give data.source to train one, or model.checkpoint"
        )
    path = baseline_path(cfg)
    info_path = path.with_suffix(".json")
    if path.is_file() and info_path.is_file():
        log(f"baseline: reusing {path}")
        return load_pruned(path), json.loads(info_path.read_text())
    torch.manual_seed(cfg["seed"])
    m = cfg["model"]
    settings = TrainSettings.from_config(cfg)
    partial = path.with_suffix(".partial.pt")
    resume = None
    if partial.is_file():  # an interrupted training of this very baseline: continue it
        model = load_pruned(partial).train()
        resume = torch.load(partial.with_suffix(".state.pt"), map_location="cpu", weights_only=True)
        log(f"baseline: resuming {m['arch']} training at epoch {resume['epoch'] + 1}/{settings.epochs}")
    else:
        model = build_model(
            m["arch"], source.num_classes, last_stride=m["last_stride"], pooling=m["pooling"], weights=m["weights"]
        )
        log(
            f"baseline: training {m['arch']} on {source.spec} for {settings.epochs} epochs "
            f"({len(source.train)} images, {source.num_classes} identities)"
        )

    def checkpoint(state: dict[str, Any]) -> None:
        # model first, then the optimiser state that points at its epoch (both written atomically)
        save_pruned(model, partial)
        with replacing(partial.with_suffix(".state.pt")) as f:
            torch.save(state, f)

    history = fit(
        model, source.train, settings, device, desc="baseline", progress=progress, resume=resume, checkpoint=checkpoint
    )
    source_metrics = evaluate_domain(model, source.query, source.gallery, device, precision=settings.precision)
    source_metrics = {k: v for k, v in source_metrics.items() if k not in ("hits", "aps")}  # JSON: the summary
    info = {
        "arch": m["arch"],
        "source": source.spec,
        "source_metrics": source_metrics,
        "history": history,
        "key": baseline_key(cfg),
    }
    save_pruned(model, path)
    write_file(info_path, json.dumps(info, indent=2))
    partial.unlink(missing_ok=True)
    partial.with_suffix(".state.pt").unlink(missing_ok=True)
    log(f"baseline: source rank-1 {source_metrics['rank1']:.3f}, mAP {source_metrics['mAP']:.3f}; saved {path}")
    return model, info
