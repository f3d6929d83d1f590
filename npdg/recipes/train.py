"""Training a segmentor in any mode: the mode table (:mod:`npdg.recipes.modes`) decides what is
plugged into the loop (:mod:`npdg.train.loop`), which itself knows no method (docs/method.md §0).

=============  ================================================================================
behaviour      what is plugged in
=============  ================================================================================
photometric    :class:`npdg.train.PhotometricAugment` as the first batch transform
stylize        the DSP batch transform (:func:`npdg.recipes.dsp.stylizer`): [clean, stylized]
sparsity       trainable MiT head gates before the optimizer, the γ-subgradient grad hook
               (:class:`npdg.pruning.sparsity.SparsityHook`) and — for sensitivity weights — a
               :class:`~npdg.pruning.sparsity.SensitivityRefresher` that probes the live model at
               the first step and ``sparsity.refresh − 1`` more times, saving each table under
               ``RUN/sensitivity/``
=============  ================================================================================
"""

from __future__ import annotations

import math
from pathlib import Path

from torch import nn

from npdg.config import Config, validate
from npdg.data.specs import spread_images
from npdg.dsp.model import DSP
from npdg.errors import DataError
from npdg.models.gates import add_head_gates
from npdg.models.units import unit_layers
from npdg.pruning.sparsity import SENSITIVITY_DIR, SensitivityRefresher, SparsityHook
from npdg.recipes.dsp import stylizer
from npdg.recipes.modes import TrainingMode, check_config, mode
from npdg.train import Callback, Hooks, PhotometricAugment, Plugin, TrainContext, TrainResult
from npdg.train import train as train_loop


def _sparsity_hooks(cfg: Config, m: TrainingMode, ctx: TrainContext) -> Hooks:
    """DSP batches + γ hook (+ sensitivity refresh for sensitivity-weighted modes)."""
    s = cfg.sparsity
    layers = list(unit_layers(ctx.model))
    if not layers:
        raise DataError(f"{type(ctx.model).__name__} has no prunable units (no BatchNorm γ or head gates) to sparsify")
    dsp = DSP.load(cfg.dsp.path, device=ctx.device) if cfg.dsp.path else None
    styl = stylizer(cfg, m, ctx.model, None, dsp=dsp) if dsp is not None else None
    transforms = (styl,) if styl is not None else ()
    if m.sparsity == "uniform":
        return Hooks(batch_transforms=transforms, grad_hooks=(SparsityHook(layers, None, s.lambda_s),))
    run_root = ctx.run.root if ctx.run is not None else None
    refresher = SensitivityRefresher(
        dsp=dsp, images=spread_images(ctx.dataset, s.probe_images).to(ctx.device), lam=m.lam_for(s.lam),
        n_styles=s.styles, unary=s.unary, seed=cfg.train.seed, run_root=run_root, is_main=ctx.is_main,
    )
    hook = SparsityHook(layers, None, s.lambda_s, refresher=refresher)
    refresher.hook = hook
    callbacks: tuple = ()
    if s.refresh > 0:
        every = max(1, math.ceil(cfg.train.iters / s.refresh))
        callbacks = (Callback(every, refresher.callback(cfg.train.iters), "sensitivity refresh"),)
    return Hooks(batch_transforms=transforms, grad_hooks=(hook,), callbacks=callbacks)


def plugin_for(cfg: Config) -> Plugin | None:
    """What ``cfg.train.mode`` plugs into the training loop (None for plain CE)."""
    m = mode(cfg.train.mode)
    if m.sparsity is not None:
        return Plugin(prepare=add_head_gates, hooks=lambda ctx: _sparsity_hooks(cfg, m, ctx))
    if m.photometric:
        def photometric(ctx: TrainContext) -> Hooks:
            t = cfg.train
            return Hooks(batch_transforms=(PhotometricAugment(t.color_jitter, t.blur_prob, t.noise_std, ctx.aug_gen),))

        return Plugin(hooks=photometric)
    if m.stylize is not None:
        return Plugin(hooks=lambda ctx: Hooks(batch_transforms=(stylizer(cfg, m, ctx.model, ctx.device),)))
    return None


def train(cfg: Config, run_dir: str | Path | None = None, *, model: nn.Module | None = None, **kwargs) -> TrainResult:
    """Train ``cfg`` in its ``train.mode`` (checked against the mode table first).

    Same arguments as :func:`npdg.train.train` (the loop), which this calls with the mode's plugin.
    """
    cfg = check_config(validate(cfg))
    return train_loop(cfg, run_dir, model=model, plugin=plugin_for(cfg) or Plugin(), **kwargs)


__all__ = ["SENSITIVITY_DIR", "plugin_for", "train"]
