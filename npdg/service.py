"""The facade the dashboard calls: cached, thread-safe, plain-Python results.

Pages never reach into the engine directly; they call these functions, which return frozen
dataclasses or DataFrames, cache what reruns would recompute, and never hand out objects a caller
could mutate for everyone (arrays are returned read-only).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from npdg.labels import CLASS_NAMES, IGNORE, NUM_CLASSES, PALETTE


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
