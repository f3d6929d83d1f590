"""Compare page service: models side by side on named synthetic domains (docs/method.md §6, §7).

* :func:`evaluate_model` — one model on a set of domains (``npdg.data.specs.open_named`` +
  ``npdg.evaluate.evaluate``): per-domain and per-class scores, the held-out mean;
* :func:`compare_models` — several models stacked into one tidy frame;
* :func:`scene_predictions` — one scene in each domain with the model's prediction and its error
  map (TP / FP / FN, :func:`npdg.explain.error_map`);
* :class:`ModelRef` — what the Compare page compares: a model file, optionally with a pruning plan
  applied as soft masks (the Prune page's plan), and for it :func:`ref_scene_predictions` (one
  scene in every domain, all domains in one batch), :func:`ref_predict_images` (your own images,
  no label) and :func:`ref_scores` (mIoU and per-class IoU per domain on the first N val scenes);
* :func:`grid_rows` — the Compare grid, two pictures per domain (image | ground truth | A | B and
  errors A | errors B), blended in one vectorized pass and cached by every setting, so a toggle
  that returns to a value costs nothing and a new one ships 16 pictures instead of 48 (each under
  Streamlit's 1460-px limit, above which it would decode, resize and re-encode every picture).

Scores are cached by model file version and every setting; frames are new copies on each call.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from npdg.explain import ErrorMap, error_map, error_overlay
from npdg.service import engine, engine_device, lru, model_key, readonly, shared_model
from npdg.service.data import DOMAIN_NAMES, DOMAIN_ROLES

ProgressFn = Callable[[int, int], None]
DEFAULT_SIZE: tuple[int, int] = (128, 256)
_EVALS = lru(32)
DOMAIN_COLUMNS = ["domain", "role", "averaged", "miou", "pixel_acc", "num_images"]


@dataclass(frozen=True)
class ModelScores:
    """One model's scores: ``domains`` (columns :data:`DOMAIN_COLUMNS`), ``per_class`` (``domain,
    class, iou``), the averaged ``targets`` and their ``mean_target_miou``. The frames are the
    caller's own copies."""

    model: str
    domains: pd.DataFrame
    per_class: pd.DataFrame
    targets: tuple[str, ...]
    mean_target_miou: float
    protocol: str


def evaluate_model(
    model_path: str | Path,
    *,
    domains: Sequence[str] = DOMAIN_NAMES,
    split: str = "val",
    n_images: int = 8,
    size: tuple[int, int] = DEFAULT_SIZE,
    protocol: str = "robustnet",
    progress: ProgressFn | None = None,
) -> ModelScores:
    """mIoU and pixel accuracy of the model at ``model_path`` on the first ``n_images`` scenes of
    ``split`` in each of ``domains``; the held-out mean leaves out the source and ``suburb``."""
    doms = tuple(domains)
    key = (model_key(model_path), doms, split, int(n_images), tuple(size), protocol)

    def compute():
        from npdg.data.specs import open_named
        from npdg.evaluate import evaluate

        datasets, source = open_named(list(doms), split, tuple(size))
        with engine():
            result = evaluate(shared_model(model_path), datasets, protocol, limit=int(n_images),
                              device=engine_device(), channels_last=False, source=source, progress=progress)
        table = result.table()
        table.insert(1, "averaged", table["domain"].isin(result.targets))
        table["role"] = [DOMAIN_ROLES.get(d, "real") for d in table["domain"]]
        return table[DOMAIN_COLUMNS], result.per_class_frame(), tuple(result.targets), float(result.mean_target_miou)

    table, per_class, targets, mean = _EVALS.get(key, compute)
    return ModelScores(str(model_path), table.copy(), per_class.copy(), targets, mean, protocol)


def compare_models(
    models: Mapping[str, str | Path] | Sequence[str | Path],
    **kwargs,
) -> pd.DataFrame:
    """Several models (label → path, or paths labelled by themselves) evaluated with the same
    settings (the keyword arguments of :func:`evaluate_model`): columns ``model`` + :data:`DOMAIN_COLUMNS`."""
    items = models.items() if isinstance(models, Mapping) else [(str(p), p) for p in models]
    frames = []
    for label, path in items:
        scores = evaluate_model(path, **kwargs)
        frames.append(scores.domains.assign(model=str(label)))
    if not frames:
        return pd.DataFrame(columns=["model", *DOMAIN_COLUMNS])
    return pd.concat(frames, ignore_index=True)[["model", *DOMAIN_COLUMNS]]


@dataclass(frozen=True)
class ScenePrediction:
    """One scene in one domain with the model's prediction (read-only arrays) and its error map."""

    domain: str
    role: str
    split: str
    index: int
    image: np.ndarray  # uint8 [H, W, 3]
    label: np.ndarray  # uint8 [H, W]
    pred: np.ndarray  # uint8 [H, W]
    error: ErrorMap

    @functools.cached_property
    def miou(self) -> float:
        """mIoU of this one scene (classes present in label or prediction); for display only — the
        page's dataset scores come from one confusion matrix per domain."""
        iou = self.error.table()["iou"].to_numpy()
        iou = iou[np.isfinite(iou)]
        return float(iou.mean()) if iou.size else math.nan


