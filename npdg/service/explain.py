"""Explain page service: what the units of one layer respond to, across domains.

* :func:`unit_layers` — the model's unit layers (the ones the sensitivity probe and pruning use);
* :func:`activation_atlas` — per scene, domain and unit: the spatial maximum activation and where it
  is (:func:`npdg.explain.activation_atlas`), on a small fixed set of scenes rendered in several
  domains, so a unit that fires only on one look stands out;
* :func:`unit_profile` — one unit's mean maximum activation per domain, from an atlas;
* :func:`unit_view` — one unit's activation map on one scene in every domain, on one colour scale;
* :func:`atlas_job` — the atlas as a background job (:mod:`npdg.service.jobs`), persisted in the
  dashboard cache and shared between sessions; :func:`top_patches` crops each domain's
  top-activating image regions of a unit from it (the Unit page's "what makes it fire");
* :class:`Target`, :func:`pixel_attribution` / :func:`pixel_job` and :func:`unit_table` — the
  Explain page: captum's attribution of a class in a region (a class, its false positives or false
  negatives, a box) to pixels and to the units of one layer, dense or with a plan soft-masked
  (:mod:`npdg.attribution`).

Cached by model file version, layer and every setting; frames are new copies on each call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from npdg.errors import ConfigError
from npdg.service import check_images, engine, engine_device, image_batch, jobs, lru, model_key, readonly, shared_model
from npdg.service.data import DEFAULT_DOMAINS, DOMAIN_NAMES, scene_batch, scene_views

ProgressFn = Callable[[int, int], None]
DEFAULT_SIZE: tuple[int, int] = (128, 256)
_LAYERS = lru(8)
_ATLASES = lru(32)
_VIEWS = lru(32)
#: Scenes per domain in the Unit page's atlas (val 0 … N−1).
ATLAS_SCENES = 8


def unit_layers(model_path: str | Path) -> pd.DataFrame:
    """The model's unit layers in model order: ``layer, kind, size`` (BN filters, attention heads)."""

    def compute() -> pd.DataFrame:
        from npdg.sensitivity import probe_layers

        with engine():
            layers = probe_layers(shared_model(model_path))
        return pd.DataFrame([{"layer": u.name, "kind": u.kind, "size": u.size} for u in layers],
                            columns=["layer", "kind", "size"])

    return _LAYERS.get(model_key(model_path), compute).copy()


def activation_atlas(
    model_path: str | Path,
    layer: str,
    *,
    domains: Sequence[str] = DEFAULT_DOMAINS,
    indices: Sequence[int] = tuple(range(4)),
    split: str = "val",
    size: tuple[int, int] = DEFAULT_SIZE,
    progress: ProgressFn | None = None,
) -> pd.DataFrame:
    """The activation atlas of ``layer`` on scenes ``indices`` of ``split`` in each of ``domains``:
    the columns of :data:`npdg.explain.ATLAS_COLUMNS` plus ``scene`` (the scene index; ``image``
    counts rows of the batch)."""
    doms, idx = tuple(domains), tuple(int(i) for i in indices)
    key = (model_key(model_path), layer, doms, idx, split, tuple(size))

    def compute() -> pd.DataFrame:
        import torch

        from npdg.explain import activation_atlas as atlas

        batches = [scene_batch(d, split, idx, tuple(size))[0] for d in doms]
        images = torch.cat(batches)
        names = [d for d in doms for _ in idx]
        with engine():
            table = atlas(shared_model(model_path), images.to(engine_device()), layer, domains=names,
                          progress=progress)
        table.insert(1, "scene", [idx[i % len(idx)] for i in table["image"]])
        return table

    return _ATLASES.get(key, compute).copy()


def unit_profile(atlas: pd.DataFrame, unit: int) -> pd.DataFrame:
    """One unit's maximum activation per domain: ``domain, mean_max, min_max, max_max, scenes``."""
    rows = atlas[atlas["unit"] == int(unit)]
    g = rows.groupby("domain", sort=False)["max"]
    return pd.DataFrame({"mean_max": g.mean(), "min_max": g.min(), "max_max": g.max(), "scenes": g.size()}).reset_index()


