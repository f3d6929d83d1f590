"""Sparse training (METHOD.md §4): ``L = CE + λ_s · Σ_i w̃_i |γ_i|`` on [clean, DSP-stylized] batches.

The penalty is applied as its subgradient after backward, ``γ.grad += λ_s · w̃ · sign(γ)`` (a
:data:`npdg.train.GradHook`, so gradients are already unscaled under fp16). ``w̃ = w / mean(w)`` over
all units, so Network Slimming (``w̃ ≡ 1``, mode ``slimming``) is the same objective at the same λ_s.
For the npdg modes, ``w`` is the combined style sensitivity of :func:`npdg.sensitivity.probe`
(``npdg``: λ = ``sparsity.lam``; ``npdg_unary``: λ = 1; ``npdg_binary``: λ = 0), computed on the
current model before the first step and recomputed ``sparsity.refresh`` times during training with
fresh DSP styles (the paper's "DSP ... matches the model's pruning state").

:func:`sparsity_extensions` builds what :func:`npdg.train.train` plugs in for these modes (DSP batch
transform, the γ hook, the refresh callback); :func:`sparse_train` continues a finished run.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from npdg.config import SPARSITY_MODES, Config
from npdg.errors import ConfigError, DataError

#: λ (unary share of the combined weight) forced by each npdg mode; None = use ``sparsity.lam``.
MODE_LAMBDA: dict[str, float | None] = {"npdg": None, "npdg_unary": 1.0, "npdg_binary": 0.0}
SENSITIVITY_DIR = "sensitivity"


def mode_lambda(mode: str, lam: float) -> float:
    """The λ an npdg mode uses (``npdg_unary`` 1, ``npdg_binary`` 0, ``npdg`` the configured one)."""
    if mode not in MODE_LAMBDA:
        raise ConfigError(f"mode {mode!r} has no sensitivity weights; npdg modes: {', '.join(MODE_LAMBDA)}")
    forced = MODE_LAMBDA[mode]
    return float(lam) if forced is None else forced


def _unit_layers(model: nn.Module) -> list:
    """``npdg.pruning.units.unit_layers`` (BN filters and gated heads), falling back to the probe's."""
    try:
        from npdg.pruning.units import unit_layers
    except ImportError:
        from npdg.sensitivity import probe_layers

        return probe_layers(model)
    return list(unit_layers(model))


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
def probe_image_batch(dataset, n: int) -> torch.Tensor:
    """``n`` source images spread evenly over ``dataset`` (deterministic), stacked ``[n, 3, H, W]``."""
    if len(dataset) < 1:
        raise DataError("the source dataset is empty: no images to probe sensitivity with")
    n = min(int(n), len(dataset))
    idx = sorted({int(i * len(dataset) / n) for i in range(n)})
    images = [dataset[i]["image"] for i in idx]
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise DataError(f"probe images differ in size {sorted(shapes)}; set data.size so the loader resizes them")
    return torch.stack(images)


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
        from npdg.sensitivity import probe

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


# ==================================================================================================
# wiring for npdg.train
# ==================================================================================================
@dataclass(frozen=True)
class SparsityExtensions:
    """What the training loop plugs in for a sparse-training mode."""

    transforms: tuple = ()
    grad_hooks: tuple = ()
    callbacks: tuple = ()
    refresher: SensitivityRefresher | None = None


def prepare_model(model: nn.Module) -> list[str]:
    """Give MiT attention modules trainable head gates (γ of heads); no-op for CNNs. Must run before
    the optimizer is built so the gates are trained."""
    from npdg.models.gates import add_head_gates

    return add_head_gates(model)


