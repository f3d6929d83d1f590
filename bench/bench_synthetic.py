"""Throughput of the synthetic scene generator (content + appearance), one core.

Prints the machine, the command and raw figures (scenes, seconds, scenes/s) per domain and overall,
plus the content-only and style-bank rates. The target is >= 50 scenes/s per core at 256x512.

    python bench/bench_synthetic.py [--size 256x512] [--scenes 100] [--split train]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import cv2
import torch

from npdg.data import scene as sc
from npdg.data.style_bank import style_image
from npdg.data.synthetic import DOMAINS, check_size, noise_tiles, render_scene


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(fn, n: int) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of ``fn(0) .. fn(n-1)`` (CPU time is robust to a busy host)."""
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    return time.perf_counter() - t0, time.process_time() - c0


def row(name: str, n: int, wall: float, cpu: float) -> str:
    return f"{name:<16} {n:>7} {wall:>9.3f} {n / wall:>9.1f} {cpu:>9.3f} {n / cpu:>10.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="256x512", help="HxW, multiples of 32 (default 256x512)")
    ap.add_argument("--scenes", type=int, default=100, help="scenes per domain (default 100)")
    ap.add_argument("--split", default="train", choices=("train", "val", "test"))
    args = ap.parse_args(argv)
    size = check_size(args.size)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    print(f"machine: {platform.platform()} | python {platform.python_version()} | cpu: {cpu_model()} | "
          f"cores: {os.cpu_count()} | threads: torch 1, cv2 1 | numpy/cv2 {cv2.__version__}")
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    t0 = time.perf_counter()
    noise_tiles()
    print(f"noise bank (once per process): {time.perf_counter() - t0:.3f} s")
    render_scene("source", args.split, 0, size)  # warm-up
    print(f"load average before: {os.getloadavg()[0]:.2f} (wall-clock figures are inflated on a busy host)")
    print(f"{'what':<16} {'scenes':>7} {'wall s':>9} {'scenes/s':>9} {'cpu s':>9} {'scenes/cpu-s':>10}")
    n = args.scenes
    tot_w = tot_c = 0.0
    for d in DOMAINS:
        w, c = timed(lambda i, d=d: render_scene(d, args.split, i, size), n)
        tot_w, tot_c = tot_w + w, tot_c + c
        print(row(d, n, w, c))
    print(row("overall", n * len(DOMAINS), tot_w, tot_c))
    for layout in sc.LAYOUTS:
        print(row(f"content:{layout}", n, *timed(lambda i, lay=layout: sc.build_scene(lay, args.split, i, size), n)))
    print(row("style bank", n, *timed(lambda i: style_image(i, size), n)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