@dataclass(frozen=True)
class UnitView:
    """One unit on one scene in several domains: the rendered images (uint8 ``[D, H, W, 3]``), the
    unit's activation maps (float32 ``[D, h, w]``, :func:`npdg.explain.unit_maps`) and the shared
    colour range ``vmin … vmax`` over all of them; arrays read-only."""

    layer: str
    unit: int
    kind: str
    scene: int
    split: str
    domains: tuple[str, ...]
    images: np.ndarray
    maps: np.ndarray
    vmin: float
    vmax: float

    @property
    def peaks(self) -> np.ndarray:
        """The map's maximum per domain (the atlas ``max`` of this scene)."""
        return self.maps.reshape(len(self.domains), -1).max(axis=1)


def _unit_size(model_path: str | Path, layer: str) -> tuple[str, int]:
    layers = unit_layers(model_path)
    row = layers[layers["layer"] == layer]
    if row.empty:
        some = ", ".join(layers["layer"].head(3))
        raise ConfigError(f"{layer!r} is not a unit layer of this model (e.g. {some}, ... {len(layers)} in all)")
    return str(row["kind"].iloc[0]), int(row["size"].iloc[0])


def unit_view(
    model_path: str | Path,
    layer: str,
    unit: int,
    *,
    scene: int = 0,
    domains: Sequence[str] = DOMAIN_NAMES,
    split: str = "val",
    size: tuple[int, int] = DEFAULT_SIZE,
) -> UnitView:
    """Unit ``unit`` of ``layer`` on scene ``scene`` rendered in each of ``domains`` (one forward of
    ``len(domains)`` images; cached by every setting)."""
    kind, n_units = _unit_size(model_path, layer)
    if not 0 <= int(unit) < n_units:
        raise ConfigError(f"unit {unit} is out of range: {layer!r} has units 0 … {n_units - 1}")
    doms = tuple(domains)
    key = (model_key(model_path), layer, int(unit), int(scene), doms, split, tuple(size))

    def compute() -> UnitView:
        from npdg.explain import unit_maps

        views = scene_views(split, int(scene), doms, tuple(size))
        images = np.stack([v.image for v in views])
        x = image_batch(images)
        with engine():
            maps = unit_maps(shared_model(model_path), x.to(engine_device()), layer, int(unit))
        return UnitView(layer, int(unit), kind, int(scene), split, doms, readonly(images), readonly(maps),
                        float(maps.min()), float(maps.max()))

    return _VIEWS.get(key, compute)


def image_unit_map(model_path: str | Path, layer: str, unit: int, image: np.ndarray) -> np.ndarray:
    """Unit ``unit`` of ``layer`` on one image of your own (uint8 ``[H, W, 3]``): its activation map
    (float32 ``[h, w]`` on the layer's grid, read-only; the same tap as :func:`unit_view`), cached."""
    from npdg.service import array_key

    kind, n_units = _unit_size(model_path, layer)
    if not 0 <= int(unit) < n_units:
        raise ConfigError(f"unit {unit} is out of range: {layer!r} has units 0 … {n_units - 1}")
    arr = check_images(image, "image")[0]

    def compute() -> np.ndarray:
        from npdg.explain import unit_maps

        with engine():
            return readonly(unit_maps(shared_model(model_path), image_batch(arr).to(engine_device()), layer, int(unit))[0])

    return _VIEWS.get(("image", model_key(model_path), layer, int(unit), array_key(arr)), compute)


def atlas_job(
    model_path: str | Path,
    layer: str,
    *,
    domains: Sequence[str] = DOMAIN_NAMES,
    scenes: int = ATLAS_SCENES,
    split: str = "val",
    size: tuple[int, int] = DEFAULT_SIZE,
) -> jobs.JobStatus:
    """:func:`activation_atlas` of ``layer`` on val scenes ``0 … scenes−1`` in each of ``domains``,
    as a background job: started once for all sessions, persisted in the dashboard cache
    (:func:`npdg.service.jobs.cache_dir`), read back with :func:`atlas_result`."""
    _unit_size(model_path, layer)  # a clear error now, not in the worker
    if not 1 <= int(scenes) <= 64:
        raise ConfigError(f"scenes must be in 1 … 64, got {scenes}")
    doms, idx = tuple(domains), tuple(range(int(scenes)))
    parts = ("atlas", model_key(model_path), layer, doms, idx, split, tuple(size))
    return jobs.submit(
        parts,
        lambda progress: activation_atlas(model_path, layer, domains=doms, indices=idx, split=split, size=size,
                                          progress=progress),
        label=f"activation atlas of {layer} ({len(idx)} scenes × {len(doms)} domains)", store=jobs.FRAME_STORE,
    )


