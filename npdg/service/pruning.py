"""Prune page service: choose units, see what it costs and what it changes (docs/method.md §0, §5).

* :func:`criteria` — the pruning criteria (``npdg.recipes.modes.CRITERIA``) as a table;
* :func:`select_plan` — a :class:`~npdg.pruning.selection.PruningPlan` for a model and a criterion,
  rate or threshold and the per-group limits (the proxy criterion ``sensitivity`` ranks by a saved
  sensitivity table and is labelled as a proxy, not NPDG);
* :func:`plan_table` — kept / pruned units per layer;
* :func:`plan_cost` — GFLOPs and parameters the plan leaves (from the plan alone);
* :func:`masked_predictions` / :func:`masked_miou` — the model with the plan applied as soft masks
  (``torch.func.functional_call``: the shared model is never modified) against the dense model, on
  one scene or on a small fixed scene set per domain;
* :func:`shipped_what_if` / :func:`build_what_if_table` — the page's default what-ifs of a zoo model,
  computed once by ``npdg zoo whatif`` and shipped (:data:`SHIPPED_WHAT_IF`), so a rate on the
  slider is a lookup instead of a forward (the scores are the same; they are fp32);
* :func:`what_if_ready` / :func:`what_if_job` — the page's what-if without a forward when it can,
  else as a background job that a newer rate of the same session supersedes.

Plans are cached by every setting and handed out as copies; predictions and scores by model file
version, plan hash and settings.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Hashable, Sequence
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
from npdg.service import device_info, engine, engine_device, file_key, jobs, lru, model_key, readonly, shared_model
from npdg.service.data import DOMAIN_NAMES, DOMAIN_ROLES, scene_batch

ProgressFn = Callable[[int, int], None]
#: Render size (H, W) of the what-if scenes (the first ``n_images`` of a split, in every domain).
DEFAULT_SIZE: tuple[int, int] = (128, 256)
DROP_CHOICES: tuple[str, ...] = ("most_sensitive", "least_sensitive")
_PLANS = lru(64)
_PREDICTIONS = lru(64)
_SCORES = lru(32, single_flight=True)  # two sessions asking for the same what-if share one computation


def _domains(domains: Sequence[str] | None) -> tuple[str, ...]:
    """The given domains, or every synthetic domain (read at call time)."""
    return tuple(DOMAIN_NAMES if domains is None else domains)


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
    units: str = "all",
    only_group: int | None = None,
) -> PruningPlan:
    """The units ``criterion`` would prune in the model at ``model_path`` (nothing is modified).

    ``units`` (``all``, ``filters``, ``heads``; ``npdg.recipes.prune.UNIT_KINDS``) limits the
    candidates; ``only_group`` prunes ``rate`` of one coupling group only (per-layer curves).

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
    from npdg.recipes.prune import UNIT_KINDS

    if units not in UNIT_KINDS:
        raise ConfigError(f"units must be one of {', '.join(UNIT_KINDS)}, got {units!r}")
    key = (model_key(model_path), criterion, float(rate), None if threshold is None else float(threshold), int(round_to),
           float(max_layer_ratio), int(seed), skey, units, None if only_group is None else int(only_group))

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
                          round_to=round_to, max_layer_ratio=max_layer_ratio, seed=seed, kinds=UNIT_KINDS[units],
                          only_group=only_group)

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


#: A plan that removes at least this share of the FLOPs is evaluated on a physically pruned copy of
#: the model (cheaper per forward than the soft-masked dense one from about this point; the copy
#: gives the same outputs, tested to 1e-4; break-even measured at ~0.2). Measured on the 16-image
#: what-if batch of R18 (2 cores): building a copy takes 0.1–0.24 s and its first forward is slower
#: than later ones (new shapes); in fp32 copy + forward beats soft masks from r ≈ 0.25 (0.52 vs
#: 0.57 s; 0.26 vs 0.58 at r = 0.5), in bf16 never for one batch (0.30–0.55 vs 0.26–0.31 s), so a
#: one-batch bf16 what-if uses soft masks unless a copy is already built.
PHYSICAL_MIN_SAVING = 0.2
_PRUNED_COPIES = lru(2)


def _pruned_copy(model, plan: PruningPlan, build: bool = True):
    """A physically pruned copy of ``model`` for ``plan`` (cached), or None where soft masks are
    cheaper — or, with ``build=False``, where no copy is built yet.

    The shared model is never modified: ``prune_model`` works on a deep copy. Called outside
    inference mode (torch-pruning traces with autograd).
    """
    cost = _plan_cost(model, plan, (512, 1024))
    if 1.0 - cost.gflops_ratio < PHYSICAL_MIN_SAVING:
        return None
    key = (id(model), plan_hash(plan))
    if not build and key not in _PRUNED_COPIES:
        return None

    def compute():
        import torch

        from npdg.pruning.physical import prune_model

        with torch.no_grad():
            pruned = prune_model(model, plan)
        return model, pruned.to(memory_format=torch.channels_last).eval()

    owner, pruned = _PRUNED_COPIES.get(key, compute)
    return pruned if owner is model else compute()[1]


