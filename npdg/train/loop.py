"""The training loop: one readable, iteration-based loop (in the spirit of nanoGPT's ``train.py``).

``train(cfg, run_dir)`` builds the model and the source dataset from a :class:`~npdg.config.Config`,
then repeats for ``cfg.train.iters`` iterations::

    images, labels = next(batches)                       # infinite, resumable, per-rank sharded
    images, labels = augment(images, labels)             # random scale / crop / flip, on the device
    for t in batch_transforms: images, labels = t(...)   # e.g. DSP appends stylized copies
    loss = CE(model(images), labels) + Σ extra_losses    # ignore index 255
    loss.backward(); grad_hooks(...); optimizer.step()   # e.g. the sparsity subgradient
    log / checkpoint / callbacks every N iterations

The loop knows no method: ``train.mode`` means nothing to it. The extension points
(``batch_transforms``, ``extra_losses``, ``grad_hooks``, ``callbacks``, and a :class:`Plugin` that
prepares the model before the optimizer exists and builds hooks once model, data and run are set
up) are what ``npdg.recipes`` plugs in for each mode; plain CE uses none of them. On CUDA the step
runs under AMP (bf16 where supported, else fp16 with a GradScaler) in channels_last, and never
synchronizes with the host: the loss is accumulated on the device and read once per
``train.log_every`` iterations. A non-finite loss stops the run with the iteration where it first
appeared; checkpoints are only written after the loss since the previous one was checked, so
``checkpoints/last.pt`` is always a good state. Everything that can fail on bad input (the model,
the dataset, the protocol) is built before the run folder is created, so a failed start leaves
nothing behind.
"""

from __future__ import annotations

import math
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

from npdg.config import Config, TrainConfig, config_to_dict, dump_config, validate
from npdg.data.specs import open_dataset
from npdg.errors import ConfigError, NpdgError
from npdg.evaluate import evaluate_config, protocol_of
from npdg.labels import IGNORE
from npdg.models import SegModel, build_model, save_model
from npdg.models.gates import without_gates
from npdg.runs import (
    RunDir,
    append_metrics,
    atomic_write,
    atomic_write_json,
    capture_rng_state,
    load_checkpoint,
    prepare_run_dir,
    restore_rng_state,
    save_checkpoint,
    truncate_metrics,
)
from npdg.train.augment import random_scale_crop_flip
from npdg.train.dist import DistInfo, barrier, broadcast_buffers, setup_distributed
from npdg.train.optim import build_optimizer, set_lr

#: (images, labels, step) -> (images, labels). Applied after the geometric augmentation.
BatchTransform = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
#: (model, images, labels, logits, step) -> scalar tensor added to the loss.
ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
#: (model, step) -> None, called after backward and before the optimizer step (grads are unscaled).
GradHook = Callable[[nn.Module, int], None]
#: (step, total, metrics) -> None, called after every iteration (metrics: the latest logged values).
ProgressFn = Callable[[int, int, dict[str, float]], None]

#: ``train.mode``'s default: plain CE, the only mode the loop runs without a recipe's :class:`Plugin`.
PLAIN_MODE = TrainConfig().mode
#: Keys (and types) a segmentor training checkpoint must hold before any field is read.
CHECKPOINT_KEYS: dict[str, type | tuple[type, ...]] = {
    "iter": int, "model": dict, "optimizer": dict, "rng": dict, "aug_rng": torch.Tensor, "config": dict,
}


class TrainingDiverged(NpdgError):
    """The loss became NaN or infinite."""


class OutOfMemory(NpdgError):
    """The accelerator ran out of memory; the message says which setting to lower."""


@dataclass
class TrainContext:
    """What callbacks and plugins see: the live training objects (mutable, updated every iteration)."""

    cfg: Config
    model: nn.Module  # the unwrapped model (not the DDP wrapper)
    optimizer: torch.optim.Optimizer
    device: torch.device
    step: int = 0
    run: RunDir | None = None
    rank: int = 0
    world_size: int = 1
    metrics: dict[str, float] = field(default_factory=dict)
    dataset: Dataset | None = None
    #: The CPU generator of the augmentation (checkpointed): transforms that draw from it stay resumable.
    aug_gen: torch.Generator | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class Callback:
    """Call ``fn(ctx)`` every ``every`` iterations (after logging and checkpointing at that step).

    At the last iteration the final checkpoint (``last.pt`` and ``model.safetensors``) is already
    written when callbacks run, so a callback that changes the model there changes only the returned
    in-memory model, not the run folder (the built-in sensitivity refresh skips the last iteration).
    """

    every: int
    fn: Callable[[TrainContext], None]
    name: str = "callback"


@dataclass(frozen=True)
class Hooks:
    """Extensions of one training call (all optional)."""

    batch_transforms: tuple[BatchTransform, ...] = ()
    extra_losses: tuple[ExtraLoss, ...] = ()
    grad_hooks: tuple[GradHook, ...] = ()
    callbacks: tuple[Callback, ...] = ()


