"""Prune page service: choose units, see what it costs and what it changes (docs/method.md §0, §5).

* :func:`criteria` — the pruning criteria (``npdg.recipes.modes.CRITERIA``) as a table;
* :func:`select_plan` — a :class:`~npdg.pruning.selection.PruningPlan` for a model and a criterion,
  rate or threshold and the per-group limits (the proxy criterion ``sensitivity`` ranks by a saved
  sensitivity table and is labelled as a proxy, not NPDG);
* :func:`plan_table` — kept / pruned units per layer;
* :func:`plan_cost` — GFLOPs and parameters the plan leaves (from the plan alone);
* :func:`masked_predictions` / :func:`masked_miou` — the model with the plan applied as soft masks
  (``torch.func.functional_call``: the shared model is never modified) against the dense model, on
  one scene or on a small fixed scene set per domain.

Plans are cached by every setting and handed out as copies; predictions and scores by model file
version, plan hash and settings.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from npdg.config import DEFAULT_MAX_LAYER_RATIO, DEFAULT_RATE, DEFAULT_ROUND_TO
from npdg.errors import ConfigError
from npdg.explain import ErrorMap, error_map
from npdg.pruning.cost import PlanCost, plan_hash
from npdg.pruning.cost import plan_cost as _plan_cost
from npdg.pruning.selection import PruningPlan
from npdg.service import engine, engine_device, file_key, lru, model_key, readonly, shared_model
from npdg.service.data import DOMAIN_NAMES, DOMAIN_ROLES, scene_batch

ProgressFn = Callable[[int, int], None]
#: Render size (H, W) of the what-if scenes (the first ``n_images`` of a split, in every domain).
DEFAULT_SIZE: tuple[int, int] = (128, 256)
DROP_CHOICES: tuple[str, ...] = ("most_sensitive", "least_sensitive")
_PLANS = lru(64)
_PREDICTIONS = lru(64)
_SCORES = lru(32)


def criteria() -> pd.DataFrame:
    """The pruning criteria: ``name, summary, score, sparse_mode, proxy`` (docs/method.md §0)."""
    from npdg.recipes.modes import CRITERIA

    return pd.DataFrame([{"name": c.name, "summary": c.summary, "score": c.score, "sparse_mode": c.sparse_mode,
                          "proxy": c.proxy} for c in CRITERIA.values()],
                        columns=["name", "summary", "score", "sparse_mode", "proxy"])


def select_plan(
    model_path: str | Path,
    *,
    criterion: str = "npdg",
    rate: float = DEFAULT_RATE,
    threshold: float | None = None,
    round_to: int = DEFAULT_ROUND_TO,
    max_layer_ratio: float = DEFAULT_MAX_LAYER_RATIO,
    seed: int = 0,
    sensitivity: str | Path | None = None,
    lam: float | None = None,
    drop: str = "most_sensitive",
) -> PruningPlan:
    """The units ``criterion`` would prune in the model at ``model_path`` (nothing is modified).

    Criterion names map to scores through ``npdg.recipes.modes.CRITERIA`` (``npdg``/``slimming``:
    |γ| as the model has it; ``l1norm``; ``random`` with ``seed``). The proxy ``sensitivity`` needs
    a table (``sensitivity``: a saved table path; ``lam`` re-mixes it first) and prunes the ``drop``
    end of the combined weight w first (``most_sensitive`` scores units by ``1 − w``). Returns a copy.
    """
    from npdg.recipes.modes import criterion as get_criterion

    crit = get_criterion(criterion)
    if crit.score == "scores" and sensitivity is None:
        raise ConfigError(f"criterion {criterion!r} ranks by style sensitivity: give a sensitivity table")
    if drop not in DROP_CHOICES:
        raise ConfigError(f"drop must be one of {', '.join(DROP_CHOICES)}, got {drop!r}")
    skey = None if crit.score != "scores" else (file_key(sensitivity), None if lam is None else float(lam), drop)
    key = (model_key(model_path), criterion, float(rate), None if threshold is None else float(threshold), int(round_to),
           float(max_layer_ratio), int(seed), skey)

    def compute() -> PruningPlan:
        from npdg.pruning.selection import select

        scores = None
        if crit.score == "scores":
            from npdg.sensitivity import SensitivityResult, recombine

            table = SensitivityResult.load(sensitivity)
            if lam is not None:
                table = recombine(table, lam)
        with engine():
            model = shared_model(model_path)
            if crit.score == "scores":
                table.check_model(model)
                w = table.weights()
                scores = {k: (1.0 - v).numpy() if drop == "most_sensitive" else v.numpy() for k, v in w.items()}
            return select(model, score=crit.score, scores=scores, label=criterion, rate=rate, threshold=threshold,
                          round_to=round_to, max_layer_ratio=max_layer_ratio, seed=seed)

    return copy.deepcopy(_PLANS.get(key, compute))


def plan_table(plan: PruningPlan) -> pd.DataFrame:
    """One row per unit layer of the plan: ``layer, kind, size, pruned, kept, pruned_share``."""
    rows = [{"layer": lp.name, "kind": lp.kind, "size": lp.size, "pruned": len(lp.pruned), "kept": len(lp.kept),
             "pruned_share": len(lp.pruned) / lp.size if lp.size else 0.0} for lp in plan.layers]
    return pd.DataFrame(rows, columns=["layer", "kind", "size", "pruned", "kept", "pruned_share"])


def plan_cost(model_path: str | Path, plan: PruningPlan | None, size: tuple[int, int] = (512, 1024)) -> PlanCost:
    """GFLOPs and parameters of the model with ``plan`` applied (and dense), from the plan alone
    (:func:`npdg.pruning.cost.plan_cost`; cached there by spec, plan hash and size)."""
    model = shared_model(model_path)
    return _plan_cost(model, plan, tuple(size))


# ==================================================================================================
# soft-masked predictions
# ==================================================================================================
@dataclass(frozen=True)
class MaskedPrediction:
    """One scene predicted by the dense model and by the plan's soft-masked model (read-only arrays)."""

    domain: str
    role: str
    split: str
    index: int
    image: np.ndarray  # uint8 [H, W, 3]
    label: np.ndarray  # uint8 [H, W]
    dense: np.ndarray  # uint8 [H, W] train ids
    pruned: np.ndarray  # uint8 [H, W] train ids
    dense_error: ErrorMap
    pruned_error: ErrorMap

    @property
    def changed(self) -> float:
        """Share of pixels whose predicted class the plan changes."""
        return float((self.dense != self.pruned).mean())