def soft_logits(model, plan: PruningPlan | None, images, *, build: bool = True):
    """Logits of ``model`` on ``images`` with ``plan`` applied: soft masks on the shared model
    (:func:`npdg.pruning.soft.soft_forward`) for small plans, a physically pruned copy for plans
    that save at least :data:`PHYSICAL_MIN_SAVING` of the FLOPs — the same numbers either way.
    ``build=False``: a copy only if one is built already (for a one-off forward in bf16, where
    building and running a copy is not faster than soft masks; docs/dashboard.md §4)."""
    import torch

    from npdg.pruning.soft import soft_forward

    if plan is None or plan.is_empty:
        with torch.inference_mode():
            return model(images)
    pruned = _pruned_copy(model, plan, build)
    with torch.inference_mode():
        return pruned(images) if pruned is not None else soft_forward(model, plan, images)


def masked_predictions(
    model_path: str | Path,
    plan: PruningPlan | None,
    *,
    split: str = "val",
    index: int = 0,
    domains: Sequence[str] | None = None,
    size: tuple[int, int] = DEFAULT_SIZE,
) -> tuple[MaskedPrediction, ...]:
    """Scene ``(split, index)`` in each of ``domains``, predicted dense and with ``plan`` soft-masked."""
    doms = _domains(domains)
    key = ("pred", model_key(model_path), plan_hash(plan), split, int(index), doms, tuple(size))

    def compute() -> tuple[MaskedPrediction, ...]:
        out = []
        for d in doms:
            images, labels = scene_batch(d, split, [int(index)], tuple(size))
            with engine():
                model = shared_model(model_path)
                x = images.to(engine_device())
                dense = soft_logits(model, None, x).argmax(1)[0].to("cpu").numpy().astype(np.uint8)
                pruned = soft_logits(model, plan, x).argmax(1)[0].to("cpu").numpy().astype(np.uint8)
            image = (images[0].permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
            label = labels[0].numpy().astype(np.uint8)
            n = int(getattr(model, "num_classes", 19))
            out.append(MaskedPrediction(d, DOMAIN_ROLES.get(d, "real"), split, int(index), readonly(image),
                                        readonly(label), readonly(dense), readonly(pruned),
                                        error_map(dense, label, num_classes=n), error_map(pruned, label, num_classes=n)))
        return tuple(out)

    return _PREDICTIONS.get(key, compute)


_SCENE_SETS = lru(8)
#: Images per forward of the what-if (bounds memory; one batch for the default 2 scenes × 8 domains).
WHAT_IF_BATCH = 16


def scene_set(doms: tuple[str, ...], split: str, n_images: int, size: tuple[int, int]):
    """The first ``n_images`` scenes of ``split`` in each domain, stacked once: (images, labels, names)
    (the what-if scene set, shared with the Compare page)."""
    def compute():
        import torch

        parts = [scene_batch(d, split, list(range(int(n_images))), size) for d in doms]
        images = torch.cat([p[0] for p in parts])
        labels = torch.cat([p[1] for p in parts])
        return images, labels, tuple(d for d in doms for _ in range(int(n_images)))

    return _SCENE_SETS.get((doms, split, int(n_images), tuple(size)), compute)


#: What-if precisions. ``exact``: fp32 — the numbers ``npdg eval`` and the physically pruned model
#: give. ``fast``: bf16 autocast where the hardware runs it natively (``npdg.evaluate.native_bf16``:
#: CUDA, or a CPU with AMX / AVX512-BF16, where a forward takes about half the time), exact
#: elsewhere. Measured on the zoo: the two differ by a fraction of a point of mIoU, far below the
#: spread between scene sets (docs/dashboard.md §4).
PRECISIONS = ("fast", "exact")


def amp_of(precision: str) -> str:
    """The ``npdg.evaluate.amp_context`` setting for a what-if precision (:data:`PRECISIONS`)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return "bf16" if precision == "fast" else "off"


def precision_used(precision: str) -> str:
    """What a what-if at ``precision`` computes in on the engine's device: ``bf16`` or ``fp32``."""
    from npdg.evaluate import amp_context

    return "bf16" if amp_context(engine_device(), amp_of(precision))[1] == "bf16" else "fp32"


def confusions(model, plan, doms, split, n_images, size, progress, part: int = 0, parts: int = 1,
               precision: str = "exact") -> dict[str, object]:
    """Per-domain confusion matrices of the (soft-masked) model on the scene set, batched, at
    ``precision`` (:data:`PRECISIONS`); ``progress(images done, images in all parts)`` for pass
    ``part`` of ``parts``."""
    import torch

    from npdg.evaluate import ConfusionMatrix, amp_context, model_num_classes

    images, labels, names = scene_set(doms, split, n_images, size)
    device = engine_device()
    # in bf16 a single batch of soft masks is as fast as building a copy and running it (see PHYSICAL_MIN_SAVING)
    build = precision_used(precision) == "fp32" or len(names) > WHAT_IF_BATCH
    num_classes = model_num_classes(model)
    cms = {d: ConfusionMatrix(num_classes, device=device) for d in doms}
    n = len(names)
    for start in range(0, n, WHAT_IF_BATCH):
        x = images[start:start + WHAT_IF_BATCH].to(device).contiguous(memory_format=torch.channels_last)
        y = labels[start:start + WHAT_IF_BATCH].to(device)
        with amp_context(device, amp_of(precision))[0]:
            pred = soft_logits(model, plan, x, build=build).argmax(1)
        for j, d in enumerate(names[start:start + WHAT_IF_BATCH]):
            cms[d].update(pred[j], y[j])
        if progress is not None:
            progress(part * n + min(start + WHAT_IF_BATCH, n), parts * n)
    return cms


def _miou_key(model_path, plan, doms, split, n_images, size, used) -> tuple:
    return ("miou", model_key(model_path), plan_hash(plan), doms, split, n_images, size, used)


def _dense_key(model_path, doms, split, n_images, size, used) -> tuple:
    return ("dense", model_key(model_path), doms, split, n_images, size, used)


def masked_miou(
    model_path: str | Path,
    plan: PruningPlan | None,
    *,
    domains: Sequence[str] | None = None,
    split: str = "val",
    n_images: int = 4,
    size: tuple[int, int] = DEFAULT_SIZE,
    progress: ProgressFn | None = None,
    precision: str = "exact",
    keep_going: Callable[[], bool] | None = None,
) -> pd.DataFrame:
    """mIoU per domain of the dense and the soft-masked model on the first ``n_images`` scenes of
    ``split``: columns ``domain, role, averaged, dense_miou, pruned_miou, delta`` (a new frame).
    ``precision``: ``exact`` (fp32) or ``fast`` (:data:`PRECISIONS`); dense and pruned are computed
    at the same one, so ``delta`` compares like with like. ``keep_going``: asked once the engine is
    held, before each forward pass; False raises :class:`npdg.service.jobs.Superseded` (a what-if
    nobody waits for any more, :func:`what_if_job`).

    ``averaged`` marks the domains the held-out mean covers (not the source, not ``suburb``;
    docs/method.md §6). One confusion matrix per domain (``npdg.evaluate.ConfusionMatrix``), the
    scenes rendered once and batched together in channels-last memory: the same numbers as
    ``npdg eval`` on the same scenes at their native size (tested against the physically pruned
    model), several times faster than a per-domain loader.
    """
    doms = _domains(domains)
    if int(n_images) < 1:
        raise ConfigError(f"n_images must be >= 1, got {n_images}")
    used = precision_used(precision)
    key = _miou_key(model_path, plan, doms, split, int(n_images), tuple(size), used)

    parts = 1 if plan is None or plan.is_empty else 2

    def scores(which: PruningPlan | None, part: int) -> dict[str, float]:
        from npdg.evaluate import domain_result

        with engine():
            if keep_going is not None and not keep_going():
                raise jobs.Superseded
            model = shared_model(model_path)
            cms = confusions(model, which, doms, split, int(n_images), tuple(size), progress, part, parts, precision)
        return {d: domain_result(d, cm, int(n_images)).miou for d, cm in cms.items()}

    def compute() -> pd.DataFrame:
        from npdg.data.specs import is_averaged

        shipped = shipped_what_if(model_path, plan, doms, split, int(n_images), tuple(size))
        if shipped is not None:
            dense, pruned = shipped
        else:
            dense = _SCORES.get(_dense_key(model_path, doms, split, int(n_images), tuple(size), used),
                                lambda: scores(None, 0))
            pruned = dense if parts == 1 else scores(plan, 1)
        source = next((d for d in doms if DOMAIN_ROLES.get(d) == "source"), None)
        rows = [{"domain": d, "role": DOMAIN_ROLES.get(d, "real"), "averaged": is_averaged(d, source),
                 "dense_miou": dense[d], "pruned_miou": pruned[d], "delta": pruned[d] - dense[d]} for d in doms]
        frame = pd.DataFrame(rows, columns=["domain", "role", "averaged", "dense_miou", "pruned_miou", "delta"])
        frame.attrs.update(precision="fp32" if shipped is not None else used, precomputed=shipped is not None)
        return frame

    return _SCORES.get(key, compute).copy()


# ==================================================================================================
# what-ifs shipped with a zoo model: the Prune page's default view without a forward
# ==================================================================================================
#: What-ifs shipped next to a zoo model (``npdg zoo whatif``): dense and soft-masked mIoU per domain
#: of every :data:`PAGE_CRITERIA` plan at every :data:`SLIDER_RATES` position, default settings.
SHIPPED_WHAT_IF = "prune_whatif.json"
#: The positions of the Prune page's rate slider (0 to 0.7 in steps of 0.05).
SLIDER_RATES: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(15))
#: The criteria the Prune page offers (``sensitivity`` where the model has a saved table).
PAGE_CRITERIA: tuple[str, ...] = ("npdg", "slimming", "l1norm", "random", "sensitivity")
#: The scene counts a shipped table holds (the page's default).
SHIPPED_N_IMAGES: tuple[int, ...] = (2,)
_SHIPPED_WHAT_IFS = lru(16)


