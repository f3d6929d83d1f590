"""Explain page service: what the units of one layer respond to, across domains.

* :func:`unit_layers` — the model's unit layers (the ones the sensitivity probe and pruning use);
* :func:`activation_atlas` — per scene, domain and unit: the spatial maximum activation and where it
  is (:func:`npdg.explain.activation_atlas`), on a small fixed set of scenes rendered in several
  domains, so a unit that fires only on one look stands out;
* :func:`unit_profile` — one unit's mean maximum activation per domain, from an atlas.

Cached by model file version, layer and every setting; frames are new copies on each call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from npdg.service import engine, engine_device, lru, model_key, shared_model
from npdg.service.data import DEFAULT_DOMAINS, scene_batch

ProgressFn = Callable[[int, int], None]
DEFAULT_SIZE: tuple[int, int] = (128, 256)
_LAYERS = lru(8)
_ATLASES = lru(32)


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


__all__ = ["DEFAULT_SIZE", "activation_atlas", "unit_layers", "unit_profile"]
