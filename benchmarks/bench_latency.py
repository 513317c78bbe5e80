"""How well a latency table predicts whole pruned models, and what profiling costs.

    .venv/bin/python benchmarks/bench_latency.py [--archs resnet18 resnet50] [--sizes 128x64 256x128]
        [--threads 1] [--clock cpu] [--repeats 7] [--runs 20] [--policies 6]

For each architecture and input size: profile the table (``autoprune latency profile``'s code path), then
for uniform policies at 75/50/30% keep and random per-group policies (what a search samples), compare the
table's prediction with the measured end-to-end median (batch 1). ``--clock cpu`` times this process's CPU
time, which on a machine shared with other jobs measures what the model takes alone (use one thread).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from autoprune.engine.device import set_threads
from autoprune.models import build_model
from autoprune.pruning.groups import PruningGraph
from autoprune.pruning.latency import (
    LatencyModel,
    make_key,
    profile,
    skeleton,
    uniform_widths,
    wall_measure,
    width_choices,
)


def policies(widths: dict[str, int], n_random: int, seed: int = 1) -> list[tuple[str, dict[str, int]]]:
    out = [(f"uniform {k:.0%}", uniform_widths(widths, k, 8, 0.1)) for k in (0.75, 0.5, 0.3)]
    rng = random.Random(seed)
    for i in range(n_random):
        out.append((f"random {i}", {n: rng.choice(width_choices(b, 8, 0.1)) for n, b in widths.items()}))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    p.add_argument("--sizes", nargs="+", default=["128x64", "256x128"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=["wall", "cpu"], default="cpu")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--policies", type=int, default=3, help="random policies besides the three uniform ones")
    p.add_argument("--save", help="folder for each table and its measured policies (JSON), to study the fit")
    args = p.parse_args()
    set_threads(args.threads)
    print(f"threads {torch.get_num_threads()}, clock {args.clock}, batch 1, median of {args.runs} runs per model")
    print(
        "| arch | input | policy | mean keep | predicted ms | measured ms | error | predicted / unpruned "
        "| measured / unpruned | ratio error |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    summary = []
    for arch in args.archs:
        for size_s in args.sizes:
            size = tuple(int(v) for v in size_s.split("x"))
            torch.manual_seed(0)
            model = build_model(arch, 2).eval()
            key = make_key(arch, size, 1, threads=args.threads, clock=args.clock)
            t0 = time.perf_counter()
            table = profile(
                model, key, wall_measure(threads=args.threads, repeats=args.repeats, clock=args.clock), progress=False
            )
            secs = time.perf_counter() - t0
            graph = PruningGraph(model, size)
            lat = LatencyModel(table, graph)
            # Policy and unpruned model are timed in alternation, so their ratio sees the same load on a shared
            # machine; the absolute error also carries the load's drift since the table was made.
            measure = wall_measure(threads=args.threads, repeats=max(1, args.runs // 4), clock=args.clock)
            full = skeleton(model, size, graph.widths())
            pred_full = lat.predict_ms(graph.widths())
            errs, ratio_errs, measured = [], [], []
            for name, widths in policies(graph.widths(), args.policies):
                pred = lat.predict_ms(widths)
                pruned = skeleton(model, size, widths)
                tp, tu = [], []
                for _ in range(4):
                    tp += measure(pruned, (1, 3, *size))
                    tu += measure(full, (1, 3, *size))
                got, got_full = 1000 * statistics.median(tp), 1000 * statistics.median(tu)
                keep = statistics.fmean(widths[n] / b for n, b in graph.widths().items())
                errs.append(pred / got - 1)
                ratio_errs.append((pred / pred_full) / (got / got_full) - 1)
                measured.append({"policy": name, "widths": widths, "measured_ms": got, "unpruned_ms": got_full})
                print(
                    f"| {arch} | {size_s} | {name} | {keep:.2f} | {pred:.2f} | {got:.2f} | {pred / got - 1:+.1%} "
                    f"| {pred / pred_full:.3f} | {got / got_full:.3f} | {ratio_errs[-1]:+.1%} |",
                    flush=True,
                )
            if args.save:
                Path(args.save).mkdir(parents=True, exist_ok=True)
                table.save(Path(args.save) / f"{arch}-{size_s}.json")
                (Path(args.save) / f"{arch}-{size_s}-measured.json").write_text(json.dumps(measured))
            points = sum(len(k.cin) * len(k.cout) for k in table.kinds)
            summary.append(
                f"{arch} {size_s}: profile {secs:.0f} s ({len(table.kinds)} kinds, {points} points), "
                f"mean |error| {statistics.fmean(abs(e) for e in errs):.1%}, max {max(abs(e) for e in errs):.1%}; "
                f"ratio to unpruned: mean |error| {statistics.fmean(abs(e) for e in ratio_errs):.1%}, "
                f"max {max(abs(e) for e in ratio_errs):.1%}"
            )
    print()
    for line in summary:
        print(line)


if __name__ == "__main__":
    main()