def what_if_context(doms: Sequence[str], split: str, size: tuple[int, int]) -> dict:
    """The scenes a shipped what-if was computed on, less their count (it answers only for these)."""
    return dict(domains=list(doms), split=split, size=[int(s) for s in size])


def model_digest(model_path: str | Path) -> str:
    """SHA-256 of the model file and of its ``pruning_plan.json`` if any (what a shipped what-if
    belongs to: a retrained or replaced model never gets another model's numbers)."""
    from npdg.models.store import PLAN_FILENAME, resolve_model_path
    from npdg.recipes.zoo import sha256

    f = resolve_model_path(model_path)
    plan = f.parent / PLAN_FILENAME
    return sha256(f) + (":" + sha256(plan) if plan.is_file() else "")


def _load_shipped_what_if(model_path: str | Path) -> dict | None:
    import json

    from npdg.models.store import resolve_model_path

    path = resolve_model_path(model_path).parent / SHIPPED_WHAT_IF
    if not path.is_file():
        return None
    try:
        table = json.loads(path.read_text())
        if table.get("model_sha256") != model_digest(model_path):
            return None
        return {int(n): entry for n, entry in table["scores"].items()} | {"context": table["context"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # a damaged table is ignored: the what-if is computed


def shipped_what_if(model_path: str | Path, plan: PruningPlan | None, doms: Sequence[str], split: str,
                    n_images: int, size: tuple[int, int]) -> tuple[dict, dict] | None:
    """(dense, pruned) mIoU per domain of ``plan`` from the model folder's :data:`SHIPPED_WHAT_IF`
    (fp32, computed by :func:`masked_miou` itself), or None unless the table belongs to this very
    model file, holds this scene set and this plan (by :attr:`PruningPlan.digest`)."""
    table = _SHIPPED_WHAT_IFS.get(model_key(model_path), lambda: _load_shipped_what_if(model_path))
    entry = None if table is None else table.get(int(n_images))
    if entry is None or table["context"] != what_if_context(doms, split, size):
        return None
    dense = entry.get("dense")
    pruned = dense if plan is None or plan.is_empty else entry.get("plans", {}).get(plan.digest)
    if not isinstance(dense, list) or not isinstance(pruned, list) or not len(dense) == len(pruned) == len(doms):
        return None
    return dict(zip(doms, map(float, dense))), dict(zip(doms, map(float, pruned)))


def page_plans(model_path: str | Path, rates: Sequence[float] = SLIDER_RATES) -> list[tuple[str, float, PruningPlan]]:
    """(criterion, rate, plan) of every :data:`PAGE_CRITERIA` criterion the model can use at each
    rate with the Prune page's default settings — the plans a shipped what-if table holds."""
    from npdg.service import sensitivity as sens

    table = sens.saved_table_path(model_path, "dsp")
    out = []
    for crit in PAGE_CRITERIA:
        if crit == "sensitivity" and table is None:
            continue
        extra = dict(sensitivity=table) if crit == "sensitivity" else {}
        out += [(crit, float(r), select_plan(model_path, criterion=crit, rate=float(r), **extra)) for r in rates]
    return out


def build_what_if_table(model_path: str | Path, *, rates: Sequence[float] = SLIDER_RATES,
                        n_images: Sequence[int] = SHIPPED_N_IMAGES, progress: ProgressFn | None = None) -> dict:
    """The :data:`SHIPPED_WHAT_IF` content for a model: :func:`masked_miou` (exact) of each of
    :func:`page_plans` at ``rates`` on the default what-if scene set, per scene count, by plan digest."""
    doms = _domains(None)
    plans = page_plans(model_path, rates)
    unique = {p.digest: p for _, _, p in plans if not p.is_empty}
    scores: dict[str, dict] = {}
    done, total = 0, len(unique) * len(n_images)
    for n in n_images:
        dense = masked_miou(model_path, None, n_images=int(n), precision="exact")["dense_miou"]
        entry: dict = {"dense": [float(v) for v in dense], "plans": {}}
        for digest, plan in unique.items():
            frame = masked_miou(model_path, plan, n_images=int(n), precision="exact")
            entry["plans"][digest] = [float(v) for v in frame["pruned_miou"]]
            done += 1
            if progress is not None:
                progress(done, total)
        scores[str(int(n))] = entry
    return {"model_sha256": model_digest(model_path), "context": what_if_context(doms, "val", DEFAULT_SIZE),
            "precision": "fp32", "criteria": sorted({c for c, _, _ in plans}), "rates": [float(r) for r in rates],
            "plans": {p.digest: [c, r] for c, r, p in plans if not p.is_empty}, "scores": scores}


def what_if_ready(model_path: str | Path, plan: PruningPlan | None, *, n_images: int = 2,
                  precision: str = "exact") -> pd.DataFrame | None:
    """:func:`masked_miou` of ``plan`` on the Prune page's scene set when it needs no forward pass —
    shipped with the model (:func:`shipped_what_if`) or computed before — else None (then
    :func:`what_if_job` computes it in the background)."""
    doms, size, n, used = _domains(None), tuple(DEFAULT_SIZE), int(n_images), precision_used(precision)
    dense_only = plan is None or plan.is_empty
    if (_miou_key(model_path, plan, doms, "val", n, size, used) in _SCORES
            or (dense_only and _dense_key(model_path, doms, "val", n, size, used) in _SCORES)
            or shipped_what_if(model_path, plan, doms, "val", n, size) is not None):
        return masked_miou(model_path, plan, n_images=n, precision=precision)
    return None


def what_if_job(model_path: str | Path, plan: PruningPlan | None, *, n_images: int = 2, precision: str = "exact",
                lane: Hashable | None = None) -> jobs.JobStatus:
    """:func:`masked_miou` of ``plan`` (what the Prune page shows for a rate) as a background job, so
    the rate slider never waits for a forward pass; its result is the frame. ``lane`` (one browser
    session): a newer request in the lane supersedes this one if it has not started its forward yet
    (:func:`npdg.service.jobs.wanted`), so dragging the slider over several positions computes only
    the last (docs/dashboard.md §4). Not persisted: it is a forward pass, and the in-memory
    :func:`masked_miou` cache keeps it for the session's next visit."""
    n, used = int(n_images), precision_used(precision)
    parts = ("what-if", model_key(model_path), plan_hash(plan), n, used)
    key = jobs.job_key(parts)

    def compute(progress) -> pd.DataFrame:
        return masked_miou(model_path, plan, n_images=n, precision=precision, progress=progress,
                           keep_going=lambda: jobs.wanted(key))

    label = f"what-if mIoU ({n} scenes per domain, {used})"
    return jobs.submit(parts, compute, label=label, lane=lane)


# ==================================================================================================
# which model goes with which criterion
# ==================================================================================================
@dataclass(frozen=True)
class ModelFacts:
    """What the Prune page needs to know about a model: architecture, its training ``mode`` (from its
    ``config.yaml``; ``npdg`` / ``slimming`` mean it was sparse-trained that way) and unit kinds."""

    arch: str
    encoder: str
    mode: str
    kinds: tuple[str, ...]

    @property
    def sparse_trained(self) -> bool:
        return self.mode in ("npdg", "slimming")


def model_facts(model_path: str | Path) -> ModelFacts:
    """Architecture, training mode and prunable unit kinds of the model at ``model_path``."""
    from npdg.config import load_run_config
    from npdg.models.store import resolve_model_path

    folder = resolve_model_path(model_path).parent
    cfg = load_run_config(folder)
    plan = select_plan(model_path, criterion="random", rate=0.0)
    kinds = tuple(k for k in ("filter", "head") if plan.candidates.get(k, 0) > 0)
    if cfg is None:
        return ModelFacts(plan.arch, plan.encoder, "unknown", kinds)
    return ModelFacts(cfg.model.arch, cfg.model.encoder, cfg.train.mode, kinds)


@dataclass(frozen=True)
class CurvePair:
    """One curve of the Prune page: a criterion on the model it belongs to (``label`` names both)."""

    label: str
    model: str  # a model id: ``zoo:NAME`` or ``run:PATH``
    path: Path
    criterion: str


def curve_pairs(model_id: str, model_path: str | Path) -> list[CurvePair]:
    """The (model, criterion) pairs the Prune page compares for the chosen model: ``npdg`` on the
    zoo's npdg-sparse model and ``slimming`` on its slimming-sparse model of the same architecture
    (they rank the same |γ| and differ only in how the model was sparse-trained, docs/method.md §5),
    and ``l1norm`` and ``random`` on the chosen model itself."""
    from npdg.recipes import zoo as zoo_recipe

    facts = model_facts(model_path)
    pairs: list[CurvePair] = []
    for name, card in zoo_recipe.cards().items():
        if card.get("kind") != "sparse" or card.get("sparse_mode") not in ("npdg", "slimming"):
            continue
        folder = zoo_recipe.ZOO_DIR / name
        theirs = model_facts(folder)
        if (theirs.arch, theirs.encoder) == (facts.arch, facts.encoder):
            pairs.append(CurvePair(f"{card['sparse_mode']} on {name}", f"zoo:{name}", folder, card["sparse_mode"]))
    pairs.sort(key=lambda p: ("npdg", "slimming").index(p.criterion))
    short = model_id.split(":", 1)[-1].rstrip("/").split("/")[-1]
    pairs += [CurvePair(f"{c} on {short}", model_id, Path(model_path), c) for c in ("l1norm", "random")]
    return pairs


# ==================================================================================================
# curves: mIoU against the rate, per criterion and per coupling group (background jobs)
# ==================================================================================================
#: Rates of the mIoU-vs-rate curves (the page's slider range in steps of 0.1).
CURVE_RATES: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
#: Rates of the per-layer curves (one coupling group pruned at a time).
LAYER_RATES: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)
CURVE_COLUMNS = ["criterion", "rate", "domain", "role", "averaged", "miou", "dense_miou", "gflops", "params", "n_images"]
LAYER_COLUMNS = ["gid", "layer", "kind", "size", "rate", "pruned", "source", "heldout", "dense_source", "dense_heldout",
                 "n_images"]


def _source_heldout(scores: pd.DataFrame, column: str) -> tuple[float, float]:
    """(source mIoU, mean over the averaged held-out domains) of a :func:`masked_miou` frame."""
    src = scores.loc[scores["role"] == "source", column]
    held = scores.loc[scores["averaged"], column]
    return (float(src.iloc[0]) if len(src) else float("nan"), float(held.mean()) if len(held) else float("nan"))


def curve_job(model_path: str | Path, criterion: str, *, rates: Sequence[float] | None = None, n_images: int = 4,
              domains: Sequence[str] | None = None, units: str = "all", seed: int = 0,
              cost_size: tuple[int, int] = (512, 1024), lookup_only: bool = False):
    """mIoU per domain (soft-masked) and the plan's GFLOPs / parameters at each of ``rates`` for one
    (model, criterion) pair, as a background job shared by all sessions and persisted in the
    dashboard cache (columns :data:`CURVE_COLUMNS`). ``lookup_only``: only an existing job."""
    rates = tuple(float(r) for r in (CURVE_RATES if rates is None else rates))
    for r in rates:
        if not 0.0 <= r < 1.0:
            raise ConfigError(f"rates must be in [0, 1), got {r}")
    doms = _domains(domains)
    parts = ("curve", model_key(model_path), criterion, rates, int(n_images), doms, units, int(seed), tuple(cost_size))
    label = f"mIoU vs rate, {criterion} ({len(rates)} rates × {len(doms)} domains × {int(n_images)} scenes)"
    shipped = shipped_curves(model_path, criterion, dict(rates=list(rates), n_images=int(n_images), domains=list(doms),
                                                         units=units, seed=int(seed), cost_size=list(cost_size)))
    if shipped is not None:
        return jobs.preset(parts, shipped, label=label + " — precomputed")
    if lookup_only:
        return jobs.lookup(parts, jobs.FRAME_STORE, label)
    select_plan(model_path, criterion=criterion, rate=rates[0], units=units, seed=seed)  # bad settings fail here

    def compute(progress) -> pd.DataFrame:
        frames = []
        for i, r in enumerate(rates):
            plan = select_plan(model_path, criterion=criterion, rate=r, units=units, seed=seed)
            scores = masked_miou(model_path, plan, domains=doms, n_images=n_images)
            cost = plan_cost(model_path, plan, cost_size)
            frames.append(pd.DataFrame({
                "criterion": criterion, "rate": r, "domain": scores["domain"], "role": scores["role"],
                "averaged": scores["averaged"], "miou": scores["pruned_miou"], "dense_miou": scores["dense_miou"],
                "gflops": cost.gflops, "params": cost.params, "n_images": int(n_images)}))
            progress(i + 1, len(rates), pd.concat(frames, ignore_index=True)[CURVE_COLUMNS])
        return pd.concat(frames, ignore_index=True)[CURVE_COLUMNS]

    return jobs.submit(parts, compute, label=label, store=jobs.FRAME_STORE)


#: Curves shipped next to a zoo model (``npdg zoo curves``): every criterion's rows at the page's defaults.
SHIPPED_CURVES = "prune_curves.csv"


def curve_settings(rates: Sequence[float] | None = None, n_images: int = 2, domains: Sequence[str] | None = None,
                   units: str = "all", seed: int = 0, cost_size: tuple[int, int] = (512, 1024)) -> dict:
    """The settings a curve is computed with, as recorded next to shipped curves."""
    return dict(rates=[float(r) for r in (CURVE_RATES if rates is None else rates)], n_images=int(n_images),
                domains=list(_domains(domains)), units=units, seed=int(seed), cost_size=list(cost_size))


def shipped_curves(model_path: str | Path, criterion: str, settings: dict) -> pd.DataFrame | None:
    """The rows of ``criterion`` in the model folder's shipped :data:`SHIPPED_CURVES`, if its
    sidecar says they were computed with exactly ``settings`` (else None: compute them)."""
    import json

    from npdg.models.store import resolve_model_path

    folder = resolve_model_path(model_path).parent
    path, side = folder / SHIPPED_CURVES, (folder / SHIPPED_CURVES).with_suffix(".json")
    if not path.is_file() or not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
        if meta.get("settings") != settings or criterion not in meta.get("criteria", []):
            return None
        frame = pd.read_csv(path)
    except (OSError, ValueError):
        return None
    rows = frame[frame["criterion"] == criterion].reset_index(drop=True)
    return rows[CURVE_COLUMNS] if len(rows) and set(CURVE_COLUMNS) <= set(rows.columns) else None


def prunable_groups(model_path: str | Path, units: str = "all") -> pd.DataFrame:
    """The coupling groups (and attention layers) a plan can prune: ``gid, layer, kind, size``
    (``layer``: the group's root BN, or the attention module), in model order."""
    plan = select_plan(model_path, criterion="random", rate=0.0, units=units)
    return pd.DataFrame([{"gid": g.gid, "layer": g.root, "kind": g.kind, "size": g.size} for g in plan.groups],
                        columns=["gid", "layer", "kind", "size"])


def layer_curves_job(model_path: str | Path, criterion: str = "npdg", *, rates: Sequence[float] | None = None,
                     n_images: int = 2, domains: Sequence[str] | None = None, units: str = "all",
                     lookup_only: bool = False):
    """Per coupling group, source and held-out mIoU with only that group pruned at each of ``rates``
    (the rest of the model dense; soft masks), as a background job (columns
    :data:`LAYER_COLUMNS`): which layers a criterion can thin without hurting, and which it cannot.
    The rows so far are the job's partial result (one group at a time); the finished table is
    persisted in the dashboard cache."""
    rates = tuple(float(r) for r in (LAYER_RATES if rates is None else rates))
    doms = _domains(domains)
    parts = ("layers", model_key(model_path), criterion, rates, int(n_images), doms, units)
    label = f"per-layer curves, {criterion} ({len(rates)} rates × {int(n_images)} scenes per domain)"
    if lookup_only:
        return jobs.lookup(parts, jobs.FRAME_STORE, label)
    groups = prunable_groups(model_path, units)

    def compute(progress) -> pd.DataFrame:
        dense = masked_miou(model_path, None, domains=doms, n_images=n_images)
        d_src, d_held = _source_heldout(dense, "dense_miou")
        rows, total = [], len(groups) * len(rates)
        for gi, g in enumerate(groups.itertuples()):
            for r in rates:
                plan = select_plan(model_path, criterion=criterion, rate=r, units=units, only_group=int(g.gid))
                src, held = _source_heldout(masked_miou(model_path, plan, domains=doms, n_images=n_images), "pruned_miou")
                rows.append({"gid": int(g.gid), "layer": g.layer, "kind": g.kind, "size": int(g.size), "rate": r,
                             "pruned": sum(len(x.pruned) for x in plan.groups), "source": src, "heldout": held,
                             "dense_source": d_src, "dense_heldout": d_held, "n_images": int(n_images)})
            progress((gi + 1) * len(rates), total, pd.DataFrame(rows, columns=LAYER_COLUMNS))
        return pd.DataFrame(rows, columns=LAYER_COLUMNS)

    return jobs.submit(parts, compute, label=label, store=jobs.FRAME_STORE)


def job_frame(status) -> pd.DataFrame | None:
    """The finished table of a :func:`curve_job`, :func:`layer_curves_job` or :func:`what_if_job`
    (a copy), or None."""
    frame = None if status is None else jobs.result(status.key)
    return None if frame is None else frame.copy()


# ==================================================================================================
# export: the physically pruned model
# ==================================================================================================
EXPORT_FILES = ("model.safetensors", "pruning_plan.json", "cost.json")


def export_job(model_path: str | Path, *, criterion: str, rate: float, threshold: float | None = None,
               round_to: int = DEFAULT_ROUND_TO, max_layer_ratio: float = DEFAULT_MAX_LAYER_RATIO, seed: int = 0,
               units: str = "all", latency: bool = False, lookup_only: bool = False):
    """Physically prune the model as the page's settings say (``npdg.recipes.prune.prune_run``
    without sparse training or fine-tuning) into a run folder in the dashboard cache, with
    ``cost.json`` (GFLOPs and parameters; latency when ``latency``), as a background job. Read the
    folder with :func:`export_dir`; :func:`export_zip` packs it for a download, :func:`save_as_run`
    copies it to ``runs/``."""
    from npdg.recipes.modes import criterion as get_criterion
    if get_criterion(criterion).score == "scores":
        raise ConfigError(f"criterion {criterion!r} is a proxy ranked by a sensitivity table: export it with "
                          "npdg.pruning.selection.select(scores=...) in Python; the page exports npdg, slimming, "
                          "l1norm and random")
    parts = ("export", model_key(model_path), criterion, float(rate), None if threshold is None else float(threshold),
             int(round_to), float(max_layer_ratio), int(seed), units, bool(latency))
    key = jobs.job_key(parts)
    label = f"physical pruning ({criterion}, r = {float(rate):.2f})"
    if lookup_only:
        return jobs.lookup(parts, _EXPORT_STORE, label)

    def compute(progress):
        from npdg.config import PruneConfig
        from npdg.recipes.prune import prune_run

        out = jobs.cache_dir() / "exports" / key
        cfg = PruneConfig(criterion=criterion, rate=float(rate), threshold=threshold, round_to=int(round_to),
                          max_layer_ratio=float(max_layer_ratio), seed=int(seed), units=units, sparse_iters=0,
                          finetune_iters=0, cost_size=(512, 1024), cost_batches=(1,) if latency else (),
                          cost_repeats=3)
        with engine():
            prune_run(model_path, out, cfg, device=device_info().device, overwrite=out.exists(), log=lambda m: None)
        progress(1, 1)
        return out

    return jobs.submit(parts, compute, label=label, store=_EXPORT_STORE)


def _save_marker(folder: Path, path: Path) -> None:
    from npdg.runs import atomic_write_text

    atomic_write_text(str(folder) + "\n", path)


def _folder_store(name: str, files: tuple[str, ...]):
    """A job store whose result is a run folder: the index file holds its path, and a folder that
    lost any of ``files`` since counts as gone (the job is then run again)."""

    def load(path: Path) -> Path:
        folder = Path(path.read_text().strip())
        if not all((folder / f).is_file() for f in files):
            raise FileNotFoundError(f"the run {folder} is incomplete or gone")
        return folder

    return jobs.Store(name, ".path", _save_marker, load)


_EXPORT_STORE = _folder_store("exports-index", EXPORT_FILES)


def export_dir(status) -> Path | None:
    """The run folder of a finished :func:`export_job` (or :func:`finetune_job`), or None."""
    return None if status is None else jobs.result(status.key)


finetune_dir = export_dir


def export_zip(folder: str | Path) -> bytes:
    """``model.safetensors`` + ``pruning_plan.json`` + ``cost.json`` of an exported run, zipped."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in EXPORT_FILES:
            zf.write(Path(folder) / name, arcname=name)
    return buf.getvalue()


def _new_run(name: str, root: str | Path) -> Path:
    """``root/name`` for a new run: the name checked, an existing folder refused (nothing is overwritten)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name or ""):
        raise ConfigError(f"a run name is 1–64 letters, digits, '.', '_' or '-' (not starting with a dot), got {name!r}")
    dst = Path(root) / name
    if dst.exists():
        raise ConfigError(f"{dst} already exists: choose another name (nothing was overwritten)")
    return dst


