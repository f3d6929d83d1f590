"""The training engine: one readable, iteration-based loop (in the spirit of nanoGPT's ``train.py``).

``train(cfg, run_dir)`` builds the model and the source dataset from a :class:`~npdg.config.Config`,
then repeats for ``cfg.train.iters`` iterations::

    images, labels = next(batches)                       # infinite, resumable, per-rank sharded
    images, labels = augment(images, labels)             # random scale / crop / flip, on the device
    for t in batch_transforms: images, labels = t(...)   # e.g. DSP appends stylized copies
    loss = CE(model(images), labels) + Σ extra_losses    # ignore index 255
    loss.backward(); grad_hooks(...); optimizer.step()   # e.g. the sparsity subgradient
    log / checkpoint / callbacks every N iterations

The extension points (``batch_transforms``, ``extra_losses``, ``grad_hooks``, ``callbacks``) are what
the later NPDG stages plug in; ERM uses none of them. On CUDA the step runs under AMP (bf16 where
supported, else fp16 with a GradScaler) in channels_last, and never synchronizes with the host: the loss
is accumulated on the device and read once per ``train.log_every`` iterations. A non-finite loss stops
the run with the iteration where it first appeared; checkpoints are only written after the loss since
the previous one was checked, so ``checkpoints/last.pt`` is always a good state.

Run under ``torchrun --nproc_per_node=N -m npdg train ...``: the engine reads ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``, initializes the process group (NCCL on CUDA, gloo on CPU), wraps the model in DDP,
shards the data per rank, and lets only rank 0 write files and log.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from npdg.config import DSP_MODES, SPARSITY_MODES, Config, config_to_dict, dump_config, validate
from npdg.data.transforms import Resize
from npdg.errors import ConfigError, NpdgError
from npdg.labels import IGNORE
from npdg.models import select_device
from npdg.runs import (
    RunDir,
    append_metrics,
    atomic_save,
    atomic_write_text,
    capture_rng_state,
    load_checkpoint,
    prepare_run_dir,
    restore_rng_state,
    truncate_metrics,
)

#: (images, labels, step) -> (images, labels). Applied after the geometric augmentation.
BatchTransform = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
#: (model, images, labels, logits, step) -> scalar tensor added to the loss.
ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
#: (model, step) -> None, called after backward and before the optimizer step (grads are unscaled).
GradHook = Callable[[nn.Module, int], None]
#: (step, total, metrics) -> None, called after every iteration (metrics: the latest logged values).
ProgressFn = Callable[[int, int, dict[str, float]], None]

CHECKPOINT_FORMAT = 1


class TrainingDiverged(NpdgError):
    """The loss became NaN or infinite."""


class OutOfMemory(NpdgError):
    """The accelerator ran out of memory; the message says which setting to lower."""


@dataclass
class TrainContext:
    """What callbacks see: the live training objects (mutable, updated every iteration)."""

    cfg: Config
    model: nn.Module  # the unwrapped model (not the DDP wrapper)
    optimizer: torch.optim.Optimizer
    device: torch.device
    step: int = 0
    run: RunDir | None = None
    rank: int = 0
    world_size: int = 1
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class Callback:
    """Call ``fn(ctx)`` every ``every`` iterations (after logging and checkpointing at that step)."""

    every: int
    fn: Callable[[TrainContext], None]
    name: str = "callback"


@dataclass(frozen=True)
class TrainResult:
    """Summary of a finished training call."""

    run_dir: Path | None
    iters_done: int
    last_loss: float | None
    images_per_s: float | None
    seconds: float
    final_eval: dict[str, Any] | None = None


# ==================================================================================================
# distributed setup
# ==================================================================================================
@dataclass(frozen=True)
class DistInfo:
    """Process placement: rank, number of processes, local GPU index."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_from_env() -> DistInfo:
    """Read torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (defaults: a single process)."""
    try:
        return DistInfo(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as exc:
        raise ConfigError(f"invalid torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {exc}") from None


def setup_distributed(device_name: str = "auto") -> tuple[DistInfo, torch.device]:
    """Initialize the process group when launched by torchrun and pick this process's device."""
    info = dist_from_env()
    device = select_device(device_name)
    if info.enabled:
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
            device = torch.device("cuda", info.local_rank)
        if device.type == "mps":
            raise ConfigError("multi-process training is not supported on MPS")
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def _barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def _broadcast_buffers(model: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP synchronizes parameters through gradients, but each rank updates its BN running statistics on
    its own shard; evaluation and the saved weights must use one consistent set.
    """
    if info.enabled and dist.is_initialized():
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


# ==================================================================================================
# data
# ==================================================================================================
def open_dataset(spec: str, split: str, size: tuple[int, int] | None, length: int | None = None,
                 transform: Callable | None = None) -> Dataset:
    """Open a dataset from a spec.

    ``spec`` is a synthetic domain name (``synthetic`` = the source domain) or ``NAME:ROOT`` for a real
    dataset, optionally ``NAME:ROOT@SPLIT_FILE`` to select images with a split file (GTA5 and SYNTHIA
    have no official val split; RobustNet's ``split_data/*_val.txt`` files go here). Real images are
    resized to ``size`` (None → native size) unless an explicit ``transform`` is given.
    """
    if ":" in spec:
        name, rest = spec.split(":", 1)
        root, _, split_file = rest.partition("@")
        from npdg.data.real import open_real

        if transform is None and size is not None:
            transform = Resize(tuple(size))
        return open_real(name.strip().lower(), root, split, transform=transform, split_file=split_file or None)
    from npdg.data.synthetic import DOMAINS, SOURCE_DOMAIN, SyntheticDataset

    domain = SOURCE_DOMAIN if spec == "synthetic" else spec
    if domain not in DOMAINS:
        raise ConfigError(
            f"unknown data spec {spec!r}: use a synthetic domain ({', '.join(DOMAINS)}) or NAME:ROOT for real data"
        )
    if size is None:
        return SyntheticDataset(domain, split, length=length, transform=transform)
    return SyntheticDataset(domain, split, size=tuple(size), length=length, transform=transform)


def dataset_name(spec: str) -> str:
    """Short name of a dataset spec (the domain or the real dataset's name)."""
    if ":" in spec:
        return spec.split(":", 1)[0].strip().lower()
    if spec == "synthetic":
        from npdg.data.synthetic import SOURCE_DOMAIN

        return SOURCE_DOMAIN
    return spec


def target_specs(cfg: Config) -> list[str]:
    """The configured targets; none given with a synthetic source → every held-out synthetic domain."""
    if cfg.data.targets:
        return list(cfg.data.targets)
    if ":" in cfg.data.source:
        return []
    from npdg.data.synthetic import domain_names

    source = dataset_name(cfg.data.source)
    return [name for name in domain_names("heldout") if name != source]


def extra_eval_specs(cfg: Config) -> list[str]:
    """Domains evaluated but not averaged into the target mIoU: with default synthetic targets, the
    content-shift domain (the method's stated limit, shown beside the style-shift targets)."""
    if cfg.data.targets or ":" in cfg.data.source:
        return []
    from npdg.data.synthetic import domain_names

    return list(domain_names("content_shift"))


class InfiniteSampler(Sampler[int]):
    """Endless per-rank stream of shuffled indices that can start at any position.

    Epoch ``e`` is the order of a :class:`DistributedSampler` after ``set_epoch(e)`` (seeded, sharded
    per rank), so the stream is a pure function of (seed, rank, world size, position): a resumed run
    starts exactly where the interrupted one stopped by passing ``start = iterations × batch size``.
    """

    def __init__(self, dataset: Dataset, seed: int, rank: int = 0, world_size: int = 1, start: int = 0):
        self.inner = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        per_epoch = len(self.inner)
        epoch, offset = divmod(self.start, per_epoch)
        while True:
            self.inner.set_epoch(epoch)
            order = list(self.inner)
            yield from order[offset:]
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # pragma: no cover - infinite; DataLoader only needs it for len(loader)
        return 2**62


def make_batches(dataset: Dataset, cfg: Config, info: DistInfo, start_iter: int, device: torch.device) -> Iterator:
    """An endless iterator of collated batches for this rank, positioned after ``start_iter`` iterations."""
    if len(dataset) < cfg.train.batch_size:
        raise ConfigError(
            f"the training set has {len(dataset)} images, fewer than train.batch_size={cfg.train.batch_size}"
        )
    sampler = InfiniteSampler(dataset, cfg.train.seed, info.rank, info.world_size, start_iter * cfg.train.batch_size)
    loader = DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        num_workers=cfg.train.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=cfg.train.num_workers > 0,
    )
    return iter(loader)


# ==================================================================================================
# augmentation (on the device, labels with nearest neighbour)
# ==================================================================================================
def _rand(gen: torch.Generator, n: int) -> list[float]:
    return torch.rand(n, generator=gen).tolist()


def random_scale_crop_flip(
    images: torch.Tensor,
    labels: torch.Tensor,
    crop: tuple[int, int],
    scale_range: tuple[float, float],
    hflip: bool,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: rescale by a factor in ``scale_range``, take a random ``crop``, flip with p = 0.5.

    Images are resized bilinearly, labels with nearest neighbour (never invents ids); a rescaled image
    smaller than the crop is padded with 0 (image) and 255 (label, ignored by the loss). Random numbers
    come from the CPU generator ``gen`` so the step never waits on the device.
    """
    b, _, h, w = images.shape
    ch, cw = crop
    lo, hi = scale_range
    u = _rand(gen, 4 * b)
    out_x, out_y = [], []
    for i in range(b):
        s = lo + (hi - lo) * u[4 * i]
        sh, sw = max(1, round(h * s)), max(1, round(w * s))
        x = images[i : i + 1]
        y = labels[i : i + 1, None].float()
        if (sh, sw) != (h, w):
            x = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=(sh, sw), mode="nearest")
        ph, pw = max(0, ch - sh), max(0, cw - sw)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), value=0.0)
            y = F.pad(y, (0, pw, 0, ph), value=float(IGNORE))
        top = int(u[4 * i + 1] * (x.shape[2] - ch + 1))
        left = int(u[4 * i + 2] * (x.shape[3] - cw + 1))
        x = x[:, :, top : top + ch, left : left + cw]
        y = y[:, :, top : top + ch, left : left + cw]
        if hflip and u[4 * i + 3] < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        out_x.append(x)
        out_y.append(y)
    return torch.cat(out_x), torch.cat(out_y)[:, 0].long()


@dataclass
class PhotometricAugment:
    """``photometric`` mode: colour jitter, Gaussian blur and sensor noise on the image batch.

    Per-sample brightness/contrast/saturation factors are drawn in ``[1 - s, 1 + s]`` from the CPU
    generator; the noise uses the device's global RNG (saved in checkpoints). Labels are untouched.
    """

    strength: float
    blur_prob: float
    noise_std: float
    gen: torch.Generator

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        b = images.shape[0]
        r = torch.rand(b, 5, generator=self.gen)
        f = (1 - self.strength + 2 * self.strength * r[:, :3]).to(images.device, non_blocking=True)
        bright, contrast, sat = (f[:, k].view(b, 1, 1, 1) for k in range(3))
        x = images * bright
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - gray) * sat + gray
        blur = (r[:, 3] < self.blur_prob).tolist()
        if any(blur):
            sigma = 0.5 + 1.5 * float(r[0, 4])
            k = torch.arange(-2, 3, dtype=x.dtype, device=x.device)
            k = torch.exp(-(k**2) / (2 * sigma**2))
            k = k / k.sum()
            mask = torch.tensor(blur, device=x.device).view(b, 1, 1, 1)
            xb = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5).repeat(3, 1, 1, 1), groups=3)
            xb = F.conv2d(F.pad(xb, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1).repeat(3, 1, 1, 1), groups=3)
            x = torch.where(mask, xb, x)
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn_like(x)
        return x.clamp_(0.0, 1.0), labels


# ==================================================================================================
# optimizer and learning-rate schedule
# ==================================================================================================
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


def param_groups(model: nn.Module, cfg: Config) -> list[dict[str, Any]]:
    """Split parameters into encoder / head groups (head lr × ``train.head_lr_mult``, as mmseg's
    ``custom_keys={'head': lr_mult=10}``) and, for AdamW, exempt normalization parameters and
    position blocks from weight decay (mmseg's SegFormer ``decay_mult=0`` for ``norm``/``pos_block``).
    SGD decays everything (RobustNet/SHADE)."""
    t = cfg.train
    no_decay: set[int] = set()
    if t.optimizer == "adamw":
        for mname, module in model.named_modules():
            if isinstance(module, _NORM_TYPES) or "pos_block" in mname:
                no_decay.update(id(p) for p in module.parameters(recurse=False))
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "encoder" if ".encoder." in f".{name}" else "head"
        groups.setdefault((part, id(p) not in no_decay), []).append(p)
    out = []
    for (part, decay), params in sorted(groups.items()):
        lr = t.lr * (t.head_lr_mult if part == "head" else 1.0)
        out.append(
            {
                "params": params,
                "name": f"{part}{'' if decay else '_no_decay'}",
                "base_lr": lr,
                "lr": lr,
                "weight_decay": t.weight_decay if decay else 0.0,
            }
        )
    return out


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """SGD (momentum, RobustNet) or AdamW (SegFormer), with :func:`param_groups`."""
    groups = param_groups(model, cfg)
    if cfg.train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.train.lr, momentum=cfg.train.momentum)
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.999))


WARMUP_RATIO = 1e-6  # mmseg's linear warm-up starts at lr × 1e-6


def lr_factor(step: int, cfg: Config) -> float:
    """Poly decay ``(1 - step / iters) ** power`` times mmseg's linear warm-up over ``warmup_iters``.

    The schedule is a pure function of the iteration, so restoring the iteration restores it exactly.
    """
    t = cfg.train
    factor = (1.0 - min(step, t.iters) / t.iters) ** t.poly_power
    if step < t.warmup_iters:
        k = (1.0 - step / t.warmup_iters) * (1.0 - WARMUP_RATIO)
        factor *= 1.0 - k
    return factor


def set_lr(optimizer: torch.optim.Optimizer, step: int, cfg: Config) -> float:
    """Apply the schedule to every parameter group; return the (first group's) learning rate."""
    f = lr_factor(step, cfg)
    for g in optimizer.param_groups:
        g["lr"] = g.get("base_lr", cfg.train.lr) * f
    return optimizer.param_groups[0]["lr"]


# ==================================================================================================
# model and weights
# ==================================================================================================
def build_model_from_config(cfg: Config) -> nn.Module:
    """``npdg.models.build_model`` with the configured arch, encoder, classes and local weights."""
    from npdg.models import build_model

    m = cfg.model
    return build_model(m.arch, m.encoder, m.num_classes, m.encoder_weights, aspp=m.aspp)


def save_weights(model: nn.Module, path: Path, meta: dict[str, str]) -> None:
    """Write plain weights: ``npdg.models.save_model`` for a SegModel, raw safetensors otherwise."""
    from npdg.models import SegModel, save_model

    if isinstance(model, SegModel):
        save_model(_sparsity_without_gates(model), path, extra_meta=meta)
        return
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ==================================================================================================
# checkpoints
# ==================================================================================================
def checkpoint_state(ctx: TrainContext, scaler: torch.amp.GradScaler, aug_gen: torch.Generator,
                     last_loss: float | None, elapsed: float) -> dict[str, Any]:
    """Everything needed to continue bit-exactly, as tensors and plain containers (weights_only)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "iter": ctx.step,
        "samples_seen": ctx.step * ctx.cfg.train.batch_size,
        "world_size": ctx.world_size,
        "config": config_to_dict(ctx.cfg),
        "model": {k: v.detach().cpu() for k, v in ctx.model.state_dict().items()},
        "optimizer": ctx.optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": capture_rng_state(),
        "aug_rng": aug_gen.get_state(),
        "last_loss": last_loss,
        "elapsed": elapsed,
    }


def save_checkpoint(ctx: TrainContext, state: dict[str, Any]) -> Path:
    """Atomically write ``last.pt`` (and ``iter_XXXXXX.pt`` if kept) and refresh ``model.safetensors``."""
    assert ctx.run is not None
    atomic_save(state, ctx.run.last_checkpoint)
    if ctx.cfg.train.keep_checkpoints:
        atomic_save(state, ctx.run.iter_checkpoint(ctx.step))
    save_weights(ctx.model, ctx.run.weights, {"iter": str(ctx.step), "mode": ctx.cfg.train.mode})
    return ctx.run.last_checkpoint


def restore_checkpoint(ckpt: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                       scaler: torch.amp.GradScaler, aug_gen: torch.Generator, info: DistInfo) -> None:
    """Load model, optimizer, GradScaler and RNG states from a :func:`checkpoint_state` dict."""
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise NpdgError(f"unsupported checkpoint format {ckpt.get('format')!r} (expected {CHECKPOINT_FORMAT})")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise NpdgError(f"the checkpoint does not match the configured model: {exc}") from None
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler.is_enabled() and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    if info.is_main:
        restore_rng_state(ckpt["rng"])
        aug_gen.set_state(ckpt["aug_rng"])
    else:  # only rank 0's streams are stored: other ranks re-seed deterministically from (seed, rank, iter)
        s = ckpt["config"]["train"]["seed"] + 7919 * info.rank + ckpt["iter"]
        seed_everything(s)
        aug_gen.manual_seed(s)


# ==================================================================================================
# evaluation
# ==================================================================================================
def _eval_size(spec: str, cfg: Config) -> tuple[int, int] | None:
    """Synthetic domains are rendered at ``data.size``; real datasets stay native (the protocol sizes them)."""
    return None if ":" in spec else cfg.data.size


def evaluate_run(model: nn.Module, cfg: Config, device: torch.device, limit: int | None,
                 datasets: dict[str, Dataset] | None = None, checkpoint: str | None = None) -> dict[str, Any]:
    """Evaluate on the source's eval split (if ``eval.include_source``) and every target.

    Returns ``EvalResult.to_dict()`` plus a ``summary`` with ``source_miou`` and ``mean_target_miou``
    (what ``runs list`` shows). Under torch.distributed every rank evaluates a shard and the
    confusion matrices are all-reduced by :func:`npdg.evaluate.evaluate`.
    """
    from npdg.evaluate import evaluate

    source = dataset_name(cfg.data.source)
    if datasets is None:
        datasets = {}
        if cfg.eval.include_source:
            datasets[source] = open_dataset(cfg.data.source, cfg.data.eval_split, _eval_size(cfg.data.source, cfg))
        for spec in target_specs(cfg) + extra_eval_specs(cfg):
            datasets.setdefault(dataset_name(spec), open_dataset(spec, cfg.data.eval_split, _eval_size(spec, cfg)))
        targets = [dataset_name(spec) for spec in target_specs(cfg) if dataset_name(spec) != source]
    else:
        targets = [name for name in datasets if name != source]
    result = evaluate(model, datasets, _protocol(cfg), cfg.eval.batch_size, device, limit=limit, targets=targets,
                      source=source, seed=cfg.train.seed, checkpoint=checkpoint)
    out = result.to_dict()
    results = out.get("results", {})
    out["summary"] = {
        "source": source,
        "source_miou": results.get(source, {}).get("miou"),
        "mean_target_miou": out.get("mean_target_miou"),
        "targets": targets,
    }
    return out


def _protocol(cfg: Config) -> Any:
    """The evaluation protocol preset named by ``eval.protocol`` (ConfigError if unknown)."""
    from npdg.evaluate import get_protocol

    return get_protocol(cfg.eval.protocol)


# ==================================================================================================
# the loop
# ==================================================================================================
def _amp_setup(cfg: Config, device: torch.device) -> tuple[bool, torch.dtype, torch.amp.GradScaler]:
    """(autocast on?, dtype, GradScaler): bf16 where supported, else fp16 + GradScaler; CUDA only."""
    use_amp = cfg.train.amp and device.type == "cuda"
    dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and dtype == torch.float16)
    return use_amp, dtype, scaler


def _oom_message(cfg: Config, step: int) -> str:
    h, w = cfg.crop
    return (
        f"the GPU ran out of memory at iteration {step} (train.batch_size={cfg.train.batch_size}, crop {h}x{w}, "
        f"amp={cfg.train.amp}). Lower train.batch_size (e.g. --set train.batch_size={max(2, cfg.train.batch_size // 2)}), "
        "lower train.crop or data.size, or turn on train.amp=true."
    )


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels (255 ignored); 0 instead of NaN when none is labelled."""
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="sum")
    return total / (labels != IGNORE).sum().clamp_min(1)


class _LossMeter:
    """Accumulates the loss on the device; reads it back (one sync) only when asked."""

    def __init__(self, device: torch.device):
        self.sum = torch.zeros((), device=device, dtype=torch.float64)
        self.first_bad = torch.full((), -1, device=device, dtype=torch.int64)
        self.count = 0

    def add(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.detach()
        self.sum += loss.double()
        bad = (~torch.isfinite(loss)) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, step), self.first_bad)
        self.count += 1

    def read(self, info: DistInfo) -> tuple[float, int]:
        """(mean loss since the last read over all ranks, first bad iteration or -1) — one sync."""
        count = torch.tensor(float(self.count), device=self.sum.device, dtype=torch.float64)
        bad = torch.where(self.first_bad < 0, torch.full_like(self.sum, math.inf), self.first_bad.double())
        if info.enabled:
            stats = torch.stack([self.sum, count])
            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
            dist.all_reduce(bad, op=dist.ReduceOp.MIN)
            total, n, first = stats[0], stats[1], bad
        else:
            total, n, first = self.sum, count, bad
        total_f, n_f, first_f = torch.stack([total, n, first]).tolist()
        self.sum.zero_()
        self.count = 0
        return (total_f / n_f if n_f else float("nan")), (-1 if math.isinf(first_f) else int(first_f))


def prepare_batch(batch: dict[str, Any], cfg: Config, device: torch.device, aug_gen: torch.Generator,
                  transforms: Sequence[BatchTransform], step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a collated batch to the device, augment it (scale/crop/flip, then ``transforms``)."""
    images = batch["image"].to(device, non_blocking=True)
    labels = batch["label"].to(device, non_blocking=True)
    images, labels = random_scale_crop_flip(images, labels, cfg.crop, cfg.train.scale_range, cfg.train.hflip, aug_gen)
    for transform in transforms:
        images, labels = transform(images, labels, step)
    if cfg.train.channels_last and device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels


def train_step(
    ddp_model: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: torch.Tensor,
    labels: torch.Tensor,
    step: int,
    extra_losses: Sequence[ExtraLoss] = (),
    grad_hooks: Sequence[GradHook] = (),
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """One optimisation step; returns the (detached-later) loss tensor without reading it on the host.

    ``ddp_model`` is what runs forward (the DDP wrapper, or ``model`` itself in one process);
    extensions see the unwrapped ``model``. Gradients are unscaled before ``grad_hooks`` run, so a
    hook adding a sparsity subgradient works in true units under fp16 too.
    """
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        logits = ddp_model(images)
        loss = cross_entropy(logits, labels)
        for extra in extra_losses:
            loss = loss + extra(model, images, labels, logits, step)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    for hook in grad_hooks:
        hook(model, step)
    scaler.step(optimizer)
    scaler.update()
    return loss


def train(
    cfg: Config,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    model: nn.Module | None = None,
    train_dataset: Dataset | None = None,
    eval_datasets: dict[str, Dataset] | None = None,
    batch_transforms: Sequence[BatchTransform] = (),
    extra_losses: Sequence[ExtraLoss] = (),
    grad_hooks: Sequence[GradHook] = (),
    callbacks: Sequence[Callback] = (),
    progress: ProgressFn | None = None,
    evaluate_at_end: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (None → train in memory, write nothing) and return a summary.

    ``model`` / ``train_dataset`` / ``eval_datasets`` replace what the config would build (later
    stages pass a pruned model; tests pass tiny ones). ``resume`` continues ``run_dir`` from
    ``checkpoints/last.pt`` exactly where it stopped; ``overwrite`` deletes an existing ``run_dir``.
    The model is trained in place; on return it holds the final weights (rank 0's buffers).
    """
    t0 = time.perf_counter()
    cfg = validate(cfg)
    if evaluate_at_end or cfg.train.eval_every > 0:
        _protocol(cfg)  # an unknown protocol fails now, not after hours of training
    info, dev = setup_distributed(device)
    emit = log if (log is not None and info.is_main) else (lambda msg: None)

    # ---- run directory (rank 0 creates it; the others wait)
    run: RunDir | None = None
    if run_dir is not None:
        if info.is_main:
            run = prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
        _barrier(info)
        run = RunDir(Path(run_dir))
    elif resume:
        raise ConfigError("resume needs a run directory")

    # ---- model, data, optimizer
    seed_everything(cfg.train.seed + info.rank * 7919)
    if model is None:
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model = build_model_from_config(cfg)
    model.to(dev)
    if cfg.train.channels_last and dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    if info.enabled and cfg.train.sync_bn and dev.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    dataset = train_dataset if train_dataset is not None else open_dataset(
        cfg.data.source, cfg.data.train_split, cfg.data.size, cfg.data.length
    )
    if cfg.train.mode in SPARSITY_MODES:  # sparse training: MiT head gates must exist before the optimizer
        _sparsity_prepare_model(model)
    optimizer = build_optimizer(model, cfg)
    use_amp, amp_dtype, scaler = _amp_setup(cfg, dev)
    aug_gen = torch.Generator().manual_seed(cfg.train.seed * 1000 + info.rank)
    ctx = TrainContext(cfg, model, optimizer, dev, 0, run, info.rank, info.world_size)

    start, elapsed0, last_loss = 0, 0.0, None
    ckpt = None
    if resume:
        assert run is not None
        ckpt = load_checkpoint(run.last_checkpoint, map_location="cpu")
        start, elapsed0, last_loss = int(ckpt["iter"]), float(ckpt.get("elapsed", 0.0)), ckpt.get("last_loss")
        if start > cfg.train.iters:
            raise ConfigError(f"the checkpoint is at iteration {start}, beyond train.iters={cfg.train.iters}")
    ddp_model: nn.Module = model
    if info.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    batches = make_batches(dataset, cfg, info, start, dev)  # creating the iterator draws from the RNG:
    if ckpt is not None:  # restore RNG states only afterwards, so resumed == uninterrupted
        restore_checkpoint(ckpt, model, optimizer, scaler, aug_gen, info)
        ckpt = None
        emit(f"resumed from iteration {start}")
    ctx.step = start
    if run is not None and info.is_main:
        dump_config(cfg, run.config)
        if resume:
            truncate_metrics(run, start)

    transforms = list(batch_transforms)
    if cfg.train.mode == "photometric":
        transforms.insert(0, PhotometricAugment(cfg.train.color_jitter, cfg.train.blur_prob, cfg.train.noise_std, aug_gen))
    all_callbacks = list(callbacks)
    if cfg.train.eval_every > 0 and (eval_datasets is not None or run is not None):
        all_callbacks.append(Callback(cfg.train.eval_every, _periodic_eval(eval_datasets, info), "periodic eval"))
    grad_hooks = list(grad_hooks)
    if cfg.train.mode in DSP_MODES:  # style-perturbed training: [clean, DSP-stylized] batches
        from npdg.dsp.model import dsp_batch_transform

        transforms.append(dsp_batch_transform(cfg, model, dev, mode=cfg.train.mode))
    if cfg.train.mode in SPARSITY_MODES:
        _sparsity_extend(cfg, model, dataset, dev, run, info, transforms, grad_hooks, all_callbacks)

    # ---- loop
    model.train()
    meter = _LossMeter(dev)
    t_window, n_window = time.perf_counter(), 0
    metrics: dict[str, float] = {}
    step = start
    for step in range(start, cfg.train.iters):
        lr = set_lr(optimizer, step, cfg)
        images, labels = prepare_batch(next(batches), cfg, dev, aug_gen, transforms, step)
        try:
            loss = train_step(ddp_model, model, optimizer, scaler, images, labels, step, extra_losses, grad_hooks,
                              amp_dtype if use_amp else None)
        except torch.OutOfMemoryError:
            raise OutOfMemory(_oom_message(cfg, step + 1)) from None
        meter.add(loss, step + 1)
        n_window += images.shape[0] * info.world_size
        ctx.step = step + 1

        due_log = ctx.step % cfg.train.log_every == 0 or ctx.step == cfg.train.iters
        due_ckpt = run is not None and (ctx.step % cfg.train.checkpoint_every == 0 or ctx.step == cfg.train.iters)
        if due_log or due_ckpt:
            mean_loss, first_bad = meter.read(info)
            if first_bad >= 0:
                raise TrainingDiverged(_diverged_message(first_bad, run))
            now = time.perf_counter()
            metrics = {
                "iter": ctx.step,
                "loss": mean_loss,
                "lr": lr,
                "images_per_s": n_window / max(now - t_window, 1e-9),
                "time": elapsed0 + now - t0,
            }
            last_loss = mean_loss
            t_window, n_window = now, 0
            ctx.metrics = metrics
            if run is not None and info.is_main:
                append_metrics(run, metrics)
        if due_ckpt:
            if info.enabled:
                _broadcast_buffers(model, info)
            if info.is_main:
                save_checkpoint(ctx, checkpoint_state(ctx, scaler, aug_gen, last_loss, elapsed0 + time.perf_counter() - t0))
            _barrier(info)
        for cb in all_callbacks:
            if cb.every > 0 and ctx.step % cb.every == 0:
                cb.fn(ctx)
        if progress is not None and info.is_main:
            progress(ctx.step, cfg.train.iters, metrics)

    # ---- end: consistent buffers, final weights, final evaluation
    if info.enabled:
        _broadcast_buffers(model, info)
    if run is not None and info.is_main and start < cfg.train.iters:
        save_weights(model, run.weights, {"iter": str(ctx.step), "mode": cfg.train.mode})
    final_eval = None
    if evaluate_at_end and (eval_datasets is not None or train_dataset is None):
        ckpt_name = str(run.weights) if run is not None else None
        final_eval = evaluate_run(model, cfg, dev, cfg.eval.limit, eval_datasets, checkpoint=ckpt_name)
        final_eval["iter"] = ctx.step
        if run is not None and info.is_main:
            atomic_write_text(json.dumps(final_eval, indent=2), run.eval / "final.json")
    _barrier(info)
    return TrainResult(
        run_dir=run.root if run is not None else None,
        iters_done=ctx.step,
        last_loss=last_loss,
        images_per_s=metrics.get("images_per_s"),
        seconds=time.perf_counter() - t0,
        final_eval=final_eval,
    )


# ==================================================================================================
# sparse-training modes (slimming / npdg / npdg_unary / npdg_binary): see npdg.pruning.sparsity
# ==================================================================================================
def _sparsity_prepare_model(model: nn.Module) -> None:
    """Add trainable MiT head gates (the heads' γ) before the optimizer is built; no-op for CNNs."""
    from npdg.pruning.sparsity import prepare_model

    prepare_model(model)


def _sparsity_extend(cfg: Config, model: nn.Module, dataset: Dataset, dev: torch.device, run: RunDir | None,
                     info: DistInfo, transforms: list, grad_hooks: list, callbacks: list) -> None:
    """Append the DSP batch transform, the γ-subgradient hook and the sensitivity refresh callback."""
    from npdg.pruning.sparsity import sparsity_extensions

    ext = sparsity_extensions(cfg, model, dataset, dev, run.root if run is not None else None, info.is_main)
    transforms.extend(ext.transforms)
    grad_hooks.extend(ext.grad_hooks)
    callbacks.extend(ext.callbacks)


def _sparsity_without_gates(model: nn.Module) -> nn.Module:
    """The model to save: head gates (if any) folded into ``proj`` on a copy, so files stay plain."""
    try:
        from npdg.pruning.sparsity import without_gates
    except ImportError:  # pragma: no cover
        return model
    return without_gates(model)


def _diverged_message(first_bad: int, run: RunDir | None) -> str:
    where = ""
    if run is not None and run.last_checkpoint.is_file():
        try:
            good = int(load_checkpoint(run.last_checkpoint)["iter"])
            where = f"; the last good checkpoint (iteration {good}) is kept at {run.last_checkpoint}"
        except NpdgError:
            where = ""
    elif run is not None:
        where = "; no checkpoint had been written yet"
    return (
        f"the loss became NaN/inf at iteration {first_bad}{where}. Lower train.lr, add train.warmup_iters, "
        "or set train.amp=false."
    )


def _periodic_eval(eval_datasets: dict[str, Dataset] | None, info: DistInfo) -> Callable[[TrainContext], None]:
    """A callback that evaluates (``eval.periodic_limit`` images per dataset) and logs the mIoUs."""

    def run_eval(ctx: TrainContext) -> None:
        if info.enabled:
            _broadcast_buffers(ctx.model, info)
        out = evaluate_run(ctx.model, ctx.cfg, ctx.device, ctx.cfg.eval.periodic_limit, eval_datasets)
        out["iter"] = ctx.step
        if ctx.run is not None and info.is_main:
            atomic_write_text(json.dumps(out, indent=2), ctx.run.eval / f"iter_{ctx.step:06d}.json")
            record: dict[str, Any] = {"iter": ctx.step, "eval": True}
            for name, res in out.get("results", {}).items():
                record[f"miou/{name}"] = res.get("miou")
            record["mean_target_miou"] = out["summary"]["mean_target_miou"]
            append_metrics(ctx.run, record)

    return run_eval
