"""Evaluation: confusion matrices, whole/sliding-window inference, protocol presets, mIoU reports.

Scores follow docs/method.md §6 and the official Cityscapes evaluator: one confusion matrix per dataset
(never a mean of per-image scores), 19 train classes, label 255 ignored, IoU per class, and mIoU =
mean over the classes whose union of ground truth and prediction is non-empty (a class absent from
both is left out, as cityscapesscripts and mmseg do; its IoU is reported as ``null``).

Two protocol families exist in the literature and their numbers are not comparable, so every result
records the protocol it was computed with (resize policy per dataset, crop, mode, classes,
checkpoint, seed and the resolution actually fed to the model):

``robustnet`` (RobustNet, CVPR 2021 / SHADE, ECCV 2022 — ``datasets/__init__.py`` of
    shachoi/RobustNet): Cityscapes val at its native 2048×1024, BDD100K at native 1280×720,
    GTA5/SYNTHIA native, Mapillary resized to height 1536 (bicubic; labels nearest) then centre
    crop-padded to 1536×1536. Whole-image inference, scored at the input resolution.
``mmseg`` (mmseg 1.x / Rein, CVPR 2024 — ``configs/_base_/datasets/*_512x512.py`` of w1oves/Rein):
    ``Resize(scale=(1024, 512), keep_ratio=True)`` for Cityscapes and Mapillary and
    ``(1280, 720)`` for BDD100K and GTA5 (rescale to fit long ≤ L and short ≤ S, bilinear), sliding
    window 512×512 with stride 341, logits resized back to the *original* label size and scored
    there (mmseg loads annotations after ``Resize``). SYNTHIA (not in Rein) stays native.

Synthetic (embedded) domains are evaluated at their native size under both presets.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from npdg.config import Config
from npdg.data.io import write_png
from npdg.data.specs import default_targets as default_target_specs
from npdg.data.specs import extra_eval_specs, is_averaged, open_dataset, parse_spec, spec_name
from npdg.data.synthetic import SOURCE_DOMAIN
from npdg.errors import ConfigError, DataError
from npdg.labels import CLASS_NAMES, IGNORE, NUM_CLASSES, colorize, train_ids_to_ids

MODES: tuple[str, ...] = ("whole", "slide")
SCORE_AT: tuple[str, ...] = ("input", "label")
AMP_CHOICES: tuple[str, ...] = ("auto", "bf16", "fp16", "off")


# ================================================================================= confusion matrix


class ConfusionMatrix:
    """A ``[C, C]`` int64 histogram (rows: ground truth, columns: prediction) kept on one device.

    ``update`` never synchronizes with the host: on CPU it uses ``torch.bincount``; on accelerators
    it uses ``index_add_`` (``torch.bincount`` on CUDA reads the input's min and max back to the
    host to size its output). Ignored pixels go to a spare bin. Label values that are neither a
    class nor ``ignore_index`` are counted in ``invalid`` and make :meth:`check` raise, so a wrongly
    decoded dataset is never scored silently.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE, device=None):
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.mat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)
        self.invalid = torch.zeros((), dtype=torch.int64, device=device)

    @property
    def device(self) -> torch.device:
        return self.mat.device

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> ConfusionMatrix:
        """Add a batch: ``pred`` and ``target`` are integer tensors of the same shape (any)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(target.shape)} differ in shape")
        c = self.num_classes
        # int64 scatter is patchy on MPS: count there on the CPU instead
        work = torch.device("cpu") if self.device.type == "mps" else self.device
        pred = pred.to(work, torch.int64).reshape(-1)
        target = target.to(work, torch.int64).reshape(-1)
        labelled = target != self.ignore_index
        in_range = (target >= 0) & (target < c) & (pred >= 0) & (pred < c)
        spare = c * c
        idx = torch.where(labelled & in_range, target * c + pred, torch.full_like(target, spare))
        counts = torch.bincount(idx, minlength=spare + 1) if work.type == "cpu" else _histogram(idx, spare + 1)
        self.mat += counts[:spare].view(c, c).to(self.device)
        self.invalid += (labelled & ~in_range).sum().to(self.device)
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum over processes when ``torch.distributed`` is initialized (no-op otherwise)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat)
            dist.all_reduce(self.invalid)
        return self

    def check(self) -> None:
        """Raise :class:`DataError` if any labelled pixel held an id outside 0..C-1."""
        bad = int(self.invalid)
        if bad:
            raise DataError(
                f"{bad} labelled pixels hold ids outside 0..{self.num_classes - 1} (and are not "
                f"{self.ignore_index}): the labels are not train ids — check the dataset decoding"
            )

    def numpy(self) -> np.ndarray:
        return self.mat.detach().cpu().numpy()

    def iou(self) -> np.ndarray:
        """Per-class IoU (float64); NaN where the class is in neither ground truth nor prediction."""
        m = self.numpy().astype(np.float64)
        inter = np.diag(m)
        union = m.sum(0) + m.sum(1) - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes with a non-empty union (NaN if there is none)."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan

    def pixel_accuracy(self) -> float:
        """Correct labelled pixels / labelled pixels (NaN if none is labelled)."""
        m = self.numpy()
        total = m.sum()
        return float(np.trace(m) / total) if total else math.nan


def _histogram(idx: torch.Tensor, bins: int) -> torch.Tensor:
    """``torch.bincount(idx, minlength=bins)`` without a host sync (``idx`` < ``bins``)."""
    counts = torch.zeros(bins, dtype=torch.int64, device=idx.device)
    return counts.index_add_(0, idx, torch.ones_like(idx))


# ================================================================================= inference


def _check_pair(name: str, value) -> tuple[int, int]:
    if value is None or len(value) != 2 or min(int(v) for v in value) < 1:
        raise ConfigError(f"{name} must be two positive integers (H, W), got {value!r}")
    return int(value[0]), int(value[1])


def slide_windows(size: tuple[int, int], crop: tuple[int, int], stride: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Windows ``(y1, y2, x1, x2)`` of mmseg's ``slide_inference`` for an image of ``size``.

    The grid covers the image; the last window in each direction is shifted back to end at the
    border; crops larger than the image shrink to it.
    """
    (h, w), (ch, cw), (sh, sw) = size, crop, stride
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    out = []
    for r in range(rows):
        for c in range(cols):
            y1, x1 = r * sh, c * sw
            y2, x2 = min(y1 + ch, h), min(x1 + cw, w)
            out.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
    return out