# ==================================================================================================
# model references: a model, or a model with a plan soft-masked (the Prune page's)
# ==================================================================================================
@dataclass(frozen=True)
class ModelRef:
    """A model to compare: ``path`` (file or folder) and an optional soft-masked ``plan``."""

    path: Path
    plan: object = None  # npdg.pruning.selection.PruningPlan | None
    label: str = ""

    def key(self) -> tuple:
        from npdg.pruning.cost import plan_hash

        return (model_key(self.path), plan_hash(self.plan))


_REF_PRED = lru(64)
_REF_SCORES = lru(32)


def ref_predict_images(ref: ModelRef, images: np.ndarray) -> np.ndarray:
    """Predicted train ids (uint8 ``[N, H, W]``, read-only) of ``ref`` on uint8 images ``[N, H, W, 3]``."""
    from npdg.service import array_key, check_images, image_batch
    from npdg.service.pruning import soft_logits

    arr = check_images(images)

    def compute() -> np.ndarray:
        import torch

        x = image_batch(arr)
        with engine():
            model = shared_model(ref.path)
            x = x.to(engine_device()).contiguous(memory_format=torch.channels_last)
            pred = soft_logits(model, ref.plan, x).argmax(1).to("cpu").numpy().astype(np.uint8)
        return readonly(pred)

    return _REF_PRED.get(("images", ref.key(), array_key(arr)), compute)


def ref_scene_predictions(ref: ModelRef, *, split: str = "val", index: int = 0, domains: Sequence[str] | None = None,
                          size: tuple[int, int] = DEFAULT_SIZE, class_id: int | None = None) -> tuple[ScenePrediction, ...]:
    """Scene ``(split, index)`` in each of ``domains`` predicted by ``ref`` (one batch for all
    domains), with the TP / FP / FN map for ``class_id`` (or right vs wrong); cached."""
    from npdg.service.data import scene_views

    doms = tuple(DOMAIN_NAMES if domains is None else domains)

    def compute() -> tuple[ScenePrediction, ...]:
        views = scene_views(split, int(index), doms, tuple(size))
        preds = ref_predict_images(ref, np.stack([v.image for v in views]))
        return tuple(ScenePrediction(v.domain, v.role, split, int(index), v.image, v.label, pred,
                                     error_map(pred, v.label, class_id)) for v, pred in zip(views, preds))

    key = ("scene", ref.key(), split, int(index), doms, tuple(size), None if class_id is None else int(class_id))
    return _REF_PRED.get(key, compute)


def upload_prediction(ref: ModelRef, image: np.ndarray, label: np.ndarray | None = None,
                      class_id: int | None = None, name: str = "your image") -> ScenePrediction:
    """Your image (uint8 ``[H, W, 3]`` at its working size) predicted by ``ref``; with ``label``
    (train ids, any size) the label is brought to the image's size nearest-neighbour and the error
    map is drawn against it. Without one the label is all ignore (no errors, no metric)."""
    from npdg.service.uploads import fit_label

    pred = ref_predict_images(ref, np.asarray(image)[None])[0]
    h, w = pred.shape
    lab = np.full((h, w), 255, np.uint8) if label is None else fit_label(label, (h, w))
    return ScenePrediction(name, "upload", "upload", 0, readonly(np.array(image)), readonly(lab), pred,
                           error_map(pred, lab, class_id))


#: Tiles of the two :func:`grid_row` pictures, left to right.
GRID_PARTS: tuple[tuple[str, ...], ...] = (("image", "ground truth", "A", "B"), ("errors A", "errors B"))
GRID_COLUMNS: tuple[str, ...] = tuple(t for part in GRID_PARTS for t in part)
_GRID = lru(256)


