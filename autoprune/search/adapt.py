"""Adapt once: the unpruned model fine-tuned on the target, computed once per search and kept in the run directory.

It is the teacher a pruned model distils from, the model ``finetune_then_prune`` prunes, and the
unpruned reference's starting point. Every trial, the final round and a resumed search read it back
(``adapted.pt``, with ``adapted.json`` saying what it was computed from); workers that share the run
directory wait for the one computing it (a file lock) and then load it. The training is seeded as a
trial is, so two workers with their own run directories compute the same model on the same hardware.
An interrupted adaptation resumes from its last finished epoch: the checkpoint carries the optimiser
and augmentation RNG state, so the resumed model is the one an uninterrupted run gives.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.config import config_hash
from autoprune.engine.baseline import baseline_key
from autoprune.pruning.serialize import load_pruned, save_pruned
from autoprune.rundir import own_file, read_json, replacing
from autoprune.search.report import write_json
from autoprune.search.trial import SearchEnv

MODEL, META = "adapted.pt", "adapted.json"
PARTIAL, STATE = "adapted.partial.pt", "adapted.state.pt"


def adaptation_key(cfg: dict[str, Any]) -> str:
    """What determines the adapted model: the baseline, the target data, the trial's training recipe, the seed."""
    t = cfg["trial"]
    part = {
        "baseline": baseline_key(cfg),
        "data": cfg["data"],
        "trial": {"lr": t["lr"], "adapt_epochs": t["adapt_epochs"]},
        "seed": cfg["seed"],
    }
    return config_hash({"a": part}, ("a",))


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/adapted.lock``: processes sharing a run directory adapt once, the others wait."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        yield
        return
    with open(own_file(run_dir, "adapted.lock"), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_or_adapt(env: SearchEnv, run_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Give ``env`` its adapted model (from the run directory, else trained now); its record, or None when off."""
    if env.adapt_epochs == 0:
        return None
    key = adaptation_key(env.cfg)
    with _locked(run_dir):
        model_path, meta_path = own_file(run_dir, MODEL), own_file(run_dir, META)
        meta = read_json(meta_path, f"delete {meta_path} to adapt again") if meta_path.is_file() else {}
        if meta.get("key") == key and model_path.is_file():
            model: nn.Module = load_pruned(model_path)
            log(f"adapt: reusing the target-adapted unpruned model ({model_path.name}, {env.adapt_epochs} epochs)")
        else:
            model, meta = _adapt(env, run_dir, key, log)
    env.set_adapted(model)
    return meta


def _adapt(env: SearchEnv, run_dir: Path, key: str, log: Callable[[str], None]) -> tuple[nn.Module, dict[str, Any]]:
    partial, state = own_file(run_dir, PARTIAL), own_file(run_dir, STATE)
    resume: dict[str, Any] | None = None
    saved_model: nn.Module | None = None
    if partial.is_file() and state.is_file():
        saved = torch.load(state, map_location="cpu", weights_only=True)
        if saved.get("key") == key:  # an interrupted adaptation of this very model: continue it
            resume, saved_model = saved, load_pruned(partial).train()
            log(f"adapt: resuming the adaptation at epoch {int(saved['epoch']) + 1}/{env.adapt_epochs}")
    if resume is None:
        log(
            f"adapt: fine-tuning the unpruned model on the target for {env.adapt_epochs} epochs, once for the "
            f"whole search (teacher and starting point of every trial)"
        )

    model = saved_model if saved_model is not None else copy.deepcopy(env.baseline)

    def checkpoint(st: dict[str, Any]) -> None:
        save_pruned(model, partial)  # model first, then the state that points at its epoch (both atomic)
        with replacing(state) as f:
            torch.save({**st, "key": key}, f)

    start = time.perf_counter()
    adapted = env.adapt(model, resume=resume, checkpoint=checkpoint)
    metrics = env.evaluate(adapted, env.target)
    meta = {
        "key": key,
        "epochs": env.adapt_epochs,
        "seconds": round(time.perf_counter() - start, 2),
        "target_rank1": metrics["rank1"],
        "target_val_rank1": metrics.get("val", {}).get("rank1"),
    }
    save_pruned(adapted, own_file(run_dir, MODEL), extra={"adapted_epochs": env.adapt_epochs})
    write_json(own_file(run_dir, META), meta)
    partial.unlink(missing_ok=True)
    state.unlink(missing_ok=True)
    log(
        f"adapt: done in {meta['seconds']:.0f} s; adapted unpruned model target val rank-1 "
        f"{meta['target_val_rank1'] if meta['target_val_rank1'] is not None else metrics['rank1']:.3f}"
    )
    return adapted, meta