def predict(
    model: nn.Module,
    images: torch.Tensor,
    mode: str = "whole",
    crop: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Logits ``[B, C, H, W]`` (float32) for images ``[B, 3, H, W]`` in [0, 1].

    ``whole`` runs the model once. ``slide`` runs it on ``crop``-sized windows every ``stride``
    pixels and averages the logits where windows overlap (mmseg's ``slide_inference``).
    """
    if mode == "whole":
        return model(images).float()
    if mode != "slide":
        raise ConfigError(f"unknown inference mode {mode!r}; valid: {', '.join(MODES)}")
    crop, stride = _check_pair("crop", crop), _check_pair("stride", stride)
    h, w = images.shape[-2:]
    logits = count = None
    for y1, y2, x1, x2 in slide_windows((h, w), crop, stride):
        out = model(images[..., y1:y2, x1:x2]).float()
        if logits is None:
            logits = images.new_zeros((images.shape[0], out.shape[1], h, w), dtype=torch.float32)
            count = images.new_zeros((1, 1, h, w), dtype=torch.float32)
        logits[..., y1:y2, x1:x2] += out
        count[..., y1:y2, x1:x2] += 1
    return logits / count


# ================================================================================= protocols


@dataclass(frozen=True)
class ResizePolicy:
    """How one dataset's images are sized before inference.

    ``kind``: ``native`` (as stored), ``resize`` (exactly ``size`` = (H, W)), ``fit`` (keep the
    aspect ratio, scale so that the long side ≤ ``size[1]`` and the short side ≤ ``size[0]``:
    mmseg's ``Resize(scale=(long, short), keep_ratio=True)``), ``height`` (height = ``size[0]``,
    width ``floor(w · H / h)``: RobustNet's ``ResizeHeight``). ``crop``: centre crop after
    resizing, padding with 0 (image) / 255 (label) where the image is smaller (``CenterCropPad``).
    """

    kind: str = "native"
    size: tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    interpolation: str = "bilinear"
    antialias: bool = False

    def __post_init__(self):
        if self.kind not in {"native", "resize", "fit", "height"}:
            raise ConfigError(f"unknown resize policy {self.kind!r}; valid: native, resize, fit, height")
        if self.kind != "native" and self.size is None:
            raise ConfigError(f"resize policy {self.kind!r} needs a size")
        if self.interpolation not in {"bilinear", "bicubic", "area"}:
            raise ConfigError(f"unknown interpolation {self.interpolation!r}")

    def target_size(self, h: int, w: int) -> tuple[int, int]:
        """(H, W) the image is resized to (before the optional crop)."""
        if self.kind == "native":
            return h, w
        if self.kind == "resize":
            return self.size
        if self.kind == "height":
            return self.size[0], max(1, int(w * self.size[0] / h))
        short, long = self.size  # fit
        scale = min(long / max(h, w), short / min(h, w))
        return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))

    def describe(self) -> str:
        text = {
            "native": "native size",
            "resize": f"resize to {_hw(self.size)}",
            "fit": f"keep ratio, fit short ≤ {self.size[0] if self.size else ''} and long ≤ {self.size[1] if self.size else ''}",
            "height": f"resize height to {self.size[0] if self.size else ''}",
        }[self.kind]
        if self.kind != "native":
            text += f" ({self.interpolation}{', antialias' if self.antialias else ''})"
        if self.crop:
            text += f", centre crop {_hw(self.crop)}"
        return text


def _hw(size) -> str:
    return f"{size[0]}x{size[1]}" if size else "native"


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: per-dataset resize policies, inference mode, where labels are scored.

    ``policies`` maps dataset names (``cityscapes``, ``bdd100k``, ``mapillary``, ``gta5``,
    ``synthia``) to a :class:`ResizePolicy`; other domains (the synthetic ones) use ``default``.
    ``score_at``: ``input`` scores at the resolution fed to the model (labels resized with the
    image, nearest neighbour) — RobustNet; ``label`` resizes the logits (bilinear) back to the
    label's stored size and scores there — mmseg.
    """

    name: str
    policies: tuple[tuple[str, ResizePolicy], ...] = ()
    default: ResizePolicy = ResizePolicy()
    mode: str = "whole"
    crop: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    score_at: str = "input"
    description: str = ""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"unknown inference mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.mode == "slide":
            _check_pair("crop", self.crop)
            _check_pair("stride", self.stride)
        if self.score_at not in SCORE_AT:
            raise ConfigError(f"score_at must be one of {', '.join(SCORE_AT)}; got {self.score_at!r}")
        if self.score_at == "label" and (any(p.crop for _, p in self.policies) or self.default.crop):
            raise ConfigError("a centre crop needs score_at='input' (the label must be cropped with the image)")

    def policy_for(self, domain: str) -> ResizePolicy:
        return dict(self.policies).get(domain.lower(), self.default)

    def with_mode(self, mode: str, crop=None, stride=None) -> Protocol:
        """The same protocol with another inference mode; a changed protocol gets a changed name.

        ``slide`` keeps the preset's crop/stride unless given (default 512×512, stride 2/3 crop).
        """
        if mode == "whole":
            crop = stride = None
        else:
            crop = tuple(crop or self.crop or (512, 512))
            stride = tuple(stride or self.stride or tuple(max(1, round(c * 2 / 3)) for c in crop))
        if (mode, crop, stride) == (self.mode, self.crop, self.stride):
            return self
        suffix = mode if mode == "whole" else f"slide{_hw(crop)}s{_hw(stride)}"
        return dataclasses.replace(self, name=f"{self.name}+{suffix}", mode=mode, crop=crop, stride=stride)

    def with_size(self, size: tuple[int, int]) -> Protocol:
        """Every domain resized to exactly ``size`` (H, W), scored at that size (``--size``)."""
        policy = ResizePolicy("resize", tuple(size))
        return dataclasses.replace(
            self, name=f"{self.name}+resize{_hw(size)}", policies=(), default=policy, score_at="input"
        )

    def to_dict(self, domains: Iterable[str] = ()) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode,
            "crop": list(self.crop) if self.crop else None,
            "stride": list(self.stride) if self.stride else None,
            "score_at": self.score_at,
            "resize": {d: self.policy_for(d).describe() for d in domains},
            "description": self.description,
        }


ROBUSTNET = Protocol(
    name="robustnet",
    policies=(
        ("cityscapes", ResizePolicy("native")),
        ("bdd100k", ResizePolicy("native")),
        ("gta5", ResizePolicy("native")),
        ("synthia", ResizePolicy("native")),
        ("mapillary", ResizePolicy("height", (1536, 0), crop=(1536, 1536), interpolation="bicubic", antialias=True)),
    ),
    mode="whole",
    score_at="input",
    description="RobustNet/SHADE: Cityscapes 2048x1024, BDD 1280x720 (native), Mapillary height 1536 + "
    "centre crop 1536x1536; whole image; scored at the input resolution",
)
MMSEG = Protocol(
    name="mmseg",
    policies=(
        ("cityscapes", ResizePolicy("fit", (512, 1024))),
        ("mapillary", ResizePolicy("fit", (512, 1024))),
        ("bdd100k", ResizePolicy("fit", (720, 1280))),
        ("gta5", ResizePolicy("fit", (720, 1280))),
    ),
    mode="slide",
    crop=(512, 512),
    stride=(341, 341),
    score_at="label",
    description="mmseg/Rein: Cityscapes/Mapillary fit 1024x512, BDD/GTA5 fit 1280x720 (keep ratio); slide "
    "512x512 stride 341; logits resized to the original label size",
)
PROTOCOLS: dict[str, Protocol] = {"robustnet": ROBUSTNET, "mmseg": MMSEG}


def get_protocol(name: str | Protocol) -> Protocol:
    """A preset by name (``robustnet``, ``mmseg``); a :class:`Protocol` is returned as is."""
    if isinstance(name, Protocol):
        return name
    try:
        return PROTOCOLS[str(name).lower()]
    except KeyError:
        raise ConfigError(f"unknown evaluation protocol {name!r}; valid: {', '.join(PROTOCOLS)}") from None


# ================================================================================= results


@dataclass(frozen=True)
class DomainResult:
    """Scores of one domain; ``confusion`` is the raw ``[C, C]`` matrix (rows: ground truth)."""

    domain: str
    miou: float
    per_class_iou: dict[str, float]
    pixel_acc: float
    num_images: int
    confusion: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "miou": _json_float(self.miou),
            "per_class_iou": {k: _json_float(v) for k, v in self.per_class_iou.items()},
            "pixel_acc": _json_float(self.pixel_acc),
            "num_images": int(self.num_images),
        }


@dataclass(frozen=True)
class EvalResult:
    """Per-domain results, the targets and their mean mIoU, and the protocol record."""

    protocol: dict[str, Any]
    results: dict[str, DomainResult]
    targets: tuple[str, ...]
    mean_target_miou: float

    def to_dict(self) -> dict[str, Any]:
        """``{"protocol": {...}, "results": {domain: {...}}, "mean_target_miou": float}``; NaN → null."""
        return {
            "protocol": dict(self.protocol),
            "results": {d: r.to_dict() for d, r in self.results.items()},
            "mean_target_miou": _json_float(self.mean_target_miou),
        }

    def table(self) -> pd.DataFrame:
        """One row per domain: domain, role (source/target), miou, pixel_acc, num_images."""
        rows = [
            {"domain": d, "role": "target" if d in self.targets else "source", "miou": r.miou,
             "pixel_acc": r.pixel_acc, "num_images": r.num_images}
            for d, r in self.results.items()
        ]
        return pd.DataFrame(rows, columns=["domain", "role", "miou", "pixel_acc", "num_images"])

    def per_class_frame(self) -> pd.DataFrame:
        """Tidy per-class IoU: columns domain, class, iou (NaN for classes absent from both)."""
        rows = [{"domain": d, "class": c, "iou": v} for d, r in self.results.items() for c, v in r.per_class_iou.items()]
        return pd.DataFrame(rows, columns=["domain", "class", "iou"])


def _json_float(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def class_names(num_classes: int) -> tuple[str, ...]:
    return CLASS_NAMES if num_classes == NUM_CLASSES else tuple(f"class_{i}" for i in range(num_classes))


def domain_result(domain: str, cm: ConfusionMatrix, num_images: int) -> DomainResult:
    """Summarize a (reduced) confusion matrix."""
    cm.check()
    iou = cm.iou()
    return DomainResult(
        domain=domain,
        miou=cm.miou(),
        per_class_iou={n: float(v) for n, v in zip(class_names(cm.num_classes), iou, strict=True)},
        pixel_acc=cm.pixel_accuracy(),
        num_images=int(num_images),
        confusion=cm.numpy(),
    )


# ================================================================================= the loop


def _resize(x: torch.Tensor, size: tuple[int, int], policy: ResizePolicy) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    kw = {"align_corners": False, "antialias": policy.antialias} if policy.interpolation != "area" else {}
    return F.interpolate(x[None], size=size, mode=policy.interpolation, **kw)[0].clamp_(0, 1)


def _center_crop_pad(x: torch.Tensor, size: tuple[int, int], fill: float) -> torch.Tensor:
    """Centre ``size`` window of ``[..., H, W]``; sides smaller than ``size`` are padded with ``fill``."""
    h, w = x.shape[-2:]
    th, tw = size
    ph, pw = max(0, th - h), max(0, tw - w)
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=fill)
        h, w = x.shape[-2:]
    y, x0 = (h - th) // 2, (w - tw) // 2
    return x[..., y : y + th, x0 : x0 + tw]


def prepare_sample(
    image: torch.Tensor, label: torch.Tensor, policy: ResizePolicy, score_at: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a resize policy: (model input ``[3, h, w]``, label to score against ``[H', W']``)."""
    h, w = image.shape[-2:]
    size = policy.target_size(h, w)
    image = _resize(image.float(), size, policy)
    label = label.long()
    if score_at == "input" and tuple(label.shape[-2:]) != tuple(size):
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    if policy.crop:
        image = _center_crop_pad(image, policy.crop, 0.0)
        label = _center_crop_pad(label, policy.crop, IGNORE)
    return image, label


def _group_by_shape(items: Sequence[tuple]) -> list[list[int]]:
    """Indices of consecutive items grouped by (input shape, label shape), order preserved."""
    groups: dict[tuple, list[int]] = {}
    for i, (inp, lab, _) in enumerate(items):
        groups.setdefault((tuple(inp.shape), tuple(lab.shape)), []).append(i)
    return list(groups.values())


def native_bf16(device: torch.device | str) -> bool:
    """Whether bf16 arithmetic runs natively on ``device``: CUDA with bf16 support, or a CPU with AMX
    tiles or AVX512-BF16 (the oneDNN kernels that make bf16 convolutions ~2× faster than fp32 there;
    elsewhere bf16 is emulated and slower, so it is not used)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    probes = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(bool(p()) for p in probes if p is not None)


def amp_context(device: torch.device | str, amp: str):
    """(autocast context, the precision used) for inference on ``device``.

    ``amp``: ``auto`` (CUDA: bf16 where supported, else fp16; CPU: off, so CPU numbers stay exact
    fp32), ``bf16`` (CUDA, or a CPU where :func:`native_bf16`; otherwise off), ``fp16`` (CUDA only;
    off elsewhere) or ``off``. The precision actually used is returned so results can record it.
    """
    if amp not in AMP_CHOICES:
        raise ConfigError(f"amp must be one of {', '.join(AMP_CHOICES)}; got {amp!r}")
    device = torch.device(device)
    if amp == "off" or device.type not in ("cuda", "cpu"):
        return nullcontext(), "off"
    if device.type == "cpu":
        if amp == "bf16" and native_bf16(device):
            return torch.autocast("cpu", dtype=torch.bfloat16), "bf16"
        return nullcontext(), "off"
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype), amp


@contextmanager
def _inference_state(model: nn.Module, device: torch.device, channels_last: bool):
    """Eval mode (and channels_last) for the duration; the caller's train mode/format come back."""
    was_training = model.training
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.eval()
    try:
        yield
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)


