"""Inference cost of a model: FLOPs, parameters, checkpoint size and measured latency (docs/method.md §5).

* FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` (counts every matmul/conv of
  one forward, 2 FLOPs per multiply-add); torch-pruning's ``count_ops_and_params`` (MACs of
  conv/linear/norm modules) is reported beside it as ``gmacs_tp``, a cross-check: for CNNs
  ``gflops ≈ 2 · gmacs_tp``.
* Latency: ``warmup`` untimed forwards, then the median of ``repeats`` timed ones, per batch size,
  under ``torch.inference_mode`` (CUDA synchronised around each timing).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from npdg.errors import ConfigError


@dataclass(frozen=True)
class CostReport:
    """Cost of one model at one input size."""

    gflops: float
    gmacs_tp: float
    params: int
    size: tuple[int, int]
    device: str
    latency_ms: dict[str, float] = field(default_factory=dict)  # "batch1", "batch8", ...
    checkpoint_bytes: int | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        return d


def _input(model: nn.Module, size: tuple[int, int], batch: int = 1) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)


def count_params(model: nn.Module) -> int:
    """Number of parameters (head gates included if present)."""
    return sum(p.numel() for p in model.parameters())


@torch.inference_mode()
def count_flops(model: nn.Module, size: tuple[int, int]) -> float:
    """FLOPs of one forward of a ``[1, 3, H, W]`` input (torch's flop counter)."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(_input(model, size))
    finally:
        model.train(was_training)
    return float(counter.get_total_flops())


def count_macs_tp(model: nn.Module, size: tuple[int, int]) -> float:
    """MACs of one forward by torch-pruning's module-hook counter (cross-check of :func:`count_flops`)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            macs, _ = tp.utils.count_ops_and_params(model, _input(model, size))
    finally:
        model.train(was_training)
    return float(macs)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(model: nn.Module, size: tuple[int, int], batch: int = 1, warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time in milliseconds of one forward of a ``[batch, 3, H, W]`` input."""
    if warmup < 0 or repeats < 1 or batch < 1:
        raise ConfigError(f"latency needs warmup ≥ 0, repeats ≥ 1, batch ≥ 1 (got {warmup}, {repeats}, {batch})")
    was_training = model.training
    model.eval()
    x = _input(model, size, batch)
    device = x.device
    times = []
    try:
        for i in range(warmup + repeats):
            _sync(device)
            t0 = time.perf_counter()
            model(x)
            _sync(device)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        model.train(was_training)
    return float(statistics.median(times))


def cost_report(
    model: nn.Module,
    size: tuple[int, int] = (512, 1024),
    *,
    batches: tuple[int, ...] = (1, 8),
    warmup: int = 3,
    repeats: int = 10,
    checkpoint: str | Path | None = None,
) -> CostReport:
    """FLOPs, MACs, parameters, checkpoint size and latency for each batch size (empty ``batches``
    skips timing)."""
    size = (int(size[0]), int(size[1]))
    if min(size) < 1:
        raise ConfigError(f"input size must be positive, got {size}")
    latency = {f"batch{b}": measure_latency(model, size, b, warmup, repeats) for b in batches}
    return CostReport(
        gflops=count_flops(model, size) / 1e9,
        gmacs_tp=count_macs_tp(model, size) / 1e9,
        params=count_params(model),
        size=size,
        device=str(next(model.parameters()).device),
        latency_ms=latency,
        checkpoint_bytes=None if checkpoint is None else Path(checkpoint).stat().st_size,
    )


def compare(before: CostReport, after: CostReport) -> dict:
    """``{"before": ..., "after": ..., "ratio": {...}}`` — the prune command's cost JSON."""
    ratio = {
        "gflops": after.gflops / before.gflops if before.gflops else None,
        "params": after.params / before.params if before.params else None,
    }
    for key, value in after.latency_ms.items():
        if before.latency_ms.get(key):
            ratio[f"latency_{key}"] = value / before.latency_ms[key]
    return {"before": before.to_dict(), "after": after.to_dict(), "ratio": ratio}


__all__ = ["CostReport", "compare", "cost_report", "count_flops", "count_macs_tp", "count_params", "measure_latency"]
