"""Explain page service: what the units of one layer respond to, across domains.

* :func:`unit_layers` — the model's unit layers (the ones the sensitivity probe and pruning use);
* :func:`activation_atlas` — per scene, domain and unit: the spatial maximum activation and where it
  is (:func:`npdg.explain.activation_atlas`), on a small fixed set of scenes rendered in several
  domains, so a unit that fires only on one look stands out;
* :func:`unit_profile` — one unit's mean maximum activation per domain, from an atlas;
* :func:`unit_view` — one unit's activation map on one scene in every domain, on one colour scale;
* :func:`atlas_job` — the atlas as a background job (:mod:`npdg.service.jobs`), persisted in the
  dashboard cache and shared between sessions; :func:`top_patches` crops each domain's
  top-activating image regions of a unit from it (the Unit page's "what makes it fire").

Cached by model file version, layer and every setting; frames are new copies on each call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from npdg.errors import ConfigError
from npdg.service import engine, engine_device, jobs, lru, model_key, readonly, shared_model
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
        import torch

        x = torch.from_numpy(images.copy()).permute(0, 3, 1, 2).float().div_(255.0)
        with engine():
            maps = unit_maps(shared_model(model_path), x.to(engine_device()), layer, int(unit))
        return UnitView(layer, int(unit), kind, int(scene), split, doms, readonly(images), readonly(maps),
                        float(maps.min()), float(maps.max()))

    return _VIEWS.get(key, compute)


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
