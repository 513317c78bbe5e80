"""Training and inference throughput (images/s) of the engine on this machine, and its own overhead.

    .venv/bin/python benchmarks/bench_engine.py [--archs resnet18 resnet50] [--sizes 128x64 256x128]

Throughput: ``fit`` on synthetic in-memory images (the same path as real data once decoded) vs a bare
forward/backward/step loop on the same tensors; the difference is the engine's overhead (sampling,
augmentation, loss bookkeeping, progress bar). Inference: ``extract_features``.
"""

from __future__ import annotations

import argparse
import time

import torch

from autoprune.data.loading import ImageStore
from autoprune.engine.device import set_threads
from autoprune.engine.evaluate import extract_features
from autoprune.engine.losses import cross_entropy_ls, hard_triplet_loss
from autoprune.engine.train import TrainSettings, fit, make_optimizer
from autoprune.models import build_model


def fake_store(n: int, size: tuple[int, int], ids: int = 16) -> ImageStore:
    store = ImageStore([(f"img{i}", i % ids, i % 2) for i in range(n)], size)
    gen = torch.Generator().manual_seed(0)
    store._cache = [(torch.rand(3, *size, generator=gen) * 255).to(torch.uint8) for _ in range(n)]
    return store


def bench(arch: str, size: tuple[int, int], batch: int, batches: int) -> dict[str, float]:
    n = batch * batches
    store = fake_store(n, size)
    device = torch.device("cpu")
    s = TrainSettings(epochs=1, batch_size=batch, num_instances=4, warmup_epochs=0)
    torch.manual_seed(0)
    model = build_model(arch, 16)
    fit(model, store, TrainSettings(epochs=1, batch_size=batch, num_instances=4, max_batches_per_epoch=1), device,
        progress=False)  # warm-up: oneDNN builds its kernels for these shapes once
    t0 = time.perf_counter()
    fit(model, store, s, device, progress=True, desc=f"{arch} {size[0]}x{size[1]}")
    engine = time.perf_counter() - t0
    # the bare loop: the same number of forward/backward/steps on pre-built tensors
    opt = make_optimizer(list(model.parameters()), s)
    x = torch.randn(batch, 3, *size)
    y = torch.arange(batch) // 4
    model.train()
    t0 = time.perf_counter()
    for _ in range(batches):
        logits, feat = model(x)
        loss = cross_entropy_ls(logits, y) + hard_triplet_loss(feat, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    bare = time.perf_counter() - t0
    model.eval()
    t0 = time.perf_counter()
    extract_features(model, store, device, batch_size=128)
    infer = time.perf_counter() - t0
    return {"train_img_s": n / engine, "bare_img_s": n / bare, "overhead": max(0.0, (engine - bare) / engine),
            "infer_img_s": n / infer}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    p.add_argument("--sizes", nargs="+", default=["128x64", "256x128"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=6)
    args = p.parse_args()
    set_threads(0)
    print(f"threads: {torch.get_num_threads()}")
    print("| arch | input | train img/s (engine) | train img/s (bare loop) | engine overhead | inference img/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for arch in args.archs:
        for size in args.sizes:
            h, w = (int(v) for v in size.split("x"))
            r = bench(arch, (h, w), args.batch, args.batches)
            print(f"| {arch} | {size} | {r['train_img_s']:.1f} | {r['bare_img_s']:.1f} | {r['overhead']:.1%} | "
                  f"{r['infer_img_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