def export_prediction(pred: np.ndarray, export_dir: str | Path, domain: str, index: int) -> None:
    """Write ``DIR/<domain>/{index:06d}_labelIds.png`` (Cityscapes ids) and ``_color.png``."""
    out = Path(export_dir) / domain
    pred = pred.astype(np.uint8)
    write_png(out / f"{int(index):06d}_labelIds.png", train_ids_to_ids(pred))  # atomic, like every npdg write
    write_png(out / f"{int(index):06d}_color.png", colorize(pred))


def _shard(dataset: Dataset, limit: int | None) -> Dataset:
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    indices = range(n)
    if dist.is_available() and dist.is_initialized():
        indices = range(dist.get_rank(), n, dist.get_world_size())
    return dataset if (n == len(dataset) and len(indices) == n) else Subset(dataset, list(indices))


def _default_source(domains: Iterable[str]) -> str | None:
    return SOURCE_DOMAIN if SOURCE_DOMAIN in set(domains) else None


def _evaluate_domain(
    model, domain, dataset, protocol, batch_size, device, amp_ctx, tick, export_dir, num_workers, channels_last
) -> tuple[ConfusionMatrix, int, set, set]:
    """Run one domain; return (confusion, images, input sizes seen, splits seen)."""
    policy = protocol.policy_for(domain)
    cm = ConfusionMatrix(model_num_classes(model), IGNORE, device=device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=list)
    count, sizes, splits = 0, set(), set()
    for samples in loader:
        items = []
        for s in samples:
            inp, lab = prepare_sample(s["image"].to(device, non_blocking=True), s["label"].to(device, non_blocking=True),
                                      policy, protocol.score_at)
            items.append((inp, lab, int(s.get("index", count + len(items)))))
            sizes.add(tuple(inp.shape[-2:]))
            splits.add(str(s.get("split", "")))
        for group in _group_by_shape(items):
            images = torch.stack([items[i][0] for i in group])
            labels = torch.stack([items[i][1] for i in group])
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), amp_ctx:
                logits = predict(model, images, protocol.mode, protocol.crop, protocol.stride)
            if logits.shape[-2:] != labels.shape[-2:]:
                logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            pred = logits.argmax(1)
            cm.update(pred, labels)
            if export_dir is not None:
                host = pred.to(torch.uint8).cpu().numpy()
                for j, i in enumerate(group):
                    export_prediction(host[j], export_dir, domain, items[i][2])
        count += len(samples)
        tick(len(samples))
    return cm, count, sizes, splits


