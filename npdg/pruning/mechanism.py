"""The mechanism test: does removing style-sensitive units, with no training, help held-out domains?

NPDG's claim is that the units whose activations react most to style carry the domain-specific
part of a network, so removing them should cost the source little and help the held-out domains
(docs/method.md §9). This module tests that claim directly on a trained model, without sparse
training or fine-tuning:

1. rank units by a sensitivity table (combined w, unary only, binary only — or the reverse, or a
   random ranking) and soft-mask the top ``rate`` of them (their BN γ and β, or head, set to 0);
2. **re-estimate every BatchNorm's running statistics** on the masked model (no gradient step) from
   the mix the model was trained on — clean source images *and* DSP-stylized ones. Masking shifts
   the input statistics of every later BN, which alone can wreck a model; re-estimating on the
   training mix removes that shift, so what is left measures the units. The dense model gets the
   same re-estimation, so every delta is against "dense, re-estimated";
3. score source and held-out mIoU.

If removing the most sensitive units helps held-out relative to source more than removing the
least sensitive or random ones, the sensitivity measure finds the right units and any failure of
NPDG lies in sparse training; if not, the measure itself is the problem.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from npdg.errors import ConfigError
from npdg.pruning.selection import PruningPlan, select
from npdg.pruning.soft import apply_masks_

#: Selection name → (sensitivity-table column, which end is masked). ``most_*`` masks the units
#: scoring highest, ``least_*`` the lowest; ``random`` is a seeded random ranking (the floor).
#: ``most_oracle`` ranks by a table probed with the held-out domains' own renderings (an upper
#: bound on what a sensitivity measure could find; it sees the held-out styles, so it is a
#: diagnostic, never a method).
SELECTIONS: dict[str, tuple[str, str] | None] = {
    "most_combined": ("combined", "most"),
    "most_unary": ("w_unary", "most"),
    "most_binary": ("w_binary", "most"),
    "least_combined": ("combined", "least"),
    "most_oracle": ("combined", "most"),
    "random": None,
}
RESULT_COLUMNS = ["selection", "rate", "seed", "recalibrated", "masked", "domain", "role", "averaged", "miou"]

Progress = Callable[[int, int], None]


def check_rates(rates: Sequence[float]) -> tuple[float, ...]:
    """The rates as floats in (0, 1) (ConfigError otherwise)."""
    out = []
    for r in rates:
        if isinstance(r, bool) or not isinstance(r, int | float) or not math.isfinite(r) or not 0 < r < 1:
            raise ConfigError(f"mechanism rates must be numbers in (0, 1), got {r!r}")
        out.append(float(r))
    if not out:
        raise ConfigError("give at least one rate")
    return tuple(out)


def unit_scores(table: pd.DataFrame, column: str, end: str) -> dict[str, np.ndarray]:
    """Layer → per-unit scores for :func:`npdg.pruning.selection.select`, which prunes the lowest
    first: ``-column`` for ``end == "most"``, ``column`` for ``"least"``."""
    missing = {"layer", "unit", column} - set(table.columns)
    if missing:
        raise ConfigError(f"the sensitivity table lacks column(s) {sorted(missing)}")
    sign = -1.0 if end == "most" else 1.0
    out = {}
    for layer, rows in table.groupby("layer", sort=False):
        rows = rows.sort_values("unit")
        out[str(layer)] = sign * rows[column].to_numpy(dtype=np.float64)
    return out


def mask_plan(model: nn.Module, selection: str, rate: float, tables: Mapping[str, pd.DataFrame], seed: int = 0,
              **limits) -> PruningPlan:
    """The plan that masks ``rate`` of the units chosen by ``selection`` (:data:`SELECTIONS`).

    ``tables``: ``"dsp"`` (and ``"oracle"`` for ``most_oracle``) → a sensitivity table of this model
    (``SensitivityResult.table``). ``limits``: ``round_to`` / ``max_layer_ratio`` / ``kinds`` as in
    :func:`select` (the same per-layer cap and rounding as pruning, so the test removes what a
    pruning at that rate could).
    """
    if selection not in SELECTIONS:
        raise ConfigError(f"unknown selection {selection!r}; valid: {', '.join(SELECTIONS)}")
    if SELECTIONS[selection] is None:
        return select(model, score="random", rate=rate, seed=seed, label="random", **limits)
    column, end = SELECTIONS[selection]
    source = "oracle" if selection == "most_oracle" else "dsp"
    if source not in tables:
        raise ConfigError(f"selection {selection!r} needs the {source} sensitivity table")
    return select(model, scores=unit_scores(tables[source], column, end), rate=rate, label=selection, **limits)


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor], progress: Progress | None = None) -> int:
    """Re-estimate every BatchNorm's running mean and variance of ``model`` in place from ``batches``
    (cumulative average, no gradient step; every other module stays in eval mode, so dropout is
    off). Returns the number of images seen; the model is left in eval mode."""
    batches = list(batches)
    bns = _batchnorms(model)
    momenta = [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative moving average: every batch counts the same
        bn.train()
    seen = 0
    try:
        device = next(model.parameters()).device
        for i, x in enumerate(batches):
            model(x.to(device))
            seen += int(x.shape[0])
            if progress is not None:
                progress(i + 1, len(batches))
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.eval()
    return seen


@torch.no_grad()
def calibration_batches(images: torch.Tensor, dsp, batch_size: int = 8, seed: int = 0) -> list[torch.Tensor]:
    """BN re-estimation batches ``cat[clean, DSP-stylized]`` of ``images`` ``[N, 3, H, W]`` in
    [0, 1], ``batch_size`` clean images each — the mix DSP training feeds the segmentor (its ε drawn
    from N(0, I), seeded; ``dsp=None``: clean batches only)."""
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        raise ConfigError(f"calibration images must be [N, 3, H, W], got {tuple(images.shape)}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    for start in range(0, images.shape[0], batch_size):
        clean = images[start:start + batch_size]
        out.append(clean if dsp is None else torch.cat([clean, dsp.stylize(clean, n_styles=1, generator=gen).to(clean)]))
    return out


def masked_copy(model: nn.Module, plan: PruningPlan | None) -> nn.Module:
    """A copy of ``model`` with ``plan``'s units zeroed in place (the original is never touched)."""
    out = copy.deepcopy(model).eval()
    if plan is not None and not plan.is_empty:
        apply_masks_(out, plan)
    return out