def sparsity_extensions(cfg: Config, model: nn.Module, dataset, device: torch.device,
                        run_root: Path | None = None, is_main: bool = True) -> SparsityExtensions:
    """DSP batches + γ hook (+ sensitivity refresh for npdg modes) for ``cfg.train.mode``.

    ``slimming`` without ``dsp.path`` trains on clean batches only (the original Network Slimming).
    """
    mode = cfg.train.mode
    if mode not in SPARSITY_MODES:
        raise ConfigError(f"train.mode {mode!r} is not a sparse-training mode ({', '.join(SPARSITY_MODES)})")
    s = cfg.sparsity
    layers = _unit_layers(model)
    if not layers:
        raise DataError(f"{type(model).__name__} has no prunable units (no BatchNorm γ or head gates) to sparsify")
    from npdg.dsp.model import DSP, dsp_batch_transform

    dsp = DSP.load(cfg.dsp.path, device=device) if cfg.dsp.path else None
    transforms = (dsp_batch_transform(cfg, model, None, dsp=dsp),) if dsp is not None else ()
    if mode == "slimming":
        return SparsityExtensions(transforms, (SparsityHook(layers, None, s.lambda_s),), ())
    refresher = SensitivityRefresher(
        dsp=dsp, images=probe_image_batch(dataset, s.probe_images).to(device), lam=mode_lambda(mode, s.lam),
        n_styles=s.styles, unary=s.unary, seed=cfg.train.seed, run_root=run_root, is_main=is_main,
    )
    hook = SparsityHook(layers, None, s.lambda_s, refresher=refresher)
    refresher.hook = hook
    callbacks: tuple = ()
    if s.refresh > 0:
        from npdg.train import Callback

        every = max(1, math.ceil(cfg.train.iters / s.refresh))
        callbacks = (Callback(every, refresher.callback(cfg.train.iters), "sensitivity refresh"),)
    return SparsityExtensions(transforms, (hook,), callbacks, refresher)


def without_gates(model: nn.Module) -> nn.Module:
    """``model`` itself when it has no head gates, else a copy with the gates folded into ``proj``
    (exact), so saved weights load as the plain architecture."""
    from npdg.models.gates import head_gate_modules, remove_head_gates

    if not head_gate_modules(model):
        return model
    plain = copy.deepcopy(model)
    remove_head_gates(plain, fold=True)
    return plain


# ==================================================================================================
# continue a finished run with sparse training
# ==================================================================================================
def sparse_train(run_dir: str | Path, out_dir: str | Path, criterion: str, iters: int, dsp_dir: str | Path | None,
                 lambda_s: float, refresh: int = 4, lam: float = 0.4, device: str = "auto", progress=None,
                 *, overwrite: bool = False, evaluate: bool = False, overrides: Sequence[str] = ()) -> Path:
    """Sparse-train the weights of ``run_dir`` for ``iters`` iterations into the run dir ``out_dir``.

    The run's own ``config.yaml`` supplies data and optimizer settings; ``criterion`` (slimming |
    npdg | npdg_unary | npdg_binary), ``iters``, ``dsp_dir``, ``lambda_s``, ``refresh`` and ``lam``
    replace the corresponding keys, ``overrides`` (``section.key=value``) anything else. Returns
    ``out_dir`` (its ``model.safetensors`` holds the sparse weights, head gates folded).
    """
    from npdg.config import apply_overrides, load_config
    from npdg.models import load_model
    from npdg.train import train

    if criterion not in SPARSITY_MODES:
        raise ConfigError(f"sparse-training criterion must be one of {', '.join(SPARSITY_MODES)}, got {criterion!r}")
    if int(iters) < 1:
        raise ConfigError(f"sparse-training iterations must be >= 1, got {iters}")
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DataError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    cfg = replace(
        cfg,
        train=replace(cfg.train, mode=criterion, iters=int(iters), warmup_iters=min(cfg.train.warmup_iters, int(iters))),
        dsp=replace(cfg.dsp, path=str(dsp_dir) if dsp_dir is not None else cfg.dsp.path),
        sparsity=replace(cfg.sparsity, lambda_s=float(lambda_s), refresh=int(refresh), lam=float(lam)),
    )
    cfg = apply_overrides(cfg, list(overrides))
    model = load_model(run_dir)
    train(cfg, out_dir, overwrite=overwrite, device=device, model=model, progress=progress, evaluate_at_end=evaluate)
    return Path(out_dir)


__all__ = [
    "MODE_LAMBDA", "SensitivityRefresher", "SparsityExtensions", "SparsityHook", "l1_penalty", "mode_lambda",
    "normalized_weights", "prepare_model", "probe_image_batch", "sparse_train", "sparsity_extensions",
    "sparsity_grad_hook", "without_gates",
]