@dataclass(frozen=True)
class Plugin:
    """What a recipe plugs into the loop for a training mode (``npdg.recipes.train``).

    ``prepare(model)`` runs before the optimizer is built (e.g. add trainable head gates);
    ``hooks(ctx)`` runs once model, optimizer, data and run folder exist and returns the mode's
    :class:`Hooks`.
    """

    prepare: Callable[[nn.Module], None] | None = None
    hooks: Callable[[TrainContext], Hooks] | None = None


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
# data
# ==================================================================================================
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
# model, weights, seeds
# ==================================================================================================
def build_model_from_config(cfg: Config) -> SegModel:
    """``npdg.models.build_model`` with the configured arch, encoder, classes and local weights."""
    m = cfg.model
    return build_model(m.arch, m.encoder, m.num_classes, m.encoder_weights, aspp=m.aspp)


def save_weights(model: nn.Module, path: Path, meta: dict[str, str]) -> None:
    """Write plain weights atomically: ``npdg.models.save_model`` for a SegModel (head gates folded,
    so the file loads as the plain architecture), raw safetensors otherwise."""
    if isinstance(model, SegModel):
        save_model(without_gates(model), path, extra_meta=meta)
        return
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, metadata=meta)
    atomic_write(path, lambda fh: fh.write(data))


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ==================================================================================================
# checkpoints (written by npdg.runs.save_checkpoint, the one writer of both training loops)
# ==================================================================================================
def checkpoint_state(ctx: TrainContext, scaler: torch.amp.GradScaler, aug_gen: torch.Generator,
                     last_loss: float | None, elapsed: float) -> dict[str, Any]:
    """Everything needed to continue bit-exactly, as tensors and plain containers (weights_only)."""
    return {
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


def write_checkpoint(ctx: TrainContext, state: dict[str, Any]) -> Path:
    """Atomically refresh ``model.safetensors`` (and ``iter_XXXXXX.pt`` if kept), then write ``last.pt``.

    ``last.pt`` is written last because it is the commit point a resume starts from: a process
    killed between the writes leaves weights at least as new as ``last.pt``, and the resume redoes
    the iteration and rewrites them. The other order could leave a final ``last.pt`` next to the
    previous iteration's weights, which a resume at the last iteration would never refresh.
    """
    assert ctx.run is not None
    save_weights(ctx.model, ctx.run.weights, {"iter": str(ctx.step), "mode": ctx.cfg.train.mode})
    if ctx.cfg.train.keep_checkpoints:
        save_checkpoint(state, ctx.run.iter_checkpoint(ctx.step))
    save_checkpoint(state, ctx.run.last_checkpoint)
    return ctx.run.last_checkpoint


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check a segmentor checkpoint (NpdgError for anything that is not one)."""
    return load_checkpoint(path, map_location="cpu", required=CHECKPOINT_KEYS)


def restore_checkpoint(ckpt: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                       scaler: torch.amp.GradScaler, aug_gen: torch.Generator, info: DistInfo) -> None:
    """Load model, optimizer, GradScaler and RNG states from a :func:`checkpoint_state` dict."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise NpdgError(f"the checkpoint does not match the configured model: {exc}") from None
    try:
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
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise NpdgError(f"the checkpoint's optimizer or RNG state is not usable ({type(exc).__name__}: {exc})") from None


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
    plugin: Plugin | None = None,
    progress: ProgressFn | None = None,
    evaluate_at_end: bool = True,
    log: Callable[[str], None] | None = None,
    run_kind: str = "train",
    run_prepared: bool = False,
) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (None → train in memory, write nothing) and return a summary.

    ``model`` / ``train_dataset`` / ``eval_datasets`` replace what the config would build (later
    stages pass a pruned model; tests pass tiny ones). ``resume`` continues ``run_dir`` from
    ``checkpoints/last.pt`` exactly where it stopped; ``overwrite`` replaces a run folder npdg made.
    ``plugin`` is a recipe's contribution for a training mode (see :class:`Plugin`).
    ``run_prepared``: the caller already created and marked ``run_dir`` (the prune pipeline, whose
    output also holds its sparse-training run), so it is used as it is. The model is
    trained in place; on return it holds the final weights (rank 0's buffers).
    """
    t0 = time.perf_counter()
    cfg = validate(cfg)
    if plugin is None and cfg.train.mode != PLAIN_MODE:
        raise ConfigError(
            f"the training loop alone runs plain cross-entropy; train.mode={cfg.train.mode!r} is applied by "
            "npdg.recipes.train (or `python -m npdg train`), which plugs the mode's hooks in"
        )
    protocol_of(cfg)  # an unknown protocol fails now, not after hours of training (checked even with --no-eval)
    info, dev = setup_distributed(device)
    emit = log if (log is not None and info.is_main) else (lambda msg: None)
    if resume and run_dir is None:
        raise ConfigError("resume needs a run directory")

    # ---- model and data first: a bad encoder or dataset fails before any folder is created
    seed_everything(cfg.train.seed + info.rank * 7919)
    if model is None:
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model = build_model_from_config(cfg)
    dataset = train_dataset if train_dataset is not None else open_dataset(
        cfg.data.source, cfg.data.train_split, cfg.data.size, cfg.data.length
    )
    if len(dataset) < cfg.train.batch_size:
        raise ConfigError(
            f"the training set has {len(dataset)} images, fewer than train.batch_size={cfg.train.batch_size}"
        )
    ckpt = None
    if resume:
        last = RunDir(Path(run_dir)).last_checkpoint
        if not last.is_file():
            raise ConfigError(f"cannot resume: no checkpoint at {last}")
        ckpt = read_checkpoint(last)
        if ckpt["iter"] > cfg.train.iters:
            raise ConfigError(f"the checkpoint is at iteration {ckpt['iter']}, beyond train.iters={cfg.train.iters}")

    # ---- run directory (rank 0 creates it; the others wait)
    run: RunDir | None = None
    if run_dir is not None:
        if info.is_main and not run_prepared:
            run = prepare_run_dir(run_dir, resume=resume, overwrite=overwrite, kind=run_kind)
        barrier(info)
        run = RunDir(Path(run_dir))

    # ---- device, optimizer
    model.to(dev)
    if cfg.train.channels_last and dev.type == "cuda":
        model.to(memory_format=torch.channels_last)
    if info.enabled and cfg.train.sync_bn and dev.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if plugin is not None and plugin.prepare is not None:
        plugin.prepare(model)  # e.g. MiT head gates must exist before the optimizer
    optimizer = build_optimizer(model, cfg)
    use_amp, amp_dtype, scaler = _amp_setup(cfg, dev)
    aug_gen = torch.Generator().manual_seed(cfg.train.seed * 1000 + info.rank)
    ctx = TrainContext(cfg, model, optimizer, dev, 0, run, info.rank, info.world_size, dataset=dataset,
                       aug_gen=aug_gen)

    start, elapsed0, last_loss = 0, 0.0, None
    if ckpt is not None:
        start, elapsed0, last_loss = int(ckpt["iter"]), float(ckpt.get("elapsed", 0.0)), ckpt.get("last_loss")
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

    hooks = Hooks(tuple(batch_transforms), tuple(extra_losses), tuple(grad_hooks), tuple(callbacks))
    extra = plugin.hooks(ctx) if plugin is not None and plugin.hooks is not None else Hooks()
    transforms = [*extra.batch_transforms, *hooks.batch_transforms]
    losses = [*hooks.extra_losses, *extra.extra_losses]
    grads = [*hooks.grad_hooks, *extra.grad_hooks]
    all_callbacks = list(hooks.callbacks)
    if cfg.train.eval_every > 0 and (eval_datasets is not None or run is not None):
        all_callbacks.append(Callback(cfg.train.eval_every, _periodic_eval(eval_datasets, info), "periodic eval"))
    all_callbacks += extra.callbacks

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
            loss = train_step(ddp_model, model, optimizer, scaler, images, labels, step, losses, grads,
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
                broadcast_buffers(model, info)
            if info.is_main:
                write_checkpoint(ctx, checkpoint_state(ctx, scaler, aug_gen, last_loss, elapsed0 + time.perf_counter() - t0))
            barrier(info)
        for cb in all_callbacks:
            if cb.every > 0 and ctx.step % cb.every == 0:
                cb.fn(ctx)
        if progress is not None and info.is_main:
            progress(ctx.step, cfg.train.iters, metrics)

    # ---- end: consistent buffers, final evaluation. The final weights are already on disk: the
    # last iteration always writes a checkpoint (``due_ckpt``), weights first (``write_checkpoint``).
    if info.enabled:
        broadcast_buffers(model, info)
    final_eval = None
    if evaluate_at_end and (eval_datasets is not None or train_dataset is None):
        ckpt_name = str(run.weights) if run is not None else None
        final_eval = evaluate_config(model, cfg, dev, cfg.eval.limit, eval_datasets, checkpoint=ckpt_name)
        final_eval["iter"] = ctx.step
        if run is not None and info.is_main:
            atomic_write_json(final_eval, run.eval / "final.json")
    barrier(info)
    return TrainResult(
        run_dir=run.root if run is not None else None,
        iters_done=ctx.step,
        last_loss=last_loss,
        images_per_s=metrics.get("images_per_s"),
        seconds=time.perf_counter() - t0,
        final_eval=final_eval,
    )


def _diverged_message(first_bad: int, run: RunDir | None) -> str:
    where = ""
    if run is not None and run.last_checkpoint.is_file():
        try:
            good = int(load_checkpoint(run.last_checkpoint, required={"iter": int})["iter"])
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
            broadcast_buffers(ctx.model, info)
        out = evaluate_config(ctx.model, ctx.cfg, ctx.device, ctx.cfg.eval.periodic_limit, eval_datasets)
        out["iter"] = ctx.step
        if ctx.run is not None and info.is_main:
            atomic_write_json(out, ctx.run.eval / f"iter_{ctx.step:06d}.json")
            record: dict[str, Any] = {"iter": ctx.step, "eval": True}
            for name, res in out.get("results", {}).items():
                record[f"miou/{name}"] = res.get("miou")
            record["mean_target_miou"] = out["summary"]["mean_target_miou"]
            append_metrics(ctx.run, record)

    return run_eval
