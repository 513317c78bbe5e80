"""Pruned CPU latency vs MACs, and what the pruning machinery itself costs.

    .venv/bin/python benchmarks/bench_pruning.py [--size 128x64] [--repeats 10]

For ResNet-18 and ResNet-50 at 50% and 25% MACs (uniform policy, L1 criterion), with channel rounding to
8 and without (round_to 1): latency ratio pruned / unpruned at batch 1 and 32. Then, for ResNet-50, the
time of group discovery + projection + surgery + MACs counting.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from autoprune.engine.device import set_threads
from autoprune.models import build_model
from autoprune.pruning.budget import Budget, project, uniform_ratios
from autoprune.pruning.flops import CostModel, count_macs
from autoprune.pruning.groups import PruningGraph
from autoprune.pruning.surgery import prune_to_counts


def latency(model: torch.nn.Module, size: tuple[int, int], batch: int, repeats: int) -> float:
    x = torch.randn(batch, 3, *size)
    model.eval()
    with torch.no_grad():
        for _ in range(2):
            model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def pruned(model: torch.nn.Module, size: tuple[int, int], ratio: float, round_to: int) -> tuple[torch.nn.Module, float]:
    m = copy.deepcopy(model)
    g = PruningGraph(m, size)
    cost = CostModel(g)
    counts = project(cost, uniform_ratios(cost), Budget(int(ratio * cost.base_macs), round_to=round_to))
    scores = {
        n: torch.cat(
            [
                m.get_submodule(o).weight.detach().flatten(1).abs().sum(1)
                for o in pg.out_modules
                if isinstance(m.get_submodule(o), torch.nn.Conv2d)
            ][:1]
        )
        for n, pg in g.groups.items()
    }
    prune_to_counts(g, counts, scores)
    return m, count_macs(m, size)[0] / cost.base_macs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="128x64")
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    set_threads(0)
    print(f"threads {torch.get_num_threads()}, input {size}")
    print("| arch | budget | round_to | MACs ratio | latency ratio b1 | latency ratio b32 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for arch in ("resnet18", "resnet50"):
        torch.manual_seed(0)
        base = build_model(arch, 10).eval()
        base_lat = {b: latency(base, size, b, args.repeats) for b in (1, 32)}
        for ratio in (0.5, 0.25):
            for round_to in (8, 1):
                m, macs_ratio = pruned(base, size, ratio, round_to)
                r = {b: latency(m, size, b, args.repeats) / base_lat[b] for b in (1, 32)}
                print(
                    f"| {arch} | {ratio:.0%} | {round_to} | {macs_ratio:.3f} | {r[1]:.3f} | {r[32]:.3f} |", flush=True
                )
    model = build_model("resnet50", 10)
    t0 = time.perf_counter()
    g = PruningGraph(model, size)
    t1 = time.perf_counter()
    cost = CostModel(g)
    counts = project(cost, uniform_ratios(cost), Budget(cost.base_macs // 2))
    t2 = time.perf_counter()
    prune_to_counts(g, counts, {n: torch.rand(pg.channels) for n, pg in g.groups.items()})
    t3 = time.perf_counter()
    count_macs(model, size)
    t4 = time.perf_counter()
    print(
        f"\nResNet-50 at {size}: discovery {t1 - t0:.2f}s, cost model + projection {t2 - t1:.2f}s, "
        f"surgery {t3 - t2:.2f}s, MACs count {t4 - t3:.2f}s, total {t4 - t0:.2f}s"
    )


if __name__ == "__main__":
    main()
