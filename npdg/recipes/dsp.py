"""The DSP pipeline of segmentor training: which stylization a mode's batches get (docs/method.md §0, §1).

``npdg.dsp`` knows how to stylize and ascend; this module decides, from a run config and the
mode table (:mod:`npdg.recipes.modes`), whether a training or fine-tuning run gets
``[clean, DSP-stylized]`` batches, and with ascent or random styles.
"""

from __future__ import annotations

import torch
from torch import nn

from npdg.config import Config
from npdg.dsp.model import DSP, DSPBatchTransform, dsp_batch_transform
from npdg.recipes.modes import TrainingMode


def stylizer(cfg: Config, mode: TrainingMode, segmentor: nn.Module, device: torch.device | str | None,
             dsp: DSP | None = None) -> DSPBatchTransform | None:
    """The DSP batch transform of ``mode`` (None when the mode trains on clean batches).

    ``ascend`` ascends ε against ``segmentor`` every iteration, ``random`` re-draws ε every
    iteration, ``config`` follows ``dsp.ascent_steps`` and is off without ``dsp.path``.
    """
    if mode.stylize is None or (mode.stylize == "config" and not cfg.dsp.path and dsp is None):
        return None
    kind = mode.stylize if mode.stylize in ("ascend", "random") else None  # "config": from dsp.ascent_steps
    return dsp_batch_transform(cfg, segmentor, device, mode=kind, dsp=dsp)


def finetune_stylizer(cfg: Config, segmentor: nn.Module, device: torch.device | str | None) -> DSPBatchTransform | None:
    """DSP batches for fine-tuning a pruned model (``dsp.path`` set → as ``dsp.ascent_steps`` says)."""
    if not cfg.dsp.path:
        return None
    return dsp_batch_transform(cfg, segmentor, device)


__all__ = ["finetune_stylizer", "stylizer"]
