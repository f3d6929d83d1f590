"""Benchmark: training and evaluation throughput of a config's model (default: the demo DeepLabV3+ R18).

Times ``npdg.train.train_step`` on a fixed batch of synthetic source images (rendering excluded; its
own rate is in ``bench_synthetic.py``) and whole-image inference as ``npdg.evaluate`` runs it. On CUDA
it compares AMP (bf16, or fp16 where bf16 is unsupported) against fp32, both in channels_last. Prints
the machine, the command and the raw figures: steps, seconds, images/s, peak memory.

    python bench/bench_train.py [--config configs/demo/deeplabv3plus_r18.yaml] [--steps 20] [--device auto]
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import resource
import statistics
import sys
import time

import torch

from npdg.config import load_config
from npdg.data.synthetic import SOURCE_DOMAIN, SyntheticDataset
from npdg.models import build_model, select_device
from npdg.train import build_optimizer, train_step


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch(cfg, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ds = SyntheticDataset(SOURCE_DOMAIN, "train", size=cfg.crop or cfg.data.size, length=n)
    samples = [ds[i] for i in range(n)]
    images = torch.stack([s["image"] for s in samples]).to(device)
    labels = torch.stack([s["label"] for s in samples]).to(device)
    return images, labels


def time_train(cfg, device, amp_dtype, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = build_model(cfg.model.arch, cfg.model.encoder, cfg.model.num_classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    images, labels = batch(cfg, cfg.train.batch_size, device)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        train_step(model, model, opt, scaler, images, labels, step, amp_dtype=amp_dtype)
        sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mib()
    return {"steps": steps, "seconds": sum(times), "median_step_s": statistics.median(times),
            "images_per_s": cfg.train.batch_size * steps / sum(times), "peak_mib": peak}


@torch.no_grad()
def time_eval(cfg, device, amp_dtype, steps: int, batch_size: int) -> dict:
    model = build_model(cfg.model.arch, cfg.model.encoder, cfg.model.num_classes).to(device).eval()
    images, _ = batch(cfg, batch_size, device)
    times = []
    for step in range(steps + 2):
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            model(images).argmax(1)
        sync(device)
        if step >= 2:
            times.append(time.perf_counter() - t0)
    return {"batches": steps, "seconds": sum(times), "images_per_s": batch_size * steps / sum(times)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo/deeplabv3plus_r18.yaml")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    cfg = load_config(args.config, args.set)
    device = select_device(args.device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as fh:
        cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(f"machine: {platform.platform()}; cpu {cpu}; threads {torch.get_num_threads()}; gpu {gpu}; torch {torch.__version__}")
    print("command:", " ".join(sys.argv))
    print(f"model {cfg.model.arch}/{cfg.model.encoder}, batch {cfg.train.batch_size}, crop {cfg.crop or cfg.data.size}")
    precisions = {"fp32": None}
    if device.type == "cuda":
        precisions["amp"] = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    results = {}
    for name, dtype in precisions.items():
        tr = time_train(cfg, device, dtype, args.steps, args.warmup)
        ev = time_eval(cfg, device, dtype, args.steps, cfg.eval.batch_size)
        results[name] = tr
        print(f"[{name}] train: {tr['steps']} steps in {tr['seconds']:.2f} s, median step {tr['median_step_s']*1000:.0f} ms, "
              f"{tr['images_per_s']:.2f} images/s, peak memory {tr['peak_mib']:.0f} MiB "
              f"({'GPU allocated' if device.type == 'cuda' else 'process RSS'})")
        print(f"[{name}] eval:  {ev['batches']} batches of {cfg.eval.batch_size} in {ev['seconds']:.2f} s, {ev['images_per_s']:.2f} images/s")
    if "amp" in results:
        print(f"AMP/fp32 training throughput ratio: {results['amp']['images_per_s'] / results['fp32']['images_per_s']:.2f}")
    est = cfg.train.iters * cfg.train.batch_size / results["fp32" if device.type != "cuda" else "amp"]["images_per_s"]
    print(f"estimated compute time for {cfg.train.iters} iterations (scene rendering overlaps in a loader worker): {est/60:.1f} min")


if __name__ == "__main__":
    main()