def _blend(image: np.ndarray, colours: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``image`` [H, W, 3] under ``colours`` [K, H, W, 3] with per-pixel ``alpha`` [K, H, W] → uint8 [K, H, W, 3]."""
    a = alpha[..., None].astype(np.float32)
    return (image[None].astype(np.float32) * (1.0 - a) + colours.astype(np.float32) * a + 0.5).astype(np.uint8)


def _side_by_side(tiles: Sequence[np.ndarray], gap: int) -> np.ndarray:
    spacer = np.full((tiles[0].shape[0], int(gap), 3), 255, dtype=np.uint8)
    parts = [t if i == 0 else np.concatenate([spacer, t], axis=1) for i, t in enumerate(tiles)]
    return readonly(np.concatenate(parts, axis=1))


def grid_row(pa: ScenePrediction, pb: ScenePrediction, opacity: float, classes: Sequence[int] | None = None,
             gap: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """One domain of the Compare grid as two pictures (:data:`GRID_PARTS`, tiles ``gap`` white
    pixels apart): the same pixels as :func:`npdg.viz.overlay` and :func:`npdg.explain.error_overlay`."""
    from npdg.explain import error_colors
    from npdg.labels import IGNORE, PALETTE

    op = float(np.clip(opacity, 0.0, 1.0))
    keep = np.zeros(256, dtype=bool)
    keep[list(range(256)) if classes is None else [c for c in classes if 0 <= c < 256]] = True
    keep[IGNORE] = False
    lab = np.clip(np.stack([pa.label, pa.pred, pb.pred]).astype(np.int64), 0, 255)
    shown = _blend(pa.image, PALETTE[lab], op * keep[lab])
    errs = [p.error for p in (pa, pb)]
    errors = _blend(pa.image, np.stack([error_colors(e) for e in errs]), np.stack([op * (e.tp | e.fp | e.fn) for e in errs]))
    return _side_by_side([pa.image, *shown], gap), _side_by_side(list(errors), gap)


def grid_rows(ref_a: ModelRef, ref_b: ModelRef, *, split: str = "val", index: int = 0,
              domains: Sequence[str] | None = None, size: tuple[int, int] = DEFAULT_SIZE,
              class_id: int | None = None, opacity: float = 0.6, classes: Sequence[int] | None = None,
              gap: int = 4) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """:func:`grid_row` for every domain of scene ``(split, index)``, A = ``ref_a``, B = ``ref_b``
    (read-only; cached by both models, the scene, the class, the opacity and the shown classes)."""
    doms = tuple(DOMAIN_NAMES if domains is None else domains)
    cls = None if classes is None else tuple(sorted({int(c) for c in classes}))
    kw = dict(split=split, index=int(index), domains=doms, size=tuple(size), class_id=class_id)

    def compute() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        pairs = zip(ref_scene_predictions(ref_a, **kw), ref_scene_predictions(ref_b, **kw))
        return tuple(grid_row(pa, pb, opacity, cls, gap) for pa, pb in pairs)

    key = (ref_a.key(), ref_b.key(), *kw.values(), round(float(opacity), 4), cls, int(gap))
    return _GRID.get(key, compute)


def scene_predictions(model_path: str | Path, *, split: str = "val", index: int = 0,
                      domains: Sequence[str] | None = None, size: tuple[int, int] = DEFAULT_SIZE,
                      class_id: int | None = None) -> tuple[ScenePrediction, ...]:
    """Scene ``(split, index)`` in each of ``domains`` with the model's prediction and the TP / FP /
    FN map (for ``class_id``, or right vs wrong over all classes): :func:`ref_scene_predictions` of
    the plain model."""
    return ref_scene_predictions(ModelRef(Path(model_path)), split=split, index=index, domains=domains, size=size,
                                 class_id=class_id)


def ref_scores(ref: ModelRef, *, domains: Sequence[str] | None = None, split: str = "val", n_images: int = 4,
               size: tuple[int, int] = DEFAULT_SIZE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per domain ``domain, role, averaged, miou``; per domain and class ``domain, class, train_id,
    iou``) of ``ref`` on the first ``n_images`` scenes of ``split`` — one confusion matrix per
    domain, the Prune page's batched scene set. New frames on each call."""
    from npdg.data.specs import is_averaged
    from npdg.evaluate import class_names, domain_result
    from npdg.service.pruning import confusions

    doms = tuple(DOMAIN_NAMES if domains is None else domains)

    def compute():
        with engine():
            cms = confusions(shared_model(ref.path), ref.plan, doms, split, int(n_images), tuple(size), None)
        source = next((d for d in doms if DOMAIN_ROLES.get(d) == "source"), None)
        rows, cls = [], []
        for d, cm in cms.items():
            r = domain_result(d, cm, int(n_images))
            rows.append({"domain": d, "role": DOMAIN_ROLES.get(d, "real"), "averaged": is_averaged(d, source),
                         "miou": r.miou})
            for i, name in enumerate(class_names(cm.num_classes)):
                cls.append({"domain": d, "class": name, "train_id": i, "iou": r.per_class_iou[name]})
        return pd.DataFrame(rows), pd.DataFrame(cls)

    table, per_class = _REF_SCORES.get(("scores", ref.key(), doms, split, int(n_images), tuple(size)), compute)
    return table.copy(), per_class.copy()


__all__ = ["DEFAULT_SIZE", "DOMAIN_COLUMNS", "GRID_COLUMNS", "GRID_PARTS", "ErrorMap", "ModelRef", "grid_row", "grid_rows", "upload_prediction", "error_map", "error_overlay", "ModelScores", "ScenePrediction", "compare_models",
           "evaluate_model", "ref_predict_images", "ref_scene_predictions", "ref_scores", "scene_predictions"]