def atlas_result(status: jobs.JobStatus) -> pd.DataFrame | None:
    """The finished atlas of an :func:`atlas_job` (a new copy), or None while it runs or failed."""
    frame = jobs.result(status.key)
    return None if frame is None else frame.copy()


@dataclass(frozen=True)
class Patch:
    """A top-activating region of a unit: where (domain, scene, box ``y0, x0, y1, x1`` in pixels),
    how strongly (``value``, the unit's spatial maximum on that image) and the crop (uint8, read-only)."""

    domain: str
    scene: int
    value: float
    box: tuple[int, int, int, int]
    crop: np.ndarray


def patch_size(image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> int:
    """Side of a patch around a maximum: three cells of the layer's grid (its stride), 24 px at least,
    never more than the image's shorter side."""
    stride = max(image_hw[0] / max(grid_hw[0], 1), image_hw[1] / max(grid_hw[1], 1))
    return int(min(min(image_hw), max(24, round(3 * stride))))


def top_patches(atlas: pd.DataFrame, unit: int, *, k: int = 4, split: str = "val",
                size: tuple[int, int] = DEFAULT_SIZE) -> list[Patch]:
    """Per domain (atlas order), the ``k`` images of the atlas where ``unit`` fires most, each cropped
    to a square around its maximum (:func:`patch_size`)."""
    rows = atlas[atlas["unit"] == int(unit)]
    if rows.empty:
        raise ConfigError(f"unit {unit} is not in this atlas")
    out: list[Patch] = []
    h, w = tuple(size)
    for domain, g in rows.groupby("domain", sort=False):
        for r in g.nlargest(int(k), "max").itertuples():
            side = patch_size((h, w), (int(r.height), int(r.width)))
            y0 = int(np.clip(round(r.image_y - side / 2), 0, h - side))
            x0 = int(np.clip(round(r.image_x - side / 2), 0, w - side))
            image = scene_views(split, int(r.scene), (str(domain),), (h, w))[0].image
            crop = readonly(np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side]))
            out.append(Patch(str(domain), int(r.scene), float(r.max), (y0, x0, y0 + side, x0 + side), crop))
    return out


__all__ = ["ATLAS_SCENES", "DEFAULT_SIZE", "Patch", "UnitView", "activation_atlas", "atlas_job", "atlas_result",
           "patch_size", "top_patches", "unit_layers", "unit_profile", "unit_view"]


# ==================================================================================================
# attribution: why does a model predict what it predicts in a region (docs/method.md §8)
# ==================================================================================================
#: What an explanation target can be: the region whose class-c logit is attributed.
TARGET_KINDS: dict[str, str] = {
    "class": "pixels the model predicts as the class",
    "fp": "false positives of the class: predicted as it, labelled otherwise",
    "fn": "false negatives of the class: labelled as it, predicted otherwise",
    "box": "a box drawn on the image (the class's logit inside it)",
}


class RegionError(ConfigError):
    """The target's region cannot be formed on this prediction (empty, no label, no box)."""


@dataclass(frozen=True)
class Target:
    """An explanation target: ``kind`` (:data:`TARGET_KINDS`), the class, and for ``box`` the pixel
    box ``(x0, y0, x1, y1)`` (x1, y1 exclusive)."""

    kind: str
    class_id: int
    box: tuple[int, int, int, int] | None = None

    def mask(self, pred: np.ndarray, label: np.ndarray | None) -> np.ndarray:
        """The region (bool ``[H, W]``) on this prediction and label; ConfigError with the reason
        when it cannot be formed (no label for FP/FN, an empty region, a box outside the image)."""
        from npdg.labels import IGNORE, NUM_CLASSES

        if self.kind not in TARGET_KINDS:
            raise ConfigError(f"target must be one of {', '.join(TARGET_KINDS)}, got {self.kind!r}")
        if not 0 <= int(self.class_id) < NUM_CLASSES:
            raise ConfigError(f"class must be in 0..{NUM_CLASSES - 1}, got {self.class_id}")
        c = int(self.class_id)
        if self.kind == "class":
            region = pred == c
        elif self.kind == "box":
            h, w = pred.shape
            if self.box is None:
                raise RegionError("draw a box on the image first (box select)")
            x0, y0, x1, y1 = (int(v) for v in self.box)
            x0, x1, y0, y1 = max(0, x0), min(w, x1), max(0, y0), min(h, y1)
            if x1 <= x0 or y1 <= y0:
                raise RegionError(f"the box {self.box} does not overlap the {w}×{h} image")
            region = np.zeros_like(pred, dtype=bool)
            region[y0:y1, x0:x1] = True
        else:
            if label is None:
                raise RegionError("false positives and negatives need a label: use a synthetic scene or upload one")
            valid = label != IGNORE
            region = ((pred == c) & (label != c) & valid) if self.kind == "fp" else ((label == c) & (pred != c))
        if not region.any():
            what = {"class": "the model predicts no pixel as", "fp": "there is no false positive of",
                    "fn": "there is no false negative of", "box": "the box holds nothing of"}[self.kind]
            raise RegionError(f"{what} this class here: pick another class, target or scene")
        return region


