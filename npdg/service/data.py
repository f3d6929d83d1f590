"""Data page service: synthetic scenes in many domains, class shares, appearance statistics, overlays.

Everything the Data page shows comes from here — the domain table, the splits, the class names and
colours, the rendered scenes and their overlays — so the page imports no engine module. Scenes are
cached per (domain, split, index, size) and returned read-only. The other services render their
scene inputs through :func:`scene_batch`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType

import numpy as np
import pandas as pd

from npdg import viz
from npdg.data import synthetic as _synthetic
from npdg.labels import CLASS_NAMES, IGNORE, NUM_CLASSES
from npdg.labels import PALETTE as _PALETTE

#: Synthetic domain names, source first (``source``, the held-out looks, then ``suburb``).
DOMAIN_NAMES: tuple[str, ...] = tuple(_synthetic.DOMAINS)
#: Domain name → role (``source`` / ``heldout`` / ``content_shift``).
DOMAIN_ROLES: Mapping[str, str] = MappingProxyType({n: d.role for n, d in _synthetic.DOMAINS.items()})
#: Domain name → one-line description of its look.
DOMAIN_DESCRIPTIONS: Mapping[str, str] = MappingProxyType({n: d.description for n, d in _synthetic.DOMAINS.items()})
SOURCE_DOMAIN: str = _synthetic.SOURCE_DOMAIN
#: Held-out (style-shift) domains: evaluated, never trained on (docs/method.md §6).
HELDOUT_DOMAINS: tuple[str, ...] = tuple(_synthetic.domain_names("heldout"))
#: Split name → number of scenes.
SPLIT_LENGTHS: Mapping[str, int] = MappingProxyType(dict(_synthetic.DEFAULT_LENGTHS))
DEFAULT_SIZE: tuple[int, int] = tuple(_synthetic.DEFAULT_SIZE)
#: The Data page's default domain selection.
DEFAULT_DOMAINS: tuple[str, ...] = tuple(d for d in (SOURCE_DOMAIN, "photo", "night", "fog", "toon", "suburb")
                                         if d in _synthetic.DOMAINS)
#: Train-id colours ``[256, 3]`` uint8 (read-only copy).
PALETTE: np.ndarray = _PALETTE.copy()
PALETTE.setflags(write=False)


def class_color(train_id: int) -> tuple[int, int, int]:
    """The RGB colour of a train id."""
    r, g, b = (int(v) for v in PALETTE[int(train_id)])
    return r, g, b


def overlay(image: np.ndarray, label: np.ndarray, opacity: float = 0.5, classes: Iterable[int] | None = None) -> np.ndarray:
    """The colour-coded ``label`` blended over ``image`` at ``opacity``, limited to ``classes``
    (:func:`npdg.viz.overlay`); a new uint8 array."""
    return viz.overlay(image, label, opacity=opacity, classes=classes)


def scene_batch(domain: str, split: str, indices: Sequence[int], size: tuple[int, int]):
    """Scenes ``indices`` of ``domain`` as model inputs: ``(images [N, 3, H, W] float in [0, 1],
    labels [N, H, W] int64)`` (new tensors; the rendered arrays stay cached)."""
    import torch

    images, labels = [], []
    for i in indices:
        image, label = _render(domain, split, int(i), tuple(size))
        images.append(torch.from_numpy(image.copy()).permute(2, 0, 1).float().div_(255.0))
        labels.append(torch.from_numpy(label.astype(np.int64)))
    return torch.stack(images), torch.stack(labels)


@dataclass(frozen=True)
class DomainView:
    """One scene rendered in one synthetic domain."""

    domain: str
    role: str
    description: str
    image: np.ndarray  # uint8 [H, W, 3], read-only
    label: np.ndarray  # uint8 [H, W] train ids, read-only


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@lru_cache(maxsize=256)
def _render(domain: str, split: str, index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    from npdg.data.synthetic import render_scene

    image, label = render_scene(domain, split, index, size)
    return _readonly(image), _readonly(label)


def synthetic_domains() -> pd.DataFrame:
    """The synthetic domains as a table: ``name``, ``role``, ``description`` (source first)."""
    from npdg.data.synthetic import DOMAINS

    return pd.DataFrame([{"name": d.name, "role": d.role, "description": d.description} for d in DOMAINS.values()])


def scene_views(split: str, index: int, domains: tuple[str, ...], size: tuple[int, int]) -> list[DomainView]:
    """Render scene ``(split, index)`` in each of ``domains`` (cached per scene and domain)."""
    from npdg.data.synthetic import DOMAINS

    views = []
    for name in domains:
        info = DOMAINS[name]
        image, label = _render(name, split, int(index), tuple(size))
        views.append(DomainView(name, info.role, info.description, image, label))
    return views


def class_shares(label: np.ndarray) -> pd.DataFrame:
    """Pixel share of each train class present in ``label``: ``train_id``, ``class``, ``share``,
    ``color`` (hex), sorted by share, largest first. Ignore pixels are left out."""
    counts = np.bincount(label[label != IGNORE].ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
    total = max(int(counts.sum()), 1)
    rows = [
        {
            "train_id": t,
            "class": CLASS_NAMES[t],
            "share": counts[t] / total,
            "color": "#{:02x}{:02x}{:02x}".format(*(int(v) for v in PALETTE[t])),
        }
        for t in np.flatnonzero(counts)
    ]
    return pd.DataFrame(rows, columns=["train_id", "class", "share", "color"]).sort_values(
        "share", ascending=False, ignore_index=True
    )


def appearance_stats(views: list[DomainView]) -> pd.DataFrame:
    """Per-domain image statistics that show *style* differs while labels do not: mean R/G/B,
    brightness, RMS contrast, and the share of label pixels equal to the first view's label."""
    ref = views[0].label if views else None
    rows = []
    for v in views:
        img = v.image.astype(np.float32) / 255.0
        grey = img.mean(axis=-1)
        rows.append(
            {
                "domain": v.domain,
                "role": v.role,
                "mean R": float(img[..., 0].mean()),
                "mean G": float(img[..., 1].mean()),
                "mean B": float(img[..., 2].mean()),
                "brightness": float(grey.mean()),
                "contrast": float(grey.std()),
                "same labels": float((v.label == ref).mean()),
            }
        )
    return pd.DataFrame(rows)


__all__ = [
    "CLASS_NAMES", "DEFAULT_DOMAINS", "DEFAULT_SIZE", "DOMAIN_DESCRIPTIONS", "DOMAIN_NAMES", "DOMAIN_ROLES",
    "DomainView", "HELDOUT_DOMAINS", "IGNORE", "NUM_CLASSES", "PALETTE", "SOURCE_DOMAIN", "SPLIT_LENGTHS",
    "appearance_stats", "class_color", "class_shares", "overlay", "scene_batch", "scene_views", "synthetic_domains",
]
