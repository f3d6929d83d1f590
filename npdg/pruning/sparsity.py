"""The sparsity objective (docs/method.md §4): ``L = CE + λ_s · Σ_i w̃_i |γ_i|``.

The penalty is applied as its subgradient after backward, ``γ.grad += λ_s · w̃ · sign(γ)`` (a
:data:`npdg.train.GradHook`, so gradients are already unscaled under fp16). ``w̃ = w / mean(w)`` over
all units, so Network Slimming (``w̃ ≡ 1``) is the same objective at the same λ_s. With sensitivity
weights, ``w`` is the combined style sensitivity of :func:`npdg.sensitivity.probe`, computed on the
current model before the first step and recomputed during training with fresh DSP styles by a
:class:`SensitivityRefresher` (the paper's "DSP ... matches the model's pruning state").

Which training mode uses which weights is decided in ``npdg.recipes`` (``recipes/modes.py``,
``recipes/train.py``); this module only implements the objective.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from npdg.errors import ConfigError, DataError
from npdg.sensitivity import probe

SENSITIVITY_DIR = "sensitivity"


def normalized_weights(layers: Sequence, weights: dict[str, torch.Tensor] | None) -> list[torch.Tensor | None]:
    """``w̃ = w / mean(w)`` over all units of ``layers`` (None → Network Slimming: all None = 1).

    Every layer must have a weight vector of its size (DataError otherwise). All-zero weights
    (a degenerate probe) fall back to w̃ ≡ 1 rather than switching the penalty off.
    """
    if weights is None:
        return [None] * len(layers)
    vecs = []
    for layer in layers:
        w = weights.get(layer.name)
        if w is None:
            raise DataError(f"no sensitivity weights for layer {layer.name!r}")
        w = torch.as_tensor(w, dtype=torch.float32).flatten()
        if w.numel() != layer.size:
            raise DataError(f"sensitivity weights for {layer.name!r} have {w.numel()} values, the layer has {layer.size}")
        vecs.append(w)
    mean = torch.cat(vecs).mean() if vecs else torch.tensor(0.0)
    if not torch.isfinite(mean) or float(mean) <= 0:
        return [None] * len(layers)
    return [v / mean for v in vecs]


class SparsityHook:
    """Grad hook ``(model, step)``: ``γ.grad += λ_s · w̃ · sign(γ)`` for every unit layer.

    ``set_weights`` swaps in new sensitivity weights (normalized here). ``refresher``, when given,
    is called on the first step to compute the initial weights on the live model (so a resumed run
    probes its restored weights, not the pre-restore ones).
    """

    def __init__(self, layers: Sequence, weights: dict[str, torch.Tensor] | None, lambda_s: float,
                 refresher: Any | None = None):
        if lambda_s < 0:
            raise ConfigError(f"lambda_s must be >= 0, got {lambda_s}")
        self.layers = list(layers)
        self.lambda_s = float(lambda_s)
        self.refresher = refresher
        self.scales: list[torch.Tensor | None] = normalized_weights(self.layers, weights)
        self._cache: dict[tuple[int, str], torch.Tensor] = {}

    def set_weights(self, weights: dict[str, torch.Tensor] | None) -> None:
        self.scales = normalized_weights(self.layers, weights)
        self._cache.clear()

    def _scale(self, i: int, like: torch.Tensor) -> torch.Tensor | None:
        s = self.scales[i]
        if s is None:
            return None
        key = (i, f"{like.device}{like.dtype}")
        if key not in self._cache:
            self._cache[key] = s.to(like.device, like.dtype)
        return self._cache[key]

    @torch.no_grad()
    def __call__(self, model: nn.Module, step: int) -> None:
        if self.refresher is not None and self.refresher.pending:
            self.refresher.refresh(model, step)
        if self.lambda_s == 0:
            return
        for i, layer in enumerate(self.layers):
            gamma = model.get_parameter(layer.param)
            if gamma.grad is None:
                continue
            sub = torch.sign(gamma.detach())
            scale = self._scale(i, sub)
            if scale is not None:
                sub = sub * scale
            gamma.grad.add_(sub, alpha=self.lambda_s)


def sparsity_grad_hook(layers: Sequence, weights: dict[str, torch.Tensor] | None, lambda_s: float) -> SparsityHook:
    """The γ-subgradient grad hook (contract of issue 5); ``weights=None`` is Network Slimming."""
    return SparsityHook(layers, weights, lambda_s)


def l1_penalty(model: nn.Module, layers: Sequence, weights: dict[str, torch.Tensor] | None) -> float:
    """``Σ_i w̃_i |γ_i|`` (for logging and tests)."""
    total = 0.0
    for layer, s in zip(layers, normalized_weights(layers, weights)):
        g = model.get_parameter(layer.param).detach().abs().float().cpu()
        total += float((g * s).sum() if s is not None else g.sum())
    return total


# ==================================================================================================
# periodic sensitivity refresh
# ==================================================================================================
def _broadcast_weights(weights: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Rank 0's weights on every rank (BN buffers differ per rank; the penalty must not)."""
    if not (dist.is_available() and dist.is_initialized()):
        return weights
    out = {}
    for name in sorted(weights):
        t = weights[name].to(device).contiguous()
        dist.broadcast(t, src=0)
        out[name] = t.cpu()
    return out


@dataclass
class SensitivityRefresher:
    """Recompute the sensitivity weights on the live model and hand them to ``hook``.

    Each refresh draws fresh DSP styles (seed = ``seed + step``) for the same probe images and, when
    ``run_root`` is set, saves the table as ``sensitivity/iter_XXXXXX.csv`` in the run directory.
    """

    dsp: Any
    images: torch.Tensor
    lam: float
    n_styles: int = 4
    unary: str = "share"
    seed: int = 0
    run_root: Path | None = None
    is_main: bool = True
    hook: SparsityHook | None = None
    pending: bool = True
    history: list[int] = field(default_factory=list)

    def refresh(self, model: nn.Module, step: int) -> None:
        result = probe(model, self.images, self.dsp, n_styles=self.n_styles, lam=self.lam, unary=self.unary,
                       seed=self.seed + step, with_groups=False)
        weights = _broadcast_weights(result.weights(), self.images.device)
        if self.hook is not None:
            self.hook.set_weights(weights)
        if self.run_root is not None and self.is_main:
            result.save(self.run_root / SENSITIVITY_DIR / f"iter_{step:06d}.csv")
        self.pending = False
        self.history.append(step)

    def callback(self, total_iters: int):
        """A ``Callback.fn`` that refreshes (skipped at the last iteration: nothing left to train)."""

        def fn(ctx) -> None:
            if ctx.step < total_iters:
                self.refresh(ctx.model, ctx.step)

        return fn


__all__ = [
    "SENSITIVITY_DIR", "SensitivityRefresher", "SparsityHook", "l1_penalty", "normalized_weights", "sparsity_grad_hook",
]
