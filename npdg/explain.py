"""What a unit responds to and where a model errs: activation atlases and error maps.

* :func:`unit_maps` — one unit's whole activation map per image (the same tap as the atlas);
* :func:`activation_atlas` — for every image and every unit of one unit layer, the unit's spatial
  maximum (and mean) activation and where the maximum is. The activations are the ones the
  sensitivity probe measures (docs/method.md §3): a filter's BN output, a head's gated input slice of
  ``attn.proj`` (reduced to its L2 norm over the head's width, one value per token). Ranking images
  by a unit's maximum, per domain, shows which units fire on which looks — the intuition behind
  "style-sensitive filters".
* :func:`error_map` — true positives, false positives and false negatives of a prediction against a
  label (255 ignored, docs/method.md §6), for one class or all, with per-class counts and IoU;
  :func:`error_overlay` colours them over the image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from npdg.errors import ConfigError, DataError
from npdg.labels import CLASS_NAMES, IGNORE, NUM_CLASSES
from npdg.models.hooks import hooked, run_batches, stop_after
from npdg.sensitivity import probe_layers
from npdg.viz import to_uint8_image

ProgressFn = Callable[[int, int], None]
ATLAS_COLUMNS: tuple[str, ...] = (
    "image", "domain", "layer", "kind", "unit", "max", "mean", "y", "x", "height", "width", "image_y", "image_x",
)


# ==================================================================================================
# activation atlas
# ==================================================================================================
class _Collector:
    """Per-unit spatial max / mean / argmax of one layer's activations, one batch at a time."""

    def __init__(self, kind: str, size: int, keep: int | None = None):
        self.kind, self.size, self.keep = kind, size, keep
        self.hw: tuple[int, int] | None = None  # token grid of an attention layer (set by a pre-hook)
        self.rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, int, int]] = []
        self.maps: list[np.ndarray] = []  # full maps [N, H, W] of unit ``keep``, when asked for

    def add(self, act: torch.Tensor) -> None:
        """``act`` ``[N, C, H, W]`` (float) → per (image, unit) max, mean and flat argmax."""
        n, c, h, w = act.shape
        if c != self.size:
            raise DataError(f"expected {self.size} units, the layer produced {c}")
        flat = act.float().reshape(n, c, h * w)
        if self.keep is not None:
            self.maps.append(flat[:, self.keep].reshape(n, h, w).cpu().numpy().astype(np.float32))
        mx, arg = flat.max(dim=2)
        self.rows.append((mx.cpu().numpy(), flat.mean(dim=2).cpu().numpy(), arg.cpu().numpy(), h, w))

    def bn_hook(self, _module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        self.add(out.detach())

    def attn_pre_hook(self, _module: nn.Module, args: tuple) -> None:
        # smp MiT: attn(x, height, width); the token grid of this stage
        if len(args) >= 3:
            self.hw = (int(args[1]), int(args[2]))

    def proj_pre_hook(self, _module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        n, tokens, width = x.shape
        heads = self.size
        h, w = self.hw if self.hw is not None and self.hw[0] * self.hw[1] == tokens else (1, tokens)
        norm = x.float().reshape(n, tokens, heads, width // heads).norm(dim=-1)  # [N, tokens, heads]
        self.add(norm.permute(0, 2, 1).reshape(n, heads, h, w))


def _check_images(images: torch.Tensor, batch_size: int) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        raise ConfigError(f"images must be a tensor [N, 3, H, W], got {getattr(images, 'shape', images)!r}")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")


def _collect(model: nn.Module, images: torch.Tensor, layer: str, batch_size: int, progress: ProgressFn | None,
             keep: int | None = None) -> _Collector:
    """Run ``images`` through ``model`` with a collector on unit layer ``layer`` (hooks removed after)."""
    layers = {u.name: u for u in probe_layers(model)}
    if layer not in layers:
        some = ", ".join(list(layers)[:3])
        raise ConfigError(f"{layer!r} is not a unit layer of this model (e.g. {some}, ... {len(layers)} in all)")
    unit = layers[layer]
    if keep is not None and not 0 <= int(keep) < unit.size:
        raise ConfigError(f"unit {keep} is out of range: {layer!r} has units 0 … {unit.size - 1}")
    module = model.get_submodule(layer)
    col = _Collector(unit.kind, unit.size, None if keep is None else int(keep))
    device = next(model.parameters()).device
    handles: list = []
    n = images.shape[0]
    total = math.ceil(n / int(batch_size))
    with hooked(model, handles):
        if unit.kind == "head":
            handles.append(module.register_forward_pre_hook(col.attn_pre_hook))
            # after any gate hook; the forward ends there (stop_after: nothing later is needed)
            handles.append(module.proj.register_forward_pre_hook(stop_after(col.proj_pre_hook)))
        else:
            handles.append(module.register_forward_hook(stop_after(col.bn_hook)))
        batches = (images[s:s + int(batch_size)].float() for s in range(0, n, int(batch_size)))
        run_batches(model, batches, device, total, progress)
    if not col.rows:
        raise DataError(f"layer {layer!r} never ran during the forward pass (is it used?)")
    return col


def activation_atlas(
    model: nn.Module,
    images: torch.Tensor,
    layer: str,
    *,
    domains: Sequence[str] | None = None,
    batch_size: int = 8,
    progress: ProgressFn | None = None,
) -> pd.DataFrame:
    """Each unit's spatial maximum activation, and where it is, for every image, on one unit layer.

    ``images`` ``[N, 3, H, W]`` in [0, 1]; ``layer`` a unit layer of ``model`` (a BN module name for
    filters, an attention module name for heads; see :func:`npdg.sensitivity.probe_layers`);
    ``domains`` an optional label per image (e.g. the synthetic domain it was rendered in).

    Returns a tidy frame, one row per (image, unit), columns :data:`ATLAS_COLUMNS`: ``max`` and
    ``mean`` over positions, the argmax ``(y, x)`` on the layer's ``height × width`` grid and the
    same point in input pixels (``image_y, image_x``, centre of the cell). A filter's activation is
    its BN output; a head's is the L2 norm of its gated ``proj`` input slice per token (the tap of
    the sensitivity probe, docs/method.md §3). The model runs in eval mode under ``no_grad``; its
    mode is restored and the hooks removed afterwards, also on error.
    """
    _check_images(images, batch_size)
    n = images.shape[0]
    if domains is not None and len(domains) != n:
        raise ConfigError(f"domains must give one label per image ({n}), got {len(domains)}")
    col = _collect(model, images, layer, batch_size, progress)
    mx = np.concatenate([r[0] for r in col.rows])  # [N, C]
    mean = np.concatenate([r[1] for r in col.rows])
    arg = np.concatenate([r[2] for r in col.rows])
    h, w = col.rows[0][3], col.rows[0][4]
    ys, xs = arg // w, arg % w
    ih, iw = images.shape[-2:]
    c = col.size
    img_idx = np.repeat(np.arange(n), c)
    return pd.DataFrame({
        "image": img_idx,
        "domain": pd.Series([None if domains is None else domains[i] for i in img_idx], dtype="object"),
        "layer": layer,
        "kind": col.kind,
        "unit": np.tile(np.arange(c), n),
        "max": mx.reshape(-1).astype(np.float64),
        "mean": mean.reshape(-1).astype(np.float64),
        "y": ys.reshape(-1).astype(np.int64),
        "x": xs.reshape(-1).astype(np.int64),
        "height": int(h),
        "width": int(w),
        "image_y": ((ys.reshape(-1) + 0.5) * ih / h - 0.5).clip(0, ih - 1),
        "image_x": ((xs.reshape(-1) + 0.5) * iw / w - 0.5).clip(0, iw - 1),
    }, columns=list(ATLAS_COLUMNS))


def unit_maps(
    model: nn.Module,
    images: torch.Tensor,
    layer: str,
    unit: int,
    *,
    batch_size: int = 8,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """One unit's full activation map on each image: float32 ``[N, h, w]`` on the layer's grid.

    The same tap as :func:`activation_atlas` (a filter's BN output; a head's per-token L2 norm of
    its ``proj`` input slice, on the stage's token grid), so a map's maximum is the atlas ``max``.
    Used to show one unit across domains on one colour scale (docs/method.md §3).
    """
    _check_images(images, batch_size)
    col = _collect(model, images, layer, batch_size, progress, keep=int(unit))
    return np.concatenate(col.maps)


# ==================================================================================================
# error maps
# ==================================================================================================
#: Overlay colours of true positives, false positives and false negatives.
TP_COLOR = (46, 160, 67)
FP_COLOR = (214, 39, 40)
FN_COLOR = (31, 119, 180)


def _as_numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


@dataclass(frozen=True)
class ErrorMap:
    """Where a prediction is right and wrong (read-only arrays).

    For one class ``c`` (``class_id``): ``tp`` = predicted c where the label is c, ``fp`` = predicted c
    where the label is another class, ``fn`` = label c predicted as something else. For all classes
    (``class_id`` None): ``tp`` = correctly classified pixels and ``fp`` = ``fn`` = misclassified ones
    (each is a false positive of its predicted class and a false negative of its true class).
    Ignored pixels (label 255) are in none of them. ``tp_count``/``fp_count``/``fn_count`` hold the
    per-class pixel counts ``[C]`` whatever ``class_id`` is.
    """

    class_id: int | None
    tp: np.ndarray  # bool [H, W]
    fp: np.ndarray
    fn: np.ndarray
    ignored: np.ndarray  # bool [H, W]
    tp_count: np.ndarray  # int64 [C]
    fp_count: np.ndarray
    fn_count: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.tp_count.shape[0])

    @property
    def accuracy(self) -> float:
        """Pixel accuracy over the non-ignored pixels (NaN if every pixel is ignored)."""
        valid = int((~self.ignored).sum())
        return float(self.tp_count.sum() / valid) if valid else math.nan

    def table(self) -> pd.DataFrame:
        """Per class: ``train_id, class, tp, fp, fn, iou`` (iou NaN for a class absent from label and
        prediction, as in docs/method.md §6), one row per class, a new frame each call."""
        union = self.tp_count + self.fp_count + self.fn_count
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, self.tp_count / np.maximum(union, 1), np.nan)
        names = CLASS_NAMES if self.num_classes == NUM_CLASSES else tuple(f"class_{i}" for i in range(self.num_classes))
        return pd.DataFrame({"train_id": np.arange(self.num_classes), "class": list(names), "tp": self.tp_count,
                             "fp": self.fp_count, "fn": self.fn_count, "iou": iou})


def error_map(pred, label, class_id: int | None = None, num_classes: int = NUM_CLASSES) -> ErrorMap:
    """TP / FP / FN of ``pred`` against ``label`` (both ``[H, W]`` train ids; label 255 ignored).

    ``class_id`` picks one class for the masks (None: right vs wrong over all classes); the counts
    are per class either way. Label values outside ``0..num_classes-1`` other than 255, and
    predictions outside that range, raise :class:`DataError` (as evaluation does, docs/method.md §6).
    """
    p, y = _as_numpy(pred).astype(np.int64), _as_numpy(label).astype(np.int64)
    if p.ndim != 2 or p.shape != y.shape:
        raise ConfigError(f"pred and label must be [H, W] of the same shape, got {p.shape} and {y.shape}")
    if class_id is not None and not 0 <= int(class_id) < num_classes:
        raise ConfigError(f"class_id must be in 0..{num_classes - 1}, got {class_id}")
    ignored = y == IGNORE
    valid = ~ignored
    if ((y < 0) | (y >= num_classes))[valid].any():
        bad = sorted(set(np.unique(y[valid]).tolist()) - set(range(num_classes)))[:5]
        raise DataError(f"label has values {bad} outside the {num_classes} classes (and not {IGNORE})")
    if ((p < 0) | (p >= num_classes)).any():
        raise DataError(f"prediction has values outside 0..{num_classes - 1}")
    correct = valid & (p == y)
    wrong = valid & (p != y)
    tp_count = np.bincount(y[correct], minlength=num_classes)[:num_classes]
    fp_count = np.bincount(p[wrong], minlength=num_classes)[:num_classes]
    fn_count = np.bincount(y[wrong], minlength=num_classes)[:num_classes]
    if class_id is None:
        tp, fp, fn = correct, wrong, wrong.copy()
    else:
        c = int(class_id)
        tp, fp, fn = correct & (y == c), wrong & (p == c), wrong & (y == c)
    arrays = [tp, fp, fn, ignored, tp_count.astype(np.int64), fp_count.astype(np.int64), fn_count.astype(np.int64)]
    for a in arrays:
        a.setflags(write=False)
    return ErrorMap(None if class_id is None else int(class_id), *arrays)


def error_colors(err: ErrorMap) -> np.ndarray:
    """``[H, W, 3]`` uint8: TP green, FP red, FN blue, other pixels black (all-class maps: right
    green, wrong red)."""
    out = np.zeros((*err.tp.shape, 3), dtype=np.uint8)
    out[err.tp] = TP_COLOR
    out[err.fn] = FN_COLOR
    out[err.fp] = FP_COLOR  # painted last: an all-class map shows its errors red
    return out


def error_overlay(image, err: ErrorMap, opacity: float = 0.6) -> np.ndarray:
    """The error colours blended over ``image`` (uint8 ``[H, W, 3]`` or float ``[3, H, W]``) at
    ``opacity`` on the TP/FP/FN pixels; everything else shows the image unchanged."""
    img = to_uint8_image(image).astype(np.float32)
    if img.shape[:2] != err.tp.shape:
        raise ConfigError(f"image {img.shape[:2]} and error map {err.tp.shape} differ in size")
    mask = (err.tp | err.fp | err.fn)[..., None]
    a = float(np.clip(opacity, 0.0, 1.0)) * mask
    return (img * (1.0 - a) + error_colors(err).astype(np.float32) * a + 0.5).astype(np.uint8)


__all__ = [
    "ATLAS_COLUMNS", "FN_COLOR", "FP_COLOR", "TP_COLOR", "ErrorMap", "activation_atlas", "error_colors",
    "error_map", "error_overlay", "unit_maps",
]
