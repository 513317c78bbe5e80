"""The fine-tuning loop every scenario and strategy uses: the strong-baseline re-ID recipe.

Cross-entropy with label smoothing on the BNNeck logits, batch-hard triplet on the features before it,
optional center loss; Adam or SGD with linear warm-up and a cosine or step schedule; P x K batches.
Mixed precision (``train.precision``): float16 AMP on CUDA (``train.amp``), bfloat16 autocast with
channels-last on CPUs with AVX-512 BF16 / AMX (1.7-3.4x faster there), float32 elsewhere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from autoprune.data.loading import IdentitySampler, ImageStore, augment, normalize
from autoprune.engine.device import autocast_dtype
from autoprune.engine.losses import CenterLoss, cross_entropy_ls, hard_triplet_loss
from autoprune.errors import UserError
from autoprune.models.reid import Outputs, outputs


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the trial is failed rather than trained on garbage."""


@dataclass
class TrainSettings:
    """Everything that decides a fine-tuning run besides the model and data."""

    epochs: int = 2
    lr: float = 3.5e-4
    optimizer: str = "adam"
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: int = 1
    schedule: str = "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    label_smoothing: float = 0.1
    triplet_weight: float = 1.0
    margin: float = 0.3
    center_weight: float = 0.0
    batch_size: int = 32
    num_instances: int = 4
    erasing: float = 0.0
    max_batches_per_epoch: int = 0
    amp: bool = True
    channels_last: bool = True
    precision: str = "fp32"  # auto | bf16 | fp32 (see autoprune.engine.device.autocast_dtype)
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: dict[str, Any], epochs: int | None = None, lr: float | None = None) -> TrainSettings:
        t, d = cfg["train"], cfg["data"]
        return cls(
            epochs=t["epochs"] if epochs is None else epochs,
            lr=t["lr"] if lr is None else lr,
            optimizer=t["optimizer"],
            weight_decay=t["weight_decay"],
            momentum=t["momentum"],
            warmup_epochs=t["warmup_epochs"],
            schedule=t["schedule"],
            milestones=list(t["milestones"]),
            gamma=t["gamma"],
            label_smoothing=t["label_smoothing"],
            triplet_weight=t["triplet_weight"],
            margin=t["margin"],
            center_weight=t["center_weight"],
            batch_size=d["batch_size"],
            num_instances=d["num_instances"],
            erasing=d["random_erasing"],
            max_batches_per_epoch=t["max_batches_per_epoch"],
            amp=t["amp"],
            channels_last=t["channels_last"],
            precision=t["precision"],
            seed=cfg["seed"],
        )


def lr_factor(s: TrainSettings, epoch: float) -> float:
    """Learning-rate multiplier at a (fractional) epoch: linear warm-up, then the schedule."""
    if s.warmup_epochs and epoch < s.warmup_epochs:
        return 0.1 + 0.9 * epoch / s.warmup_epochs
    if s.schedule == "cosine":
        span = max(1e-9, s.epochs - s.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch - s.warmup_epochs) / span))) * 0.99 + 0.01
    if s.schedule == "step":
        return s.gamma ** sum(epoch >= m for m in s.milestones)
    return 1.0


def _loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    s: TrainSettings,
    center: nn.Module | None,
    device: torch.device,
    dtype: torch.dtype | None,
    extra_loss: LossTerm | None = None,
    teacher: nn.Module | None = None,
) -> torch.Tensor:
    """The training loss of one batch (float32), the forward pass autocast to ``dtype`` if given."""
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        out = outputs(model, x)
        loss = cross_entropy_ls(out.logits.float(), y, s.label_smoothing)
        if s.triplet_weight:
            loss = loss + s.triplet_weight * hard_triplet_loss(out.features.float(), y, s.margin)
        if center is not None:
            loss = loss + s.center_weight * center(out.features.float(), y)
        if extra_loss is not None:
            loss = loss + _extra(extra_loss, x, y, out, teacher)
    return loss


def make_optimizer(params: list[nn.Parameter], s: TrainSettings) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        # Nesterov needs momentum; train.momentum: 0 asks for plain SGD, as torchreid's SGD (nesterov off by
        # default) gives with momentum 0, so it is plain SGD here too rather than torch's ValueError.
        nesterov = s.momentum > 0
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay, nesterov=nesterov)
    return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)


EpochCallback = Callable[[int, nn.Module], None]
# An extra loss term: (batch (images, pids), student outputs, teacher outputs or None) -> scalar tensor.
LossTerm = Callable[[tuple[torch.Tensor, torch.Tensor], Outputs, "Outputs | None"], torch.Tensor]