def save_as_run(folder: str | Path, name: str, root: str | Path = "runs") -> Path:
    """Copy an exported run to ``root/name`` (a new folder; an existing one is refused, nothing is
    overwritten), so ``npdg eval`` / ``cost`` and the dashboard's model panel accept it."""
    import shutil

    dst = _new_run(name, root)
    tmp = Path(root) / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(folder, tmp)
    tmp.rename(dst)
    return dst


# ==================================================================================================
# fine-tuning: the prune recipe in a separate process
# ==================================================================================================
_PROGRESS = re.compile(rb"progress (\d+)/(\d+)")
_PROCESSES: dict[str, object] = {}


def finetune_command(model_path: str | Path, out: str | Path, *, criterion: str, rate: float,
                     threshold: float | None = None, round_to: int = DEFAULT_ROUND_TO,
                     max_layer_ratio: float = DEFAULT_MAX_LAYER_RATIO, seed: int = 0, units: str = "all",
                     iters: int = 200) -> list[str]:
    """The ``npdg prune`` command line that prunes ``model_path`` as the page's settings say (γ as
    they are: ``--sparse-iters 0``) and fine-tunes the result ``iters`` iterations into ``out``."""
    import sys

    if not 1 <= int(iters) <= 100_000:
        raise ConfigError(f"fine-tuning iterations must be in 1..100000, got {iters}")
    sel = ["--threshold", f"{float(threshold):g}", "--max-rate", f"{float(rate):g}"] if threshold is not None \
        else ["--rate", f"{float(rate):g}"]
    return [sys.executable, "-m", "npdg", "prune", "--run", str(model_path), "--out", str(out), "--criterion", criterion,
            *sel, "--round-to", str(int(round_to)), "--max-layer-ratio", f"{float(max_layer_ratio):g}", "--seed",
            str(int(seed)), "--units", units, "--sparse-iters", "0", "--finetune-iters", str(int(iters))]


