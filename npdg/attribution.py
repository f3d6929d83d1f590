"""Attribution of a segmentation decision in a region, pixel by pixel and unit by unit (docs/method.md §8).

A segmentation model gives a logit map per class; an *explanation target* is one scalar per image:
the mean logit of class ``c`` over a region mask (:func:`region_forward`) — the pixels predicted as
``c``, its false positives or false negatives, or a box. Captum's methods then attribute that
scalar (:data:`METHODS`, each with a typed parameter schema the dashboard turns into widgets):

* ``gradcam`` — :class:`captum.attr.LayerGradCam` on one BN unit layer (an MiT attention layer:
  the same weighting on the heads' output per token, :func:`_head_gradcam`), upsampled to the image;
* ``ig`` — :class:`captum.attr.IntegratedGradients` from a black image;
* ``smoothgrad`` — :class:`captum.attr.NoiseTunnel` around integrated gradients;
* ``ablation`` — :class:`captum.attr.FeatureAblation` over predicted segments (the predicted class
  map cut into a grid of cells; a black segment is the baseline).

:func:`unit_contributions` breaks the target down onto the units of one layer: gradient × activation
of each filter (BN output channel) or head (its slice of ``proj``'s input), summed over the image —
the first-order estimate of how much the target falls when that unit is soft-masked, i.e. exactly
the change pruning makes (docs/method.md §5).

Every forward goes through :func:`npdg.pruning.soft.soft_forward` when a plan is given, so a soft-
pruned model is explained without modifying the model; callers that share the model hold its lock
(captum's layer methods add hooks to it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from npdg.errors import ConfigError
from npdg.pruning.selection import PruningPlan
from npdg.pruning.soft import soft_forward

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Param:
    """One typed parameter of a method: an int or a float in ``[lo, hi]``."""

    name: str
    label: str
    kind: str  # "int" | "float"
    default: float
    lo: float
    hi: float
    step: float
    help: str = ""

    def check(self, value) -> int | float:
        """``value`` as this parameter's type, or ConfigError (not finite, out of range)."""
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{self.name} must be a number, got {value!r}") from None
        if not np.isfinite(v) or not self.lo <= v <= self.hi:
            raise ConfigError(f"{self.name} must be in [{self.lo:g}, {self.hi:g}], got {value!r}")
        if self.kind == "int":
            if v != int(v):
                raise ConfigError(f"{self.name} must be an integer, got {value!r}")
            return int(v)
        return v


@dataclass(frozen=True)
class Method:
    """An attribution method: ``name``, what it shows, its parameters and whether it needs a layer
    (and is fast enough to run on every change: ``instant``)."""

    name: str
    label: str
    summary: str
    params: tuple[Param, ...]
    needs_layer: bool
    instant: bool

    def check(self, params: dict | None) -> dict:
        """Every parameter validated, defaults filled in; unknown names refused."""
        params = dict(params or {})
        unknown = set(params) - {p.name for p in self.params}
        if unknown:
            raise ConfigError(f"{self.name} has no parameter {sorted(unknown)[0]!r}")
        return {p.name: p.check(params.get(p.name, p.default)) for p in self.params}


_STEPS = Param("n_steps", "steps", "int", 16, 2, 128, 1, "Riemann steps from the black image to the image.")
_BATCH = Param("internal_batch_size", "internal batch", "int", 8, 1, 64, 1, "Steps per forward (memory vs speed).")
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("gradcam", "Grad-CAM (layer)", "Grad-CAM on the chosen layer (a BN filter layer, or an attention "
           "layer's heads): where that layer's evidence for the target lies, at the layer's resolution.", (), True, True),
    Method("ig", "Integrated Gradients", "Pixel attribution along the straight path from a black image.",
           (_STEPS, _BATCH), False, False),
    Method("smoothgrad", "Noise Tunnel (SmoothGrad over IG)", "Integrated gradients averaged over noisy copies "
           "of the image: less speckle.", (Param("nt_samples", "noisy samples", "int", 4, 1, 32, 1),
                                             Param("stdevs", "noise σ", "float", 0.1, 0.0, 1.0, 0.05), _STEPS, _BATCH),
           False, False),
    Method("ablation", "Feature Ablation (segments)", "Each predicted segment blacked out in turn: how much the "
           "target falls.", (Param("cells", "grid cells per side", "int", 4, 1, 16, 1,
                                   "Each predicted class region is cut by a cells × cells grid into segments."),
                             Param("perturbations_per_eval", "segments per forward", "int", 8, 1, 64, 1)),
           False, False),
)}


