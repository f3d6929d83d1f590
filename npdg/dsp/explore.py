"""Looking at what a DSP does: style grids with segmentor cross-entropy, and latent traversals.

Both functions are thin loops over :class:`npdg.dsp.model.DSP` — ``stylize``, ``ascend`` (one step
at a time, so the CE of every step is seen) and ``traverse`` — and return frozen dataclasses of
read-only numpy arrays, so the CLI (``python -m npdg dsp sample``) and the dashboard's Styles page
show the same thing:

* :func:`style_grid` — for each image, K random styles ``ε ~ N(0, I)`` and the same K codes after N
  gradient-ascent steps against a segmentor (docs/method.md §1.5), with the per-sample CE before,
  after and at every step. The CE rising along the ascent is the point of DSP: the ascended styles
  are the ones the segmentor finds hardest.
* :func:`traverse_grid` — one image restyled while one latent coordinate sweeps a range (the rest of
  ε fixed), with the CE of each value: which directions of the style space hurt the segmentor.

Without labels, the segmentor's own prediction on the clean image is the target (a pseudo label),
as the CLI has always done for image files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from npdg.dsp.model import ASCENT_RULES, DEFAULT_STEP_SIZE, DSP, _frozen, style_ce
from npdg.errors import ConfigError
from npdg.viz import to_uint8_image

ProgressFn = Callable[[int, int], None]
#: Default traversal values of one latent coordinate (ε_d from −3σ to +3σ of the prior).
TRAVERSE_VALUES: tuple[float, ...] = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _uint8_batch(images: torch.Tensor) -> np.ndarray:
    """``[N, 3, H, W]`` float in [0, 1] → uint8 ``[N, H, W, 3]`` (the rounding of :func:`npdg.viz.to_uint8_image`)."""
    return np.stack([to_uint8_image(x) for x in images.detach().cpu()])


@torch.no_grad()
def _pseudo_labels(segmentor: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The segmentor's argmax on the clean images (eval mode, restored) → ``[B, H, W]`` long."""
    with _frozen(segmentor):
        logits = segmentor(images)
    if logits.shape[-2:] != images.shape[-2:]:
        logits = torch.nn.functional.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return logits.argmax(1)


@torch.no_grad()
def _ce(dsp: DSP, images: torch.Tensor, labels: torch.Tensor, segmentor: nn.Module, eps: torch.Tensor,
        alpha: float | None) -> torch.Tensor:
    """Per-sample CE of ``segmentor`` on ``dsp.stylize(images, eps, alpha)`` (labels repeated K times)."""
    return style_ce(dsp, images, labels, segmentor, eps, alpha=alpha).float().cpu()