def _logits(model, plan: PruningPlan | None, images):
    import torch

    from npdg.pruning.soft import soft_forward

    with torch.inference_mode():
        return model(images) if plan is None or plan.is_empty else soft_forward(model, plan, images)


def masked_predictions(
    model_path: str | Path,
    plan: PruningPlan | None,
    *,
    split: str = "val",
    index: int = 0,
    domains: Sequence[str] = DOMAIN_NAMES,
    size: tuple[int, int] = DEFAULT_SIZE,
) -> tuple[MaskedPrediction, ...]:
    """Scene ``(split, index)`` in each of ``domains``, predicted dense and with ``plan`` soft-masked."""
    doms = tuple(domains)
    key = ("pred", model_key(model_path), plan_hash(plan), split, int(index), doms, tuple(size))

    def compute() -> tuple[MaskedPrediction, ...]:
        out = []
        for d in doms:
            images, labels = scene_batch(d, split, [int(index)], tuple(size))
            with engine():
                model = shared_model(model_path)
                x = images.to(engine_device())
                dense = _logits(model, None, x).argmax(1)[0].to("cpu").numpy().astype(np.uint8)
                pruned = _logits(model, plan, x).argmax(1)[0].to("cpu").numpy().astype(np.uint8)
            image = (images[0].permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
            label = labels[0].numpy().astype(np.uint8)
            n = int(getattr(model, "num_classes", 19))
            out.append(MaskedPrediction(d, DOMAIN_ROLES.get(d, "real"), split, int(index), readonly(image),
                                        readonly(label), readonly(dense), readonly(pruned),
                                        error_map(dense, label, num_classes=n), error_map(pruned, label, num_classes=n)))
        return tuple(out)

    return _PREDICTIONS.get(key, compute)


def masked_miou(
    model_path: str | Path,
    plan: PruningPlan | None,
    *,
    domains: Sequence[str] = DOMAIN_NAMES,
    split: str = "val",
    n_images: int = 4,
    size: tuple[int, int] = DEFAULT_SIZE,
    protocol: str = "robustnet",
    progress: ProgressFn | None = None,
) -> pd.DataFrame:
    """mIoU per domain of the dense and the soft-masked model on the first ``n_images`` scenes of
    ``split``: columns ``domain, role, averaged, dense_miou, pruned_miou, delta`` (a new frame).

    ``averaged`` marks the domains the held-out mean covers (not the source, not ``suburb``;
    docs/method.md §6). Scores come from :func:`npdg.evaluate.evaluate` (one confusion matrix per
    domain), so they match ``npdg eval`` on the same scenes.
    """
    doms = tuple(domains)
    key = ("miou", model_key(model_path), plan_hash(plan), doms, split, int(n_images), tuple(size), protocol)

    def compute() -> pd.DataFrame:
        from npdg.data.specs import is_averaged, open_named
        from npdg.evaluate import evaluate
        from npdg.pruning.soft import SoftMasked

        datasets, source = open_named(list(doms), split, tuple(size))
        with engine():
            model = shared_model(model_path)
            kw = dict(limit=int(n_images), device=engine_device(), channels_last=False, source=source)
            total = 2 if plan is not None and not plan.is_empty else 1
            dense = evaluate(model, datasets, protocol, progress=_scaled(progress, 0, total), **kw)
            if total == 1:
                pruned = dense
            else:
                masked = SoftMasked(model, plan)
                masked.num_classes = getattr(model, "num_classes", 19)
                pruned = evaluate(masked, datasets, protocol, progress=_scaled(progress, 1, total), **kw)
        rows = [{"domain": d, "role": DOMAIN_ROLES.get(d, "real"), "averaged": is_averaged(d, source),
                 "dense_miou": dense.results[d].miou, "pruned_miou": pruned.results[d].miou,
                 "delta": pruned.results[d].miou - dense.results[d].miou} for d in datasets]
        return pd.DataFrame(rows, columns=["domain", "role", "averaged", "dense_miou", "pruned_miou", "delta"])

    return _SCORES.get(key, compute).copy()


def _scaled(progress: ProgressFn | None, part: int, parts: int) -> ProgressFn | None:
    """A progress callback for part ``part`` of ``parts`` equal parts of one job."""
    if progress is None:
        return None

    def call(done: int, total: int) -> None:
        progress(part * total + done, parts * total)

    return call


__all__ = ["DEFAULT_SIZE", "DROP_CHOICES", "MaskedPrediction", "criteria", "masked_miou", "masked_predictions",
           "plan_cost", "plan_table", "select_plan"]