def method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown attribution method {name!r}; one of {', '.join(METHODS)}")
    return METHODS[name]


# ----------------------------------------------------------------------------------------- targets
def region_forward(model: nn.Module, plan: PruningPlan | None, class_id: int, mask: torch.Tensor,
                   on_forward: Callable[[], None] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x → mean over mask of the class-``class_id`` logit`` per image (the soft-masked model when
    ``plan``); ``on_forward()`` after each forward (how progress is counted)."""
    m = mask.to(dtype=torch.float32)
    area = m.sum().clamp_min(1.0)

    def forward(x: torch.Tensor) -> torch.Tensor:
        logits = model(x) if plan is None or plan.is_empty else soft_forward(model, plan, x)
        if logits.shape[-2:] != m.shape:
            raise ConfigError(f"the model's output is {tuple(logits.shape[-2:])}, the region {tuple(m.shape)}")
        if on_forward is not None:
            on_forward()
        return (logits[:, int(class_id)] * m.to(logits.device)).sum((-2, -1)) / area.to(logits.device)

    return forward


def check_region(mask: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """A boolean ``[H, W]`` region of the image's size with at least one pixel, as a tensor."""
    arr = np.asarray(mask)
    if arr.shape != tuple(size):
        raise ConfigError(f"the region is {arr.shape}, the image {tuple(size)}")
    if not arr.any():
        raise ConfigError("the region is empty: pick another class or draw a larger box")
    return torch.from_numpy(arr.astype(bool))


def segments(pred: np.ndarray, cells: int) -> np.ndarray:
    """Predicted segments for feature ablation: each predicted class region cut by a ``cells × cells``
    grid; int64 ``[H, W]`` ids 0..K−1 (consecutive)."""
    h, w = pred.shape
    rows = np.minimum(np.arange(h) * cells // h, cells - 1)
    cols = np.minimum(np.arange(w) * cells // w, cells - 1)
    raw = (pred.astype(np.int64) * cells + rows[:, None]) * cells + cols[None, :]
    _, ids = np.unique(raw, return_inverse=True)
    return ids.reshape(h, w)


# ------------------------------------------------------------------------------------------ pixels
def _unit_module(model: nn.Module, layer: str) -> nn.Module:
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        raise ConfigError(f"the model has no layer {layer!r}") from None
    return module


def pixel_attribution(model: nn.Module, image: torch.Tensor, class_id: int, mask: np.ndarray, method_name: str,
                      params: dict | None = None, *, plan: PruningPlan | None = None, layer: str | None = None,
                      pred: np.ndarray | None = None, progress: ProgressFn | None = None) -> np.ndarray:
    """Attribution of the region target to each pixel: float32 ``[H, W]`` (summed over RGB; for
    Grad-CAM the ReLU'd layer map upsampled bilinearly). ``image`` is ``[1, 3, H, W]`` in [0, 1];
    ``pred`` (the predicted class map) is needed by ``ablation``."""
    from captum.attr import FeatureAblation, IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel

    from npdg.models.gates import attention_modules

    spec = method(method_name)
    p = spec.check(params)
    x = image.detach().clone()
    region = check_region(mask, tuple(x.shape[-2:]))
    seg = None
    if spec.name == "ablation":
        if pred is None:
            raise ConfigError("feature ablation needs the predicted class map")
        seg = torch.from_numpy(segments(np.asarray(pred), p["cells"])).to(x.device)[None, None].expand_as(x)
    total = _forwards(spec.name, p, 0 if seg is None else int(seg.max()) + 1)
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(min(done[0], total), total)

    f = region_forward(model, plan, class_id, region, tick)
    with torch.enable_grad():
        if spec.name == "gradcam":
            if layer is None:
                raise ConfigError("Grad-CAM needs a layer")
            module = _unit_module(model, layer)
            heads = attention_modules(model)
            if layer in heads:
                cam = _head_gradcam(f, heads[layer], x)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                cam = LayerGradCam(f, module).attribute(x, relu_attributions=True)
            else:
                raise ConfigError(f"Grad-CAM runs on a BN filter layer or an MiT attention layer; {layer} is a "
                                  f"{type(module).__name__}")
            out = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")[0, 0]
        elif spec.name in ("ig", "smoothgrad"):
            ig = IntegratedGradients(f)
            kw = dict(baselines=torch.zeros_like(x), n_steps=p["n_steps"], internal_batch_size=p["internal_batch_size"])
            if spec.name == "ig":
                out = ig.attribute(x, **kw)[0].sum(0)
            else:
                out = NoiseTunnel(ig).attribute(x, nt_type="smoothgrad", nt_samples=p["nt_samples"],
                                                stdevs=p["stdevs"], **kw)[0].sum(0)
        else:
            out = FeatureAblation(f).attribute(x, feature_mask=seg, baselines=0.0,
                                               perturbations_per_eval=p["perturbations_per_eval"])[0, 0]
    if progress is not None:
        progress(1, 1)
    return out.detach().float().cpu().numpy()


def _forwards(name: str, p: dict, n_segments: int) -> int:
    """How many forwards a method makes (captum batches IG steps and ablated segments)."""
    steps = -(-p.get("n_steps", 1) // p.get("internal_batch_size", 1))
    if name == "ig":
        return steps
    if name == "smoothgrad":
        return p["nt_samples"] * steps
    if name == "ablation":
        return 1 + -(-n_segments // p["perturbations_per_eval"])  # the unablated forward first
    return 1


def _head_gradcam(f: Callable[[torch.Tensor], torch.Tensor], attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Grad-CAM on an MiT attention layer: the heads' output (``proj``'s input, ``[1, tokens, C]``)
    is the layer's activation, its channels weighted by their mean gradient and summed per token,
    ReLU'd, on the stage's token grid ``[1, 1, h, w]`` (h·w = tokens, the image's aspect ratio)."""
    store: dict[str, torch.Tensor] = {}

    def keep(_module, args):
        store["a"] = args[0]
        args[0].retain_grad()

    handle = attn.proj.register_forward_pre_hook(keep)
    try:
        y = f(x.detach().clone().requires_grad_(True))
        y.sum().backward()
    finally:
        handle.remove()
    a = store["a"]
    alpha = a.grad.mean(1, keepdim=True)  # [1, 1, C]
    cam = torch.relu((a * alpha).sum(-1))  # [1, tokens]
    h_img, w_img = x.shape[-2:]
    tokens = cam.shape[1]
    h = max(1, round((tokens * h_img / w_img) ** 0.5))
    if tokens % h:
        raise ConfigError(f"cannot lay {tokens} tokens on a grid of the image's aspect ratio")
    return cam.reshape(1, 1, h, tokens // h).detach()


# ------------------------------------------------------------------------------------------- units
def unit_contributions(model: nn.Module, image: torch.Tensor, class_id: int, mask: np.ndarray, layer: str,
                       plan: PruningPlan | None = None) -> np.ndarray:
    """Gradient × activation of every unit of ``layer`` for the region target, summed over the image:
    float64 ``[units]`` — the first-order estimate of how much the target *falls* when the unit's
    output is zeroed (what its soft mask does): positive = the unit supports the target, a masked
    unit gives exactly 0.
    Filters: a BN layer's output channels; heads: an MiT attention's slices of ``proj``'s input."""
    from captum.attr import LayerGradientXActivation

    from npdg.models.gates import attention_modules, head_dim

    x = image.detach().clone()
    region = check_region(mask, tuple(x.shape[-2:]))
    f = region_forward(model, plan, class_id, region)
    module = _unit_module(model, layer)
    heads = attention_modules(model)
    with torch.enable_grad():
        if layer in heads:
            attn = heads[layer]
            a = LayerGradientXActivation(f, attn.proj).attribute(x, attribute_to_layer_input=True)
            a = a[0] if isinstance(a, tuple) else a
            hd = head_dim(attn)
            per = a[0].reshape(a.shape[1], -1, hd).sum((0, 2))  # tokens × heads × head_dim → heads
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            a = LayerGradientXActivation(f, module).attribute(x)
            per = a[0].sum((-2, -1))
        else:
            raise ConfigError(f"{layer} is no unit layer (a BN or an MiT attention module)")
    return per.detach().double().cpu().numpy()


__all__ = ["METHODS", "Method", "Param", "check_region", "method", "pixel_attribution", "region_forward", "segments",
           "unit_contributions"]
