"""Benchmark: sensitivity probe vs a plain forward pass (target: ≤ 1.5× time and peak memory).

DeepLabV3+ ResNet-18 (random init) at 128×256, B = 4 source images × K = 4 styles (16 inputs, one
forward). Styles are precomputed so both variants run the same model on the same batch; the probe
adds its hooks' work (the streaming statistics). Time: median of ``--repeat`` runs after a warm-up.
Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the growth of the peak resident set
size (``ru_maxrss``) over the set-up, each variant measured in a fresh process.

    python bench/bench_sensitivity.py [--device cpu|cuda] [--repeat 5] [--size 128x256]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch


def _setup(device: str, size: tuple[int, int], b: int, k: int):
    from npdg.models import build_model

    torch.manual_seed(0)
    model = build_model("deeplabv3plus", "resnet18", 19).to(device).eval()
    styled = torch.rand(b * k, 3, *size, device=device)
    return model, styled


def _variant(name: str, model, styled, k: int):
    from npdg.sensitivity import probe

    if name == "plain":
        def run():
            with torch.no_grad():
                model(styled)
    else:
        def run():
            probe(model, styled, None, n_styles=k, batch_size=styled.shape[0] // k, with_groups=False)
    return run


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def child(args: argparse.Namespace) -> None:
    """Measure one variant in this process; print JSON {time_s, peak_bytes}."""
    size = tuple(int(v) for v in args.size.split("x"))
    model, styled = _setup(args.device, size, args.images, args.styles)
    run = _variant(args.child, model, styled, args.styles)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        start_mem = torch.cuda.memory_allocated()
    run()  # warm-up (and the memory peak)
    _sync(args.device)
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - start_mem
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        run()
        _sync(args.device)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"time_s": statistics.median(times), "peak_bytes": peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", default="128x256")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--styles", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--child", choices=("plain", "probe"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    print(f"machine: {platform.machine()} {platform.processor() or ''} | python {platform.python_version()} | "
          f"torch {torch.__version__} | threads {torch.get_num_threads()} | device {args.device}")
    print(f"command: {' '.join(sys.argv)}")
    out = {}
    for name in ("plain", "probe"):
        cmd = [sys.executable, __file__, "--child", name, "--device", args.device, "--size", args.size,
               "--images", str(args.images), "--styles", str(args.styles), "--repeat", str(args.repeat)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[name] = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{name:>6}: {1000 * out[name]['time_s']:8.1f} ms (median of {args.repeat}), "
              f"peak +{out[name]['peak_bytes'] / 2**20:8.1f} MiB")
    t_ratio = out["probe"]["time_s"] / out["plain"]["time_s"]
    m_ratio = out["probe"]["peak_bytes"] / max(out["plain"]["peak_bytes"], 1)
    print(f"ratio probe/plain: time {t_ratio:.2f}x, peak memory {m_ratio:.2f}x  (target <= 1.5x each)")


if __name__ == "__main__":
    main()