def model_num_classes(model: nn.Module) -> int:
    """The model's class count (looks through DDP/DataParallel wrappers); 19 if it does not say."""
    n = getattr(getattr(model, "module", model), "num_classes", None)
    return int(n) if n else NUM_CLASSES


def default_targets(names: Sequence[str], source: str | None) -> tuple[str, ...]:
    """The domains averaged into ``mean_target_miou`` when none are named: every evaluated domain
    except the source and the synthetic content-shift domain (``suburb``), which is still evaluated and
    reported — NPDG targets style shift, so layout shift is shown apart (docs/method.md §7)."""
    return tuple(d for d in names if is_averaged(d, source))


def evaluate(
    model: nn.Module,
    datasets: Mapping[str, Dataset],
    protocol: Protocol | str = "robustnet",
    batch_size: int = 1,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
    limit: int | None = None,
    export_dir: str | Path | None = None,
    targets: Sequence[str] | None = None,
    *,
    source: str | None = None,
    checkpoint: str | None = None,
    seed: int | None = None,
    amp: str = "auto",
    channels_last: bool | None = None,
    num_workers: int = 0,
) -> EvalResult:
    """Evaluate ``model`` on every dataset (domain name → dataset of the npdg sample contract).

    ``protocol``: a :class:`Protocol` or preset name. ``device``: moves the model there (default:
    the model's own device); eval mode and channels_last (CUDA) hold only during the call.
    ``limit``: first N images of each domain. ``targets``: the domains averaged into
    ``mean_target_miou`` — by default every domain but ``source`` (default source: the synthetic
    source domain when present). ``amp``: see :func:`amp_context` (auto = bf16, else fp16, on CUDA; exact fp32 on CPU).
    ``channels_last``: default on CUDA, except for a DistributedDataParallel-wrapped model (changing
    its parameters' layout mid-training would desynchronize DDP's gradient buckets).
    ``checkpoint`` and ``seed`` are recorded in the protocol record. Under ``torch.distributed``
    each rank scores a shard and the confusion matrices are summed.
    """
    protocol = get_protocol(protocol)
    if not datasets:
        raise ConfigError("evaluate needs at least one dataset")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}")
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    names = list(datasets)
    source = source if source is not None else _default_source(names)
    targets = tuple(targets) if targets is not None else default_targets(names, source)
    unknown = [t for t in targets if t not in datasets]
    if unknown:
        raise ConfigError(f"target domains {unknown} are not among the evaluated domains {names}")
    shards = {d: _shard(ds, limit) for d, ds in datasets.items()}
    total = sum(len(s) for s in shards.values())
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    amp_ctx, amp_used = amp_context(device, amp)
    if channels_last is None:
        channels_last = device.type == "cuda" and not isinstance(model, nn.parallel.DistributedDataParallel)
    results, resolution, splits = {}, {}, {}
    with _inference_state(model, device, channels_last=channels_last):
        for domain, ds in shards.items():
            cm, n, sizes, seen_splits = _evaluate_domain(
                model, domain, ds, protocol, batch_size, device, amp_ctx, tick, export_dir, num_workers, channels_last
            )
            cm.all_reduce()
            n = _all_reduce_int(n, device)
            results[domain] = domain_result(domain, cm, n)
            resolution[domain] = _hw(next(iter(sizes))) if len(sizes) == 1 else ("varied" if sizes else None)
            splits[domain] = next(iter(seen_splits)) if len(seen_splits) == 1 else sorted(seen_splits)
    mious = [results[t].miou for t in targets if math.isfinite(results[t].miou)]
    record = {
        **protocol.to_dict(names),
        "resolution": resolution,
        "split": splits,
        "classes": list(class_names(model_num_classes(model))),
        "ignore_index": IGNORE,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "seed": seed,
        "limit": limit,
        "source": source,
        "targets": list(targets),
        "amp": amp_used,
        "device": str(device),
    }
    return EvalResult(record, results, targets, float(np.mean(mious)) if mious else math.nan)


