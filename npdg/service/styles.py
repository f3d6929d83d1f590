"""Styles page service: what the DSP does to a scene or an uploaded image (docs/method.md §1).

Three views, each cached by every setting (DSP and model file versions, input, size, codes):

* :func:`sample_styles` — K random styles ``ε ~ N(0, I)``;
* :func:`ascend_styles` — the same K codes before and after N gradient-ascent steps against a
  segmentor, with the CE of every step (:func:`npdg.dsp.explore.style_grid`);
* :func:`traverse` — one latent coordinate swept over a range (:func:`npdg.dsp.explore.traverse_grid`).

The input is a synthetic scene (``split``, ``index``, ``domain``; its ground-truth labels are the CE
targets) or an uploaded ``image`` (uint8 ``[H, W, 3]``; the segmentor's own prediction on it is the
target). Results are frozen dataclasses of read-only arrays, shared between sessions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npdg.dsp.explore import TRAVERSE_VALUES, StyleGrid, TraverseGrid, style_grid, traverse_grid
from npdg.recipes.prune import DEFAULT_DSP as REPO_DSP
from npdg.service import array_key, engine, file_key, lru, model_key, shared_dsp, shared_model
from npdg.service.data import SOURCE_DOMAIN, scene_batch

ProgressFn = Callable[[int, int], None]
#: Default input size of the Styles page (H, W): small enough for an ascent on the CPU.
DEFAULT_SIZE: tuple[int, int] = (128, 256)
#: The DSP shipped with the repository (assets/dsp_tiny): the dashboard's default.
DEFAULT_DSP: Path = REPO_DSP
_GRIDS = lru(32)
_TRAVERSALS = lru(32)


@dataclass(frozen=True)
class DSPInfo:
    """What a DSP folder holds (its ``dsp.json``)."""

    path: str
    encoder: str
    channels: tuple[int, ...]
    latent_dim: int
    hidden: int
    alpha: float
    image_size: tuple[int, int] | None


def dsp_info(dsp_path: str | Path) -> DSPInfo:
    """Architecture and defaults of the DSP at ``dsp_path`` (loads it once)."""
    dsp = shared_dsp(dsp_path)
    s = dsp.spec
    return DSPInfo(str(dsp_path), s.encoder, tuple(s.channels), int(dsp.latent_dim), int(s.hidden), float(s.alpha),
                   None if s.image_size is None else tuple(s.image_size))


def _input(split: str, index: int, domain: str, size: tuple[int, int] | None, image: np.ndarray | None):
    """(key, images [1, 3, H, W], labels [1, H, W] or None) of a scene or an uploaded image."""
    if image is not None:
        from npdg.service import check_images, image_batch

        arr = check_images(image, "an uploaded image")[0]
        if size is not None and tuple(arr.shape[:2]) != tuple(size):
            from npdg.data.transforms import resize_image

            arr = resize_image(arr, tuple(size))
        x = image_batch(arr)
        return ("upload", array_key(arr)), x, None
    size = tuple(size or DEFAULT_SIZE)
    images, labels = scene_batch(domain, split, [int(index)], size)
    return ("scene", split, int(index), domain, size), images, labels


def _grid(dsp_path, model_path, *, split, index, domain, size, image, n_styles, steps, step_size, rule, seed,
          alpha, progress) -> StyleGrid:
    key_in, x, y = _input(split, index, domain, size, image)
    key = (file_key(dsp_path), None if model_path is None else model_key(model_path), key_in, int(n_styles),
           int(steps), None if step_size is None else float(step_size), rule, int(seed),
           None if alpha is None else float(alpha))

    def compute() -> StyleGrid:
        with engine():
            dsp = shared_dsp(dsp_path)
            seg = None if model_path is None else shared_model(model_path)
            return style_grid(dsp, x.to(dsp.device), None if y is None else y.to(dsp.device), seg, n_styles,
                              steps if seg is not None else 0, step_size=step_size, rule=rule, seed=seed,
                              alpha=alpha, progress=progress)

    return _GRIDS.get(key, compute)


def sample_styles(
    dsp_path: str | Path,
    *,
    split: str = "val",
    index: int = 0,
    domain: str = SOURCE_DOMAIN,
    size: tuple[int, int] | None = DEFAULT_SIZE,
    image: np.ndarray | None = None,
    n_styles: int = 4,
    seed: int = 0,
    alpha: float | None = None,
) -> StyleGrid:
    """K random DSP styles of one input (no segmentor: no CE, no ascent)."""
    return _grid(dsp_path, None, split=split, index=index, domain=domain, size=size, image=image, n_styles=n_styles,
                 steps=0, step_size=None, rule="normalized", seed=seed, alpha=alpha, progress=None)


def ascend_styles(
    dsp_path: str | Path,
    model_path: str | Path,
    *,
    split: str = "val",
    index: int = 0,
    domain: str = SOURCE_DOMAIN,
    size: tuple[int, int] | None = DEFAULT_SIZE,
    image: np.ndarray | None = None,
    n_styles: int = 4,
    steps: int = 5,
    step_size: float | None = None,
    rule: str = "normalized",
    seed: int = 0,
    alpha: float | None = None,
    progress: ProgressFn | None = None,
) -> StyleGrid:
    """K random styles and the same codes after ``steps`` ascent steps against the model at
    ``model_path``, with the CE per step (docs/method.md §1.5). ``progress`` is only called when the
    result is not cached."""
    return _grid(dsp_path, model_path, split=split, index=index, domain=domain, size=size, image=image,
                 n_styles=n_styles, steps=steps, step_size=step_size, rule=rule, seed=seed, alpha=alpha,
                 progress=progress)


def traverse(
    dsp_path: str | Path,
    *,
    dim: int,
    values: Sequence[float] = TRAVERSE_VALUES,
    model_path: str | Path | None = None,
    split: str = "val",
    index: int = 0,
    domain: str = SOURCE_DOMAIN,
    size: tuple[int, int] | None = DEFAULT_SIZE,
    image: np.ndarray | None = None,
    base_seed: int | None = None,
    alpha: float | None = None,
) -> TraverseGrid:
    """The input restyled while latent coordinate ``dim`` takes each of ``values``; the other
    coordinates are 0 (the prior's mean) or, with ``base_seed``, one code drawn from N(0, I). With
    ``model_path`` the CE of each value is measured."""
    key_in, x, y = _input(split, index, domain, size, image)
    vals = tuple(float(v) for v in values)
    key = (file_key(dsp_path), None if model_path is None else model_key(model_path), key_in, int(dim), vals,
           None if base_seed is None else int(base_seed), None if alpha is None else float(alpha))

    def compute() -> TraverseGrid:
        with engine():
            dsp = shared_dsp(dsp_path)
            seg = None if model_path is None else shared_model(model_path)
            base = None if base_seed is None else dsp.sample_eps(1, seed=int(base_seed))[0]
            return traverse_grid(dsp, x.to(dsp.device), None if y is None else y[0].to(dsp.device), seg, dim, vals,
                                 base_eps=base, alpha=alpha)

    return _TRAVERSALS.get(key, compute)


__all__ = ["DEFAULT_SIZE", "DSPInfo", "StyleGrid", "TraverseGrid", "ascend_styles", "dsp_info",
           "sample_styles", "traverse"]