def _check_inputs(dsp: DSP, images: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ConfigError(f"images must be a float tensor [B, 3, H, W] in [0, 1], got {shape}")
    images = dsp._check_images(images)
    if labels is not None:
        if not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(np.asarray(labels))
        if labels.dim() == 2 and images.shape[0] == 1:
            labels = labels[None]
        if labels.dim() != 3 or tuple(labels.shape) != (images.shape[0], *images.shape[-2:]):
            raise ConfigError(f"labels must be [B, H, W] = {[images.shape[0], *images.shape[-2:]]}, got {list(labels.shape)}")
        labels = labels.to(images.device).long()
    return images, labels


@dataclass(frozen=True)
class StyleGrid:
    """Random vs ascended styles of B images × K styles, with the segmentor's CE (read-only arrays).

    ``ce_steps[b, k, s]`` is the CE of image b in style k after s ascent steps (``s = 0``: the random
    style; ``s = steps``: the ascended one). Without a segmentor there is no ascent: ``ascended``,
    ``eps_ascended``, ``labels`` and the CE arrays are None.
    """

    inputs: np.ndarray  # uint8 [B, H, W, 3]
    random: np.ndarray  # uint8 [B, K, H, W, 3]
    ascended: np.ndarray | None  # uint8 [B, K, H, W, 3]
    eps_random: np.ndarray  # float32 [B, K, d]
    eps_ascended: np.ndarray | None  # float32 [B, K, d]
    labels: np.ndarray | None  # uint8 [B, H, W] train ids (255 ignored): the targets of the CE
    pseudo_labels: bool  # labels are the segmentor's prediction on the clean images
    ce_steps: np.ndarray | None  # float32 [B, K, steps + 1]
    steps: int
    step_size: float
    rule: str
    alpha: float
    seed: int

    @property
    def n_images(self) -> int:
        return int(self.random.shape[0])

    @property
    def n_styles(self) -> int:
        return int(self.random.shape[1])

    @property
    def ce_before(self) -> np.ndarray | None:
        """CE per (image, style) on the random styles, ``[B, K]``."""
        return None if self.ce_steps is None else self.ce_steps[..., 0]

    @property
    def ce_after(self) -> np.ndarray | None:
        """CE per (image, style) after the ascent, ``[B, K]``."""
        return None if self.ce_steps is None else self.ce_steps[..., -1]

    def ce_table(self) -> pd.DataFrame:
        """Tidy CE, one row per (image, style, step): columns ``image, style, step, ce`` (a new frame
        each call; empty without a segmentor)."""
        cols = ["image", "style", "step", "ce"]
        if self.ce_steps is None:
            return pd.DataFrame(columns=cols)
        b, k, s = self.ce_steps.shape
        ii, kk, ss = np.meshgrid(np.arange(b), np.arange(k), np.arange(s), indexing="ij")
        return pd.DataFrame({"image": ii.ravel(), "style": kk.ravel(), "step": ss.ravel(),
                             "ce": self.ce_steps.ravel().astype(np.float64)}, columns=cols)

    def tiles(self) -> tuple[list[np.ndarray], list[str], int]:
        """``(tiles, titles, ncols)`` for :func:`npdg.viz.grid`: one row per image with the input,
        the K random styles and (with a segmentor) the K ascended styles; titles carry the CE."""
        tiles, titles = [], []
        for b in range(self.n_images):
            tiles.append(self.inputs[b])
            titles.append("input")
            for k in range(self.n_styles):
                tiles.append(self.random[b, k])
                titles.append(f"style {k}" + ("" if self.ce_steps is None else f" CE {self.ce_steps[b, k, 0]:.2f}"))
            if self.ascended is not None:
                for k in range(self.n_styles):
                    tiles.append(self.ascended[b, k])
                    titles.append(f"ascended {k} CE {self.ce_steps[b, k, -1]:.2f}")
        ncols = 1 + self.n_styles * (2 if self.ascended is not None else 1)
        return tiles, titles, ncols


def style_grid(
    dsp: DSP,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    segmentor: nn.Module | None,
    n_styles: int,
    steps: int,
    step_size: float | None = None,
    rule: str = "normalized",
    seed: int = 0,
    alpha: float | None = None,
    progress: ProgressFn | None = None,
    batch_size: int | None = None,
) -> StyleGrid:
    """K random styles per image and the same codes after ``steps`` ascent steps, with CE per step.

    ``images`` ``[B, 3, H, W]`` in [0, 1]; ``labels`` ``[B, H, W]`` train ids (255 ignored) or None
    for the segmentor's own prediction on the clean image. The ``B·K`` codes are drawn at once from
    N(0, I) with ``seed`` (CPU generator, so the same on every device), image b's K codes adjacent.
    The ascent is :meth:`DSP.ascend` run one step at a time (``rule``, ``step_size``; default per
    rule, docs/method.md §1.5), so the result equals ``ascend(..., steps=steps)``, and the CE of every
    intermediate code is measured with one extra no-grad forward. The segmentor runs in eval mode
    with frozen parameters; both are restored. ``batch_size`` images go through one ascent batch
    (default: all; the ``asm`` rule normalizes by the mean CE of that batch). ``segmentor=None``
    gives the random styles only. ``progress(done, total)`` is called after every CE evaluation.
    """
    if int(n_styles) < 1:
        raise ConfigError(f"n_styles must be >= 1, got {n_styles}")
    if int(steps) < 0:
        raise ConfigError(f"ascent steps must be >= 0, got {steps}")
    if rule not in ASCENT_RULES:
        raise ConfigError(f"ascent rule must be one of {', '.join(ASCENT_RULES)}, got {rule!r}")
    if step_size is not None and not (math.isfinite(float(step_size)) and float(step_size) > 0):
        raise ConfigError(f"step_size must be a positive number, got {step_size!r}")
    if batch_size is not None and int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    images, labels = _check_inputs(dsp, images, labels)
    b, k, steps = images.shape[0], int(n_styles), int(steps)
    size = DEFAULT_STEP_SIZE[rule] if step_size is None else float(step_size)
    a = dsp.spec.alpha if alpha is None else float(alpha)
    eps0 = dsp.sample_eps(b * k, seed=int(seed))
    chunk = b if batch_size is None else int(batch_size)
    starts = list(range(0, b, chunk))
    total = len(starts) * (steps + 1) if segmentor is not None else len(starts)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    random_imgs, asc_imgs, asc_eps, ce_rows, label_rows = [], [], [], [], []
    pseudo = labels is None and segmentor is not None
    for start in starts:
        x = images[start:start + chunk]
        e = eps0[start * k:(start + x.shape[0]) * k]
        with torch.no_grad():
            random_imgs.append(_uint8_batch(dsp.stylize(x, e, alpha=alpha)))
        if segmentor is None:
            tick()
            continue
        y = labels[start:start + chunk] if labels is not None else _pseudo_labels(segmentor, x)
        label_rows.append(y.cpu())
        ces = [_ce(dsp, x, y, segmentor, e, alpha)]
        tick()
        for _ in range(steps):
            e = dsp.ascend(x, y, segmentor, e, steps=1, step_size=size, rule=rule, alpha=alpha)
            ces.append(_ce(dsp, x, y, segmentor, e, alpha))
            tick()
        ce_rows.append(torch.stack(ces, dim=1))  # [chunk·K, steps + 1]
        asc_eps.append(e.detach().float().cpu())
        with torch.no_grad():
            asc_imgs.append(_uint8_batch(dsp.stylize(x, e, alpha=alpha)))

    h, w = images.shape[-2:]
    d = dsp.latent_dim
    random = np.concatenate(random_imgs).reshape(b, k, h, w, 3)
    ascended = ce = eps_asc = lab = None
    if segmentor is not None:
        ascended = _readonly(np.concatenate(asc_imgs).reshape(b, k, h, w, 3))
        ce = _readonly(torch.cat(ce_rows).reshape(b, k, steps + 1).numpy().astype(np.float32))
        eps_asc = _readonly(torch.cat(asc_eps).reshape(b, k, d).numpy().astype(np.float32))
        lab = _readonly(torch.cat(label_rows).clamp(0, 255).to(torch.uint8).numpy())
    return StyleGrid(
        inputs=_readonly(_uint8_batch(images)),
        random=_readonly(random),
        ascended=ascended,
        eps_random=_readonly(eps0.detach().float().cpu().reshape(b, k, d).numpy()),
        eps_ascended=eps_asc,
        labels=lab,
        pseudo_labels=pseudo,
        ce_steps=ce,
        steps=steps,
        step_size=size,
        rule=rule,
        alpha=float(a),
        seed=int(seed),
    )


@dataclass(frozen=True)
class TraverseGrid:
    """One image restyled along latent coordinate ``dim`` (read-only arrays)."""

    input: np.ndarray  # uint8 [H, W, 3]
    images: np.ndarray  # uint8 [V, H, W, 3]
    values: np.ndarray  # float32 [V]
    base_eps: np.ndarray  # float32 [d]: the other coordinates
    dim: int
    ce: np.ndarray | None  # float32 [V]; None without a segmentor
    labels: np.ndarray | None  # uint8 [H, W]
    pseudo_labels: bool
    alpha: float

    def table(self) -> pd.DataFrame:
        """Columns ``dim, value, ce`` (ce NaN without a segmentor), a new frame each call."""
        ce = self.ce if self.ce is not None else np.full(len(self.values), np.nan)
        return pd.DataFrame({"dim": self.dim, "value": self.values.astype(np.float64), "ce": ce.astype(np.float64)})


def traverse_grid(
    dsp: DSP,
    image: torch.Tensor,
    label: torch.Tensor | None,
    segmentor: nn.Module | None,
    dim: int,
    values: Sequence[float] = TRAVERSE_VALUES,
    base_eps: torch.Tensor | None = None,
    alpha: float | None = None,
    progress: ProgressFn | None = None,
) -> TraverseGrid:
    """:meth:`DSP.traverse` of one image along latent coordinate ``dim`` with the CE of each value.

    ``image`` ``[3, H, W]`` or ``[1, 3, H, W]``; ``label`` ``[H, W]`` or None (the segmentor's own
    prediction). ``base_eps`` (default 0, the prior's mean) holds the other coordinates
    (docs/method.md §1.5). ``segmentor=None`` gives the images only. ``progress(done, total)`` is
    called once per value when CE is measured (one no-grad forward per value).
    """
    if isinstance(image, torch.Tensor) and image.dim() == 3:
        image = image.unsqueeze(0)
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[0] != 1:
        raise ConfigError(f"traverse needs one image [3, H, W] or [1, 3, H, W], got {getattr(image, 'shape', image)!r}")
    vals = [float(v) for v in values]
    if not vals or not all(math.isfinite(v) for v in vals):
        raise ConfigError(f"traverse needs at least one finite value, got {list(values)!r}")
    x, y = _check_inputs(dsp, image, None if label is None else torch.as_tensor(label))
    with torch.no_grad():
        out = dsp.traverse(x, int(dim), vals, base_eps=base_eps, alpha=alpha)
    base = torch.zeros(dsp.latent_dim) if base_eps is None else base_eps.reshape(-1).float().cpu()
    ce = lab = None
    pseudo = y is None and segmentor is not None
    if segmentor is not None:
        if y is None:
            y = _pseudo_labels(segmentor, x)
        eps = base.to(dsp.device).repeat(len(vals), 1)
        eps[:, int(dim)] = torch.tensor(vals, device=dsp.device)
        ces = []
        for i in range(len(vals)):
            ces.append(_ce(dsp, x, y, segmentor, eps[i:i + 1], alpha))
            if progress is not None:
                progress(i + 1, len(vals))
        ce = _readonly(torch.cat(ces).numpy().astype(np.float32))
        lab = _readonly(y[0].clamp(0, 255).to(torch.uint8).cpu().numpy())
    return TraverseGrid(
        input=_readonly(to_uint8_image(x[0].cpu())),
        images=_readonly(_uint8_batch(out)),
        values=_readonly(np.asarray(vals, dtype=np.float32)),
        base_eps=_readonly(base.numpy().astype(np.float32)),
        dim=int(dim),
        ce=ce,
        labels=lab,
        pseudo_labels=pseudo,
        alpha=float(dsp.spec.alpha if alpha is None else alpha),
    )


__all__ = ["TRAVERSE_VALUES", "StyleGrid", "TraverseGrid", "style_grid", "traverse_grid"]