def finetune_job(model_path: str | Path, name: str, *, iters: int = 200, threads: int = 1, root: str | Path = "runs",
                 lookup_only: bool = False, **settings):
    """Fine-tune the page's plan as a background job: :func:`finetune_command` in a **separate
    process** with ``threads`` CPU threads (``OMP_NUM_THREADS``), never inside the dashboard
    process, into the new run ``root/name``. Progress comes from the command's progress lines; the
    result is the run folder. :func:`stop_finetune` ends it (the folder is then incomplete and the
    job failed)."""
    import os

    if not 1 <= int(threads) <= max(1, os.cpu_count() or 1):
        raise ConfigError(f"threads must be in 1..{os.cpu_count()}, got {threads}")
    parts = ("finetune", model_key(model_path), str(Path(root) / name), int(iters), int(threads),
             tuple(sorted(settings.items())))
    label = f"fine-tuning {name} ({int(iters)} iterations, {int(threads)} thread{'s' if int(threads) > 1 else ''})"
    if lookup_only:
        return jobs.lookup(parts, _FINETUNE_STORE, label)
    out = _new_run(name, root)
    cmd = finetune_command(model_path, out, iters=iters, **settings)
    key = jobs.job_key(parts)

    def compute(progress) -> Path:
        import subprocess

        env = {**os.environ, "OMP_NUM_THREADS": str(int(threads)), "MKL_NUM_THREADS": str(int(threads)),
               "NPDG_PROGRESS": "lines"}  # npdg.cli.common.PROGRESS_ENV: one "progress DONE/TOTAL" line per step
        log_path = jobs.cache_dir() / "finetune" / f"{key}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                    cwd=Path(__file__).resolve().parents[2])
            _PROCESSES[key] = proc
            try:
                for chunk in iter(lambda: proc.stdout.read1(4096), b""):
                    log.write(chunk)
                    log.flush()
                    found = _PROGRESS.findall(chunk)
                    if found:
                        done, total = (int(v) for v in found[-1])
                        progress(min(done, total), max(total, 1))
                rc = proc.wait()
            finally:
                _PROCESSES.pop(key, None)
        if rc != 0:
            tail = log_path.read_bytes().decode("utf-8", "replace").replace("\r", "\n").strip().splitlines()[-3:]
            raise RuntimeError(f"npdg prune exited with {rc}: " + " / ".join(tail) + f" (log: {log_path})")
        return out

    return jobs.submit(parts, compute, label=label, store=_FINETUNE_STORE)