def _all_reduce_int(n: int, device: torch.device) -> int:
    if dist.is_available() and dist.is_initialized():
        t = torch.tensor(n, dtype=torch.int64, device=device)
        dist.all_reduce(t)
        return int(t)
    return n


# --------------------------------------------------------------------------------------------------
# evaluation of a run config (what training does at its end)
# --------------------------------------------------------------------------------------------------
def protocol_of(cfg: Config) -> Protocol:
    """The evaluation protocol preset named by ``eval.protocol`` (ConfigError if unknown)."""
    return get_protocol(cfg.eval.protocol)


def _eval_size(spec: str, cfg: Config) -> tuple[int, int] | None:
    """Synthetic domains are rendered at ``data.size``; real datasets stay native (the protocol sizes them)."""
    return None if parse_spec(spec).is_real else cfg.data.size


def config_targets(cfg: Config) -> list[str]:
    """The target specs of a run: ``data.targets``, or the default held-out domains of its source."""
    return list(cfg.data.targets) if cfg.data.targets else default_target_specs(cfg.data.source)


def evaluate_config(model: nn.Module, cfg: Config, device: torch.device, limit: int | None,
                    datasets: dict[str, Dataset] | None = None, checkpoint: str | None = None) -> dict[str, Any]:
    """Evaluate on the source's eval split (if ``eval.include_source``) and every target of ``cfg``.

    Returns ``EvalResult.to_dict()`` plus a ``summary`` with ``source_miou`` and ``mean_target_miou``
    (what ``runs list`` shows). Under torch.distributed every rank evaluates a shard and the
    confusion matrices are all-reduced by :func:`evaluate`.
    """
    source = spec_name(cfg.data.source)
    if datasets is None:
        datasets = {}
        if cfg.eval.include_source:
            datasets[source] = open_dataset(cfg.data.source, cfg.data.eval_split, _eval_size(cfg.data.source, cfg))
        for spec in config_targets(cfg) + extra_eval_specs(cfg.data.source, cfg.data.targets):
            datasets.setdefault(spec_name(spec), open_dataset(spec, cfg.data.eval_split, _eval_size(spec, cfg)))
        targets = [spec_name(spec) for spec in config_targets(cfg) if spec_name(spec) != source]
    else:
        targets = [name for name in datasets if name != source]
    result = evaluate(model, datasets, protocol_of(cfg), cfg.eval.batch_size, device, limit=limit, targets=targets,
                      source=source, seed=cfg.train.seed, checkpoint=checkpoint)
    out = result.to_dict()
    results = out.get("results", {})
    out["summary"] = {
        "source": source,
        "source_miou": results.get(source, {}).get("miou"),
        "mean_target_miou": out.get("mean_target_miou"),
        "targets": targets,
    }
    return out