@dataclass(frozen=True)
class PixelAttribution:
    """One pixel attribution: the map (float32 ``[H, W]``, read-only), the region it explains, the
    prediction it was made on, and how long it took."""

    method: str
    attribution: np.ndarray
    region: np.ndarray
    pred: np.ndarray
    seconds: float


_PIXELS = lru(64)
_UNITS = lru(64)


def _key(ref, image: np.ndarray, label: np.ndarray | None, target: Target) -> tuple:
    from npdg.service import array_key

    return (ref.key(), array_key(np.asarray(image)), None if label is None else array_key(np.asarray(label)), target)


def region(ref, image: np.ndarray, label: np.ndarray | None, target: Target) -> np.ndarray:
    """The region ``target`` selects on ``ref``'s prediction of ``image`` (bool ``[H, W]``);
    :class:`RegionError` when it is empty or cannot be formed."""
    from npdg.service.compare import ref_predict_images

    return target.mask(ref_predict_images(ref, np.asarray(image)[None])[0], label)


def pixel_attribution(ref, image: np.ndarray, label: np.ndarray | None, target: Target, method: str,
                      params: dict | None = None, layer: str | None = None,
                      progress: ProgressFn | None = None) -> PixelAttribution:
    """Attribution of ``target`` on ``image`` by the model of ``ref`` (a
    :class:`npdg.service.compare.ModelRef`; a plan is soft-masked), with captum's ``method``
    (:data:`npdg.attribution.METHODS`; parameters validated); cached by every input."""
    import time

    from npdg import attribution
    from npdg.service.compare import ref_predict_images

    spec = attribution.method(method)
    checked = spec.check(params)
    key = ("pixels", *_key(ref, image, label, target), method, tuple(sorted(checked.items())),
           layer if spec.needs_layer else None)

    def compute() -> PixelAttribution:
        pred = ref_predict_images(ref, np.asarray(image)[None])[0]
        region = target.mask(pred, label)
        x = image_batch(image)
        t0 = time.perf_counter()
        with engine():
            model = shared_model(ref.path)
            att = attribution.pixel_attribution(model, x.to(engine_device()), target.class_id, region, method, checked,
                                                plan=ref.plan, layer=layer, pred=pred, progress=progress)
        return PixelAttribution(method, readonly(att), readonly(region), pred, time.perf_counter() - t0)

    return _PIXELS.get(key, compute)


def pixel_job(ref, image: np.ndarray, label: np.ndarray | None, target: Target, method: str,
              params: dict | None = None, layer: str | None = None, lookup_only: bool = False):
    """:func:`pixel_attribution` as a background job with progress (the slow methods: IG, Noise
    Tunnel, feature ablation); held in memory, not persisted."""
    from npdg import attribution

    checked = attribution.method(method).check(params)
    parts = ("attribution", *_key(ref, image, label, target), method, tuple(sorted(checked.items())), layer)
    label_text = f"{attribution.METHODS[method].label} of {ref.label or ref.path.name}"
    if lookup_only:
        return jobs.lookup(parts, None, label_text)
    return jobs.submit(parts, lambda progress: pixel_attribution(ref, image, label, target, method, checked, layer,
                                                                  progress), label=label_text)


#: Columns of :func:`unit_table`.
UNIT_COLUMNS = ["layer", "unit", "kind", "contribution", "share", "combined", "unary", "binary", "pruned"]


