"""Time evaluate_features (chunked) and evaluate_rank on random features: python benchmarks/bench_evaluation.py.

Options: --num 20000 --dim 512 --pids 1000 --cams 6 --device cpu|cuda --dense (also time the dense path:
pairwise_distance + evaluate_rank, which holds the full float32 matrix, 1.6 GB at 20k x 20k).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from autoprune.evaluation import evaluate_features, evaluate_rank, pairwise_distance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--num", type=int, default=20000, help="queries = gallery size")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--pids", type=int, default=1000)
    ap.add_argument("--cams", type=int, default=6)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunk-size", type=int, default=4096)
    ap.add_argument("--dense", action="store_true")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    qf = torch.randn(args.num, args.dim, generator=gen).to(args.device)
    gf = torch.randn(args.num, args.dim, generator=gen).to(args.device)
    q_pids, g_pids = rng.integers(0, args.pids, args.num), rng.integers(0, args.pids, args.num)
    q_cams, g_cams = rng.integers(0, args.cams, args.num), rng.integers(0, args.cams, args.num)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}, device {args.device}, {args.num} x {args.num} x {args.dim}"
    )

    t, cpu = time.perf_counter(), time.process_time()
    res = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, chunk_size=args.chunk_size)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    print(
        f"evaluate_features (chunked): {time.perf_counter() - t:.1f} s wall, {time.process_time() - cpu:.1f} s CPU"
        f"  {res}"
    )

    if args.dense:
        t, cpu = time.perf_counter(), time.process_time()
        dist = pairwise_distance(qf, gf, chunk_size=args.chunk_size)
        t_dist, cpu_dist = time.perf_counter() - t, time.process_time() - cpu
        cmc, mAP = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)
        print(
            f"pairwise_distance: {t_dist:.1f} s wall, {cpu_dist:.1f} s CPU; evaluate_rank: "
            f"{time.perf_counter() - t - t_dist:.1f} s wall, {time.process_time() - cpu - cpu_dist:.1f} s CPU  "
            f"rank1 {cmc[0]:.6f} mAP {mAP:.6f}"
        )


if __name__ == "__main__":
    main()