def stop_finetune(status) -> bool:
    """End a running :func:`finetune_job`'s process; True if there was one."""
    proc = None if status is None else _PROCESSES.get(status.key)
    if proc is None:
        return False
    proc.terminate()
    return True


_FINETUNE_STORE = _folder_store("finetune-index", ("model.safetensors",))


__all__ = ["CURVE_COLUMNS", "CURVE_RATES", "DEFAULT_SIZE", "DROP_CHOICES", "EXPORT_FILES", "LAYER_COLUMNS",
           "LAYER_RATES", "PAGE_CRITERIA", "SHIPPED_CURVES", "SHIPPED_N_IMAGES", "SHIPPED_WHAT_IF", "SLIDER_RATES",
           "build_what_if_table", "model_digest", "page_plans", "shipped_what_if", "what_if_context", "CurvePair", "MaskedPrediction", "ModelFacts", "confusions", "criteria",
           "curve_job", "curve_pairs", "curve_settings", "export_dir", "export_job", "export_zip", "finetune_command",
           "finetune_dir", "finetune_job", "job_frame", "stop_finetune",
           "PRECISIONS", "amp_of", "precision_used", "layer_curves_job", "masked_miou", "masked_predictions", "model_facts", "plan_cost", "plan_table",
           "prunable_groups", "save_as_run", "scene_set", "select_plan", "shipped_curves", "soft_logits", "what_if_job",
           "what_if_ready"]