def unit_table(ref, image: np.ndarray, label: np.ndarray | None, target: Target, layer: str,
               sensitivity=None) -> pd.DataFrame:
    """The target broken down onto the units of ``layer`` (:func:`npdg.attribution.unit_contributions`:
    gradient × activation, the first-order fall of the target when the unit is masked), with each
    unit's style sensitivity from ``sensitivity`` (a :class:`~npdg.sensitivity.SensitivityResult`,
    NaN without one) and whether ``ref``'s plan prunes it; ``share`` = contribution / Σ|contribution|."""
    from npdg import attribution
    from npdg.service.compare import ref_predict_images

    key = ("units", *_key(ref, image, label, target), layer)

    def compute() -> np.ndarray:
        pred = ref_predict_images(ref, np.asarray(image)[None])[0]
        region = target.mask(pred, label)
        with engine():
            model = shared_model(ref.path)
            return attribution.unit_contributions(model, image_batch(image).to(engine_device()), target.class_id, region,
                                                  layer, plan=ref.plan)

    contrib = _UNITS.get(key, compute)
    n = len(contrib)
    frame = pd.DataFrame({"layer": layer, "unit": np.arange(n), "contribution": contrib})
    total = float(np.abs(contrib).sum())
    frame["share"] = contrib / total if total > 0 else 0.0
    kinds = unit_layers(ref.path).set_index("layer")["kind"]
    frame["kind"] = kinds.get(layer, "filter")
    for col in ("combined", "unary", "binary"):
        frame[col] = np.nan
    if sensitivity is not None:
        t = sensitivity.table
        rows = t[t["layer"].astype(str) == layer].set_index("unit")
        if len(rows) == n:
            for col in ("combined", "unary", "binary"):
                frame[col] = rows[col].reindex(frame["unit"]).to_numpy()
    pruned = set()
    if ref.plan is not None:
        try:
            pruned = set(ref.plan.layer(layer).pruned)
        except KeyError:
            pruned = set()
    frame["pruned"] = frame["unit"].isin(pruned)
    return frame[UNIT_COLUMNS]


def attribution_overlay(image: np.ndarray, attribution: np.ndarray, region: np.ndarray | None = None,
                        opacity: float = 0.7, scale: float | None = None) -> np.ndarray:
    """``attribution`` blended over ``image``: positive (supports the target) red, negative blue,
    |a| / ``scale`` as the blend weight (``scale``: the 99th percentile of |a| when None, so one
    hot pixel does not wash out the rest; pass a shared scale to compare A and B), the region's
    outline in yellow. uint8 ``[H, W, 3]``."""
    img = np.asarray(image, dtype=np.float32)
    a = np.asarray(attribution, dtype=np.float32)
    if a.shape != img.shape[:2]:
        raise ConfigError(f"attribution {a.shape} and image {img.shape[:2]} differ in size")
    s = float(np.percentile(np.abs(a), 99)) if scale is None else float(scale)
    weight = np.clip(np.abs(a) / s, 0.0, 1.0)[..., None] * float(np.clip(opacity, 0.0, 1.0)) if s > 0 else 0.0
    colour = np.where((a >= 0)[..., None], np.array([230, 30, 30], np.float32), np.array([30, 90, 230], np.float32))
    out = img * (1.0 - weight) + colour * weight
    if region is not None:
        r = np.asarray(region, dtype=bool)
        edge = r & ~(np.roll(r, 1, 0) & np.roll(r, -1, 0) & np.roll(r, 1, 1) & np.roll(r, -1, 1))
        out[edge] = (255, 221, 0)
    return (out + 0.5).astype(np.uint8)


def attribution_scale(*maps: np.ndarray) -> float:
    """One colour scale for several attribution maps (the largest 99th percentile of |a|)."""
    return max((float(np.percentile(np.abs(m), 99)) for m in maps), default=1.0) or 1.0


def methods():
    """The attribution methods by name (:data:`npdg.attribution.METHODS`: label, summary, typed
    parameters, whether a layer is needed and whether it is fast enough to run on every change)."""
    from npdg.attribution import METHODS

    return dict(METHODS)


def default_layer(layers: pd.DataFrame) -> str:
    """The layer the Explain page starts on: the deepest encoder BN filter layer (Grad-CAM's usual
    choice), else the last filter layer, else the first layer."""
    filters = layers[layers["kind"] == "filter"]["layer"].astype(str).tolist()
    encoder = [n for n in filters if ".encoder." in f".{n}"]
    for pool in (encoder, filters):
        if pool:
            return pool[-1]
    return str(layers["layer"].iloc[0])


def job_result(status) -> PixelAttribution | None:
    """The finished attribution of a :func:`pixel_job`, or None."""
    return None if status is None or status.state != "done" else jobs.result(status.key)