def mechanism_test(
    model: nn.Module,
    tables: Mapping[str, pd.DataFrame],
    calibration: Sequence[torch.Tensor],
    score: Callable[[nn.Module], pd.DataFrame],
    *,
    rates: Sequence[float] = (0.05, 0.1, 0.2, 0.3),
    selections: Sequence[str] = ("most_combined", "most_unary", "most_binary", "least_combined", "random"),
    seeds: Sequence[int] = (0, 1, 2),
    limits: Mapping | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Mask, re-estimate BN, score — for every selection and rate; a tidy frame of
    :data:`RESULT_COLUMNS` (one row per domain).

    ``calibration``: the BN re-estimation batches (clean and DSP-stylized source images).
    ``score(model)``: a frame ``domain, role, averaged, miou`` of a model. ``random`` runs once per
    seed; every other selection is deterministic (seed 0). The dense model is scored as it is
    (``recalibrated`` False) and re-estimated (True): the reference every delta is taken against.
    """
    rates = check_rates(rates)
    unknown = [s for s in selections if s not in SELECTIONS]
    if unknown:
        raise ConfigError(f"unknown selection(s) {unknown}; valid: {', '.join(SELECTIONS)}")
    if not calibration:
        raise ConfigError("BN re-estimation needs at least one calibration batch")
    limits = dict(limits or {})
    jobs = [("dense", 0.0, 0, False), ("dense", 0.0, 0, True)]
    for sel in selections:
        for rate in rates:
            for seed in (seeds if sel == "random" else (0,)):
                jobs.append((sel, rate, int(seed), True))
    frames = []
    for i, (sel, rate, seed, recal) in enumerate(jobs):
        plan = None if sel == "dense" else mask_plan(model, sel, rate, tables, seed, **limits)
        net = masked_copy(model, plan)
        if recal:
            recalibrate_bn(net, calibration)
        scores = score(net)
        masked = 0 if plan is None else sum(plan.num_pruned.values())
        frames.append(scores.assign(selection=sel, rate=rate, seed=seed, recalibrated=recal, masked=masked))
        del net
        if progress is not None:
            progress(i + 1, len(jobs))
    return pd.concat(frames, ignore_index=True)[RESULT_COLUMNS]


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (selection, rate): source and held-out mean mIoU (mean over seeds), their deltas
    against the re-estimated dense model (``d_heldout_std``: over seeds), ``gap`` = Δheld-out −
    Δsource in points and ``rel_gap`` = the share of its dense held-out mIoU the model keeps minus the
    share of its source mIoU (a held-out mIoU far below the source one can fall by fewer points for
    that reason alone; the shares compare like with like). Compare selections at equal source loss:
    one whose held-out falls less there removes the more domain-specific units."""
    per = (frame.assign(part=np.where(frame["role"] == "source", "source", np.where(frame["averaged"], "heldout", "other")))
           .query("part != 'other'")
           .groupby(["selection", "rate", "seed", "recalibrated", "part"], as_index=False)["miou"].mean()
           .pivot_table(index=["selection", "rate", "seed", "recalibrated"], columns="part", values="miou")
           .reset_index())
    ref = per[(per["selection"] == "dense") & per["recalibrated"]]
    if ref.empty:
        raise ConfigError("the frame has no re-estimated dense model to compare against")
    src0, held0 = float(ref["source"].iloc[0]), float(ref["heldout"].iloc[0])
    per = per.assign(d_source=per["source"] - src0, d_heldout=per["heldout"] - held0)
    per = per.assign(gap=per["d_heldout"] - per["d_source"],
                     rel_gap=per["heldout"] / held0 - per["source"] / src0)
    out = (per.groupby(["selection", "rate", "recalibrated"], as_index=False, sort=False)
           .agg(seeds=("seed", "size"), source=("source", "mean"), heldout=("heldout", "mean"),
                d_source=("d_source", "mean"), d_heldout=("d_heldout", "mean"), d_heldout_std=("d_heldout", "std"),
                gap=("gap", "mean"), gap_std=("gap", "std"), rel_gap=("rel_gap", "mean")))
    return out.assign(gap_std=out["gap_std"].fillna(0.0), d_heldout_std=out["d_heldout_std"].fillna(0.0))


__all__ = ["RESULT_COLUMNS", "SELECTIONS", "calibration_batches", "check_rates", "mask_plan", "masked_copy", "mechanism_test",
           "recalibrate_bn", "summary", "unit_scores"]
