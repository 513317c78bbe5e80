"""Training and inference throughput (images/s) of the engine, float32 against bfloat16, interleaved.

    .venv/bin/python benchmarks/bench_engine.py [--archs resnet18 resnet50] [--sizes 128x64 256x128] \
        [--precisions fp32 bf16] [--repeats 3]

Training: ``fit`` (sampling, augmentation, losses, optimiser, progress bar) on synthetic in-memory images,
the same path as real data once decoded. Inference: ``extract_features``. Each repeat runs every precision
once, in alternating order, so a machine whose load changes during the run biases neither; the table
gives the median of the repeats and the ratio to the first precision. ``--bare`` adds a bare
forward/backward/step loop on fixed tensors (float32), whose difference to ``fit`` is the engine's overhead.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from autoprune.data.loading import ImageStore
from autoprune.engine.device import autocast_dtype, set_threads
from autoprune.engine.evaluate import extract_features
from autoprune.engine.losses import cross_entropy_ls, hard_triplet_loss
from autoprune.engine.train import TrainSettings, fit, make_optimizer
from autoprune.models import build_model


def fake_store(n: int, size: tuple[int, int], ids: int = 16) -> ImageStore:
    store = ImageStore([(f"img{i}", i % ids, i % 2) for i in range(n)], size)
    gen = torch.Generator().manual_seed(0)
    store._cache = [(torch.rand(3, *size, generator=gen) * 255).to(torch.uint8) for _ in range(n)]
    return store


def bench(arch: str, size: tuple[int, int], batch: int, batches: int, precision: str) -> dict[str, float]:
    """Training and inference images/s of one fresh model at one precision (after a one-batch warm-up)."""
    n = batch * batches
    store = fake_store(n, size)
    device = torch.device("cpu")
    s = TrainSettings(epochs=1, batch_size=batch, num_instances=4, warmup_epochs=0, precision=precision)
    torch.manual_seed(0)
    model = build_model(arch, 16)
    fit(
        model,
        store,
        TrainSettings(epochs=1, batch_size=batch, num_instances=4, max_batches_per_epoch=1, precision=precision),
        device,
        progress=False,
    )  # oneDNN builds its kernels once
    t0 = time.perf_counter()
    fit(model, store, s, device, progress=False)
    train = time.perf_counter() - t0
    extract_features(model, store, device, batch_size=128, precision=precision)  # warm-up at inference shapes
    t0 = time.perf_counter()
    extract_features(model, store, device, batch_size=128, precision=precision)
    infer = time.perf_counter() - t0
    return {"train_img_s": n / train, "infer_img_s": n / infer}


def bare_loop(arch: str, size: tuple[int, int], batch: int, batches: int) -> float:
    """images/s of forward/backward/step on one fixed float32 batch: the floor under ``fit``'s cost."""
    torch.manual_seed(0)
    model = build_model(arch, 16).train()
    opt = make_optimizer(list(model.parameters()), TrainSettings())
    x, y = torch.randn(batch, 3, *size), torch.arange(batch) // 4
    t0 = time.perf_counter()
    for _ in range(batches):
        logits, feat = model(x)
        loss = cross_entropy_ls(logits, y) + hard_triplet_loss(feat, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * batches / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    p.add_argument("--sizes", nargs="+", default=["128x64", "256x128"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "auto"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bare", action="store_true", help="also time a bare float32 training loop")
    args = p.parse_args()
    set_threads(0)
    bf16 = autocast_dtype(torch.device("cpu"), "auto") is not None
    print(f"threads: {torch.get_num_threads()}; CPU bfloat16 (AVX-512 BF16/AMX): {bf16}")
    head = " | ".join(f"train {q} | infer {q}" for q in args.precisions)
    print(f"| arch | input | {head} | train ratio | infer ratio |" + (" bare fp32 |" if args.bare else ""))
    print("| --- | --- |" + " --- |" * (2 * len(args.precisions) + 2 + args.bare))
    for arch in args.archs:
        for size in args.sizes:
            h, w = (int(v) for v in size.split("x"))
            runs: dict[str, list[dict[str, float]]] = {q: [] for q in args.precisions}
            for r in range(args.repeats):
                order = args.precisions if r % 2 == 0 else args.precisions[::-1]
                for q in order:
                    runs[q].append(bench(arch, (h, w), args.batch, args.batches, q))
            med = {
                q: {k: statistics.median(x[k] for x in runs[q]) for k in ("train_img_s", "infer_img_s")}
                for q in args.precisions
            }
            first, last = med[args.precisions[0]], med[args.precisions[-1]]
            cells = " | ".join(f"{med[q]['train_img_s']:.1f} | {med[q]['infer_img_s']:.1f}" for q in args.precisions)
            line = (
                f"| {arch} | {size} | {cells} | {last['train_img_s'] / first['train_img_s']:.2f}x | "
                f"{last['infer_img_s'] / first['infer_img_s']:.2f}x |"
            )
            if args.bare:
                line += f" {bare_loop(arch, (h, w), args.batch, args.batches):.1f} |"
            print(line, flush=True)


if __name__ == "__main__":
    main()