# long: one training loop whose state (optimiser, scaler, sampler, RNG, bf16 retry) every step shares; the
# step's parts are helpers (_loss, augment, lr_factor), and splitting the loop would only pass that state around.
def fit(
    model: nn.Module,
    train: ImageStore,
    s: TrainSettings,
    device: torch.device,
    on_epoch_end: EpochCallback | None = None,
    on_step_end: Callable[[nn.Module], None] | None = None,
    desc: str = "train",
    progress: bool = True,
    resume: dict[str, Any] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    extra_loss: LossTerm | None = None,
    teacher: nn.Module | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` on ``train`` (pids 0..N-1) for ``s.epochs``; returns per-epoch loss and throughput.

    ``on_epoch_end(epoch, model)`` runs after each epoch (soft pruning, per-epoch evaluation and trial
    early-stopping hook in here); ``on_step_end(model)`` after each optimiser step (to keep masks applied).
    ``extra_loss(batch, student, teacher)`` is added to the re-ID loss at every step; ``teacher`` (kept in
    eval mode, never trained) gives it the teacher's outputs for the same augmented batch, computed
    without gradients. A checkpoint carries the augmentation RNG state, so a resumed run is the same run.
    """
    num_classes = int(train.pids.max()) + 1 if len(train) else 0
    if num_classes == 0:
        raise UserError("the training split is empty; check the dataset's train folder")
    net: Any = model  # a ReIDNet: classifier, reset_classifier, feat_dim
    if net.classifier.out_features != num_classes:
        net.reset_classifier(num_classes)
    model.to(device)
    cuda = device.type == "cuda"
    dtype = autocast_dtype(device, s.precision, s.amp)
    # channels-last is what oneDNN's bf16 kernels and CUDA's tensor cores want; float32 on CPU does not gain
    channels_last = s.channels_last and (cuda or dtype is not None)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    center = CenterLoss(num_classes, net.feat_dim).to(device) if s.center_weight > 0 else None
    params = [p for p in model.parameters() if p.requires_grad] + (list(center.parameters()) if center else [])
    opt = make_optimizer(params, s)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and dtype == torch.float16)
    sampler = IdentitySampler(train.pids.tolist(), s.batch_size, s.num_instances, seed=s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    history: list[dict[str, float]] = []
    first = 0
    if resume is not None:  # continue an interrupted run: optimiser state and epoch from its checkpoint
        opt.load_state_dict(resume["optimizer"])
        first = int(resume["epoch"])
        history = list(resume.get("history", []))
        if "rng" in resume:
            gen.set_state(resume["rng"])
    if teacher is not None:
        teacher.to(device).eval()
    for epoch in range(first, s.epochs):
        model.train()
        batches = sampler.batches(epoch)
        if s.max_batches_per_epoch:
            batches = batches[: s.max_batches_per_epoch]
        start, seen, total, retries = time.perf_counter(), 0, 0.0, 0
        bar = tqdm(
            batches, desc=f"{desc} {epoch + 1}/{s.epochs}", leave=False, disable=not progress, dynamic_ncols=True
        )
        for step, idx in enumerate(bar):
            for group in opt.param_groups:
                group["lr"] = s.lr * lr_factor(s, epoch + step / max(1, len(batches)))
            x = augment(normalize(train.get(idx)), gen, erasing=s.erasing).to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = train.pids[idx].to(device)
            # bfloat16 on CPU now and then gives a non-finite forward pass at small feature maps (seen at 64x32
            # inputs, never at 96x48 here): that step is redone in float32, with the BatchNorm statistics the
            # failed pass overwrote put back first.
            saved = [b.detach().clone() for b in model.buffers()] if dtype == torch.bfloat16 else None
            loss = _loss(model, x, y, s, center, device, dtype, extra_loss, teacher)
            if saved is not None and not torch.isfinite(loss):
                with torch.no_grad():
                    for b, v in zip(model.buffers(), saved):
                        b.copy_(v)
                loss = _loss(model, x, y, s, center, device, None, extra_loss, teacher)
                retries += 1
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if on_step_end is not None:
                on_step_end(model)
            seen += len(idx)
            total += loss.item() * len(idx)
            bar.set_postfix(loss=f"{total / seen:.3f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
        bar.close()
        seconds = time.perf_counter() - start
        history.append(
            {
                "epoch": epoch + 1,
                "loss": total / max(1, seen),
                "images_per_s": seen / max(seconds, 1e-9),
                "seconds": seconds,
                **({"fp32_retries": retries} if retries else {}),
            }
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
        if checkpoint is not None:
            checkpoint({"epoch": epoch + 1, "optimizer": opt.state_dict(), "history": history, "rng": gen.get_state()})
    return history


def _extra(term: LossTerm, x: torch.Tensor, y: torch.Tensor, out: Outputs, teacher: nn.Module | None) -> torch.Tensor:
    """The extra loss term of one step, with the teacher's outputs for the same images (no gradients)."""
    t_out = None
    if teacher is not None:
        with torch.no_grad():
            t_out = outputs(teacher, x)
    value = term((x, y), out, t_out)
    if not isinstance(value, torch.Tensor) or value.dim() != 0:
        raise TypeError(f"an extra loss term must return a scalar tensor, got {type(value).__name__}")
    return value.float()
