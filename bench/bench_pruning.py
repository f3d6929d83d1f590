"""Benchmark: FLOPs ratio vs measured CPU latency ratio of DeepLabV3+ ResNet-18 pruned at r = 0.3.

Target (issue 5): latency ratio within 10 % of the FLOPs ratio. γ are drawn uniformly so selection
spreads over layers as after sparse training. Prints machine, command and raw figures.

    python bench/bench_pruning.py [--size 512x1024] [--rate 0.3] [--repeats 10] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch
from torch import nn

from npdg.cost import cost_report, measure_latency
from npdg.data.transforms import parse_size
from npdg.models import build_model
from npdg.pruning.physical import prune_model
from npdg.pruning.selection import select


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="512x1024")
    p.add_argument("--rate", type=float, default=0.3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--batches", default="1")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = parse_size(args.size)
    batches = tuple(int(b) for b in args.batches.split(","))
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print("command:", " ".join(sys.argv))
    torch.manual_seed(0)
    model = build_model("deeplabv3plus", "resnet18", 19).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0, 1)
    t0 = time.perf_counter()
    plan = select(model, score="gamma", label="npdg", rate=args.rate)
    pruned = prune_model(model, plan).eval()
    print(f"select+prune: {time.perf_counter() - t0:.1f} s; pruned {plan.num_pruned['filter']}/{plan.candidates['filter']} group channels")
    before = cost_report(model, size, batches=batches, repeats=args.repeats)
    after = cost_report(pruned, size, batches=batches, repeats=args.repeats)
    fr = after.gflops / before.gflops
    print(f"GFLOPs {before.gflops:.2f} -> {after.gflops:.2f} (ratio {fr:.3f}); params {before.params/1e6:.2f} M -> {after.params/1e6:.2f} M")
    for key in before.latency_ms:
        lr = after.latency_ms[key] / before.latency_ms[key]
        print(f"latency {key} (separate runs): {before.latency_ms[key]:.1f} ms -> {after.latency_ms[key]:.1f} ms (ratio {lr:.3f}; "
              f"relative gap to FLOPs ratio {abs(lr - fr) / fr:.1%})")
    # Interleaved dense/pruned forwards: background load hits both alike (shared CI machines).
    for b in batches:
        dense, small = [], []
        for _ in range(args.repeats):
            dense.append(measure_latency(model, size, b, warmup=0, repeats=1))
            small.append(measure_latency(pruned, size, b, warmup=0, repeats=1))
        lr = statistics.median(s / d for s, d in zip(small, dense))
        print(f"latency batch{b} (interleaved, median of per-pair ratios): ratio {lr:.3f}; "
              f"relative gap to FLOPs ratio {abs(lr - fr) / fr:.1%}")


if __name__ == "__main__":
    main()
