"""Optimizer and learning-rate schedule of the training loop (SGD + poly, AdamW for SegFormer)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from npdg.config import Config

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


