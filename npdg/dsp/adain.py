"""AdaIN building blocks: style statistics, AdaIN, the frozen style encoders and the mirrored decoder.

An encoder is described by a *plan*: a list of ops ``("conv", c_in, c_out)``, ``("pool",)`` and
``("tap", name)``. The plan of VGG-19 up to relu4_1 (taps relu1_1, relu2_1, relu3_1, relu4_1) is
the one AdaIN/RAIN use; ``tiny`` is a small VGG-style plan for the embedded default. Every encoder
starts with a 1×1 input conv (``pre``): in the AdaIN "normalised VGG" file this conv is learnt; for
torchvision's VGG-19 it holds the fixed ImageNet normalisation; for ``tiny`` it is trained. The
decoder mirrors the plan (convs reversed, pools → nearest ×2 upsampling, reflection padding,
conv+ReLU, no activation after the last conv) — for VGG-19 this is exactly AdaIN's decoder.

Weights for ``vgg19`` come only from a local file (never downloaded): either the AdaIN
``vgg_normalised.pth`` (keys ``0.weight, 2.weight, 5.weight, ...``) or torchvision's ``vgg19`` state
dict (keys ``features.N.weight``). :func:`load_vgg19_weights` detects which.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from npdg.errors import ConfigError, DataError, NpdgError
from npdg.models.weights import read_state_dict
from npdg.runs import torch_load

#: Added to the spatial variance before the square root (AdaIN/RAIN's 1e-5).
STAT_EPS = 1e-5
ENCODER_KINDS: tuple[str, ...] = ("vgg19", "tiny")
#: Default channels of the tiny encoder's three stages.
TINY_CHANNELS: tuple[int, ...] = (16, 32, 64)
VGG19_TAPS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
#: ImageNet normalisation expected by torchvision's VGG-19.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Op = tuple  # ("conv", c_in, c_out) | ("pool",) | ("tap", name)


# --------------------------------------------------------------------------------------------------
# statistics and AdaIN
# --------------------------------------------------------------------------------------------------
def style_stats(feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over space of ``feat`` ``[B, C, H, W]`` → two ``[B, C]`` tensors.

    ``sigma = sqrt(var + 1e-5)`` with the population variance (not Bessel-corrected, so a 1×1
    feature map gives a finite σ instead of NaN).
    """
    if feat.dim() != 4:
        raise ValueError(f"style_stats needs a [B, C, H, W] feature map, got shape {tuple(feat.shape)}")
    flat = feat.flatten(2)
    mu = flat.mean(dim=2)
    sigma = (flat.var(dim=2, correction=0) + STAT_EPS).sqrt()
    return mu, sigma


def style_vector(feat: torch.Tensor) -> torch.Tensor:
    """``s(f) = [μ(f), σ(f)]``: the ``[B, 2C]`` style vector the D-VAE models."""
    mu, sigma = style_stats(feat)
    return torch.cat([mu, sigma], dim=1)


def check_alpha(alpha: float) -> float:
    """Validate the content strength α ∈ [0, 1] (ConfigError otherwise)."""
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ConfigError(f"alpha (style strength) must be a number in [0, 1], got {alpha!r}") from None
    if not 0.0 <= a <= 1.0:
        raise ConfigError(f"alpha (style strength) must be in [0, 1], got {alpha}")
    return a


def adain(content_feat: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``σ̂ · (f_c − μ(f_c)) / σ(f_c) + μ̂`` with target statistics ``mu``, ``sigma`` (``[B, C]``)."""
    c_mu, c_sigma = style_stats(content_feat)
    b, c = content_feat.shape[:2]
    if mu.shape != (b, c) or sigma.shape != (b, c):
        raise ValueError(
            f"adain: target statistics must be [{b}, {c}], got mu {tuple(mu.shape)}, sigma {tuple(sigma.shape)}"
        )
    normalized = (content_feat - c_mu[..., None, None]) / c_sigma[..., None, None]
    return normalized * sigma[..., None, None] + mu[..., None, None]


def adain_blend(content_feat: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Content strength: ``t = α · AdaIN(f_c; μ, σ) + (1 − α) · f_c`` (α = 0 returns ``f_c``)."""
    a = check_alpha(alpha)
    if a == 0.0:
        return content_feat
    t = adain(content_feat, mu, sigma)
    return t if a == 1.0 else a * t + (1.0 - a) * content_feat


# --------------------------------------------------------------------------------------------------
# plans
# --------------------------------------------------------------------------------------------------
def vgg19_plan() -> list[Op]:
    """VGG-19 ``features`` up to relu4_1, with AdaIN's four style taps."""
    return [
        ("conv", 3, 64), ("tap", "relu1_1"), ("conv", 64, 64), ("pool",),
        ("conv", 64, 128), ("tap", "relu2_1"), ("conv", 128, 128), ("pool",),
        ("conv", 128, 256), ("tap", "relu3_1"), ("conv", 256, 256), ("conv", 256, 256), ("conv", 256, 256),
        ("pool",),
        ("conv", 256, 512), ("tap", "relu4_1"),
    ]  # fmt: skip


def tiny_plan(channels: Sequence[int] = TINY_CHANNELS) -> list[Op]:
    """A small VGG-style plan: one stage per channel count (conv, tap, [conv], pool), ½ resolution
    per stage after the first, so three stages put the last tap at ¼ resolution."""
    channels = [int(c) for c in channels]
    if len(channels) < 1 or any(c < 1 for c in channels):
        raise ConfigError(f"tiny encoder channels must be positive integers, got {list(channels)}")
    plan: list[Op] = []
    c_in = 3
    for i, c in enumerate(channels):
        if i > 0:
            plan.append(("pool",))
        plan.append(("conv", c_in, c))
        plan.append(("tap", f"relu{i + 1}_1"))
        if i < len(channels) - 1:
            plan.append(("conv", c, c))
        c_in = c
    return plan


def _conv(c_in: int, c_out: int, kernel: int = 3) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, padding_mode="reflect" if kernel > 1 else "zeros")


# --------------------------------------------------------------------------------------------------
# encoder and decoder
# --------------------------------------------------------------------------------------------------
class StyleEncoder(nn.Module):
    """A VGG-style encoder that returns the features at its taps (ReLU outputs).

    ``forward(x)`` → list of tap features (shallow → deep); ``encode(x)`` → last tap only.
    Input images are RGB in [0, 1] with H, W divisible by :attr:`divisor`.
    """

    def __init__(self, kind: str, plan: Sequence[Op]) -> None:
        super().__init__()
        self.kind = kind
        self.plan: list[Op] = [tuple(op) for op in plan]
        while self.plan and self.plan[-1][0] != "tap":  # nothing after the last tap is ever used
            self.plan.pop()
        if not any(op[0] == "tap" for op in self.plan):
            raise ConfigError(f"encoder {kind!r} has no style tap")
        self.pre = nn.Conv2d(3, 3, 1)
        nn.init.zeros_(self.pre.bias)
        with torch.no_grad():
            self.pre.weight.copy_(torch.eye(3)[..., None, None])
        self.convs = nn.ModuleList([_conv(op[1], op[2]) for op in self.plan if op[0] == "conv"])

    @property
    def taps(self) -> tuple[str, ...]:
        return tuple(op[1] for op in self.plan if op[0] == "tap")

    @property
    def tap_channels(self) -> tuple[int, ...]:
        """Channels of each tap."""
        out, c = [], 3
        for op in self.plan:
            if op[0] == "conv":
                c = op[2]
            elif op[0] == "tap":
                out.append(c)
        return tuple(out)

    @property
    def channels(self) -> int:
        """C: channels of the last tap (the one AdaIN and the D-VAE work on)."""
        return self.tap_channels[-1]

    @property
    def divisor(self) -> int:
        """Input H and W must be multiples of this (2 ** number of pools)."""
        return 2 ** sum(1 for op in self.plan if op[0] == "pool")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats: list[torch.Tensor] = []
        h = self.pre(x)
        k = 0
        for op in self.plan:
            if op[0] == "conv":
                h = F.relu(self.convs[k](h))
                k += 1
            elif op[0] == "pool":
                h = F.max_pool2d(h, 2, 2, ceil_mode=True)
            else:
                feats.append(h)
        return feats

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)[-1]

    def freeze(self) -> StyleEncoder:
        """No gradients for the encoder's weights (it stays fixed while D and the D-VAE train)."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self


class StyleDecoder(nn.Module):
    """Mirror of an encoder plan: convs reversed (reflection padding + ReLU), pools → nearest ×2
    upsampling, no activation after the final conv to RGB."""

    def __init__(self, plan: Sequence[Op]) -> None:
        super().__init__()
        ops: list[Op] = []
        for op in reversed([tuple(o) for o in plan]):
            if op[0] == "conv":
                ops.append(("conv", op[2], op[1]))
            elif op[0] == "pool":
                ops.append(("up",))
        # drop trailing ups after the last conv and leading ups (cannot happen for valid plans)
        self.plan = ops
        self.convs = nn.ModuleList([_conv(op[1], op[2]) for op in ops if op[0] == "conv"])
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = t
        k, last = 0, len(self.convs) - 1
        for op in self.plan:
            if op[0] == "up":
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            else:
                h = self.convs[k](h)
                if k < last:
                    h = F.relu(h)
                k += 1
        return h


def encoder_plan(kind: str, channels: Sequence[int] | None = None) -> list[Op]:
    """The plan of encoder ``kind`` (``vgg19`` ignores ``channels``)."""
    if kind == "vgg19":
        return vgg19_plan()
    if kind == "tiny":
        return tiny_plan(channels if channels is not None else TINY_CHANNELS)
    raise ConfigError(f"unknown style encoder {kind!r}; valid: {', '.join(ENCODER_KINDS)}")


def build_encoder(kind: str, channels: Sequence[int] | None = None, weights: str | Path | None = None) -> StyleEncoder:
    """Build encoder ``kind``; ``vgg19`` with ``weights`` loads them from that local file."""
    enc = StyleEncoder(kind, encoder_plan(kind, channels))
    if weights is not None:
        if kind != "vgg19":
            raise ConfigError(f"encoder weights can only be loaded for vgg19, not {kind!r} (it is trained here)")
        enc.load_state_dict(load_vgg19_weights(weights))
    return enc


def build_decoder(encoder: StyleEncoder) -> StyleDecoder:
    """The decoder that mirrors ``encoder``."""
    return StyleDecoder(encoder.plan)


# --------------------------------------------------------------------------------------------------
# VGG-19 weight files
# --------------------------------------------------------------------------------------------------
#: Indices of the 3×3 convs (up to relu4_1) in each file format.
_NORMALISED_CONVS = (2, 5, 9, 12, 16, 19, 22, 25, 29)
_TORCHVISION_CONVS = (0, 2, 5, 7, 10, 12, 14, 16, 19)


def detect_vgg_format(state: dict[str, torch.Tensor]) -> str:
    """``"normalised"`` (AdaIN's vgg_normalised.pth) or ``"torchvision"`` (``features.N.weight``)."""
    if "features.0.weight" in state:
        return "torchvision"
    w0 = state.get("0.weight")
    if isinstance(w0, torch.Tensor) and tuple(w0.shape) == (3, 3, 1, 1):
        return "normalised"
    return ""


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise DataError(
            f"VGG-19 weight file not found: {path} (npdg never downloads weights; put AdaIN's "
            "vgg_normalised.pth or torchvision's vgg19 state dict there)"
        )
    try:
        state = read_state_dict(path) if path.suffix == ".safetensors" else torch_load(path, what="VGG-19 weight file")
    except NpdgError as exc:
        raise DataError(str(exc)) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"VGG-19 weight file {path} does not hold a state dict of tensors")
    return state


def _take(state: dict, key: str, shape: tuple[int, ...], path: Path) -> torch.Tensor:
    if key not in state:
        raise DataError(f"VGG-19 weight file {path} lacks {key!r}; the file is incomplete or not VGG-19")
    value = state[key]
    if tuple(value.shape) != shape:
        raise DataError(
            f"VGG-19 weight file {path}: {key!r} has shape {tuple(value.shape)}, expected {shape} "
            "(not a VGG-19, or a different variant such as VGG-16/BN)"
        )
    return value.float()


def load_vgg19_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local VGG-19 weight file into a :class:`StyleEncoder` state dict.

    Both formats are detected from their keys. For torchvision's weights (which expect ImageNet
    mean/std normalised input) the 1×1 ``pre`` conv gets the fixed normalisation; for the AdaIN file
    it gets the file's own 1×1 conv. Missing keys or wrong shapes raise :class:`DataError`.
    """
    path = Path(path)
    state = _read_state(path)
    fmt = detect_vgg_format(state)
    convs = [op for op in vgg19_plan() if op[0] == "conv"]
    if fmt == "normalised":
        prefix, indices = "", _NORMALISED_CONVS
        out = {"pre.weight": _take(state, "0.weight", (3, 3, 1, 1), path), "pre.bias": _take(state, "0.bias", (3,), path)}
    elif fmt == "torchvision":
        prefix, indices = "features.", _TORCHVISION_CONVS
        std = torch.tensor(IMAGENET_STD)
        mean = torch.tensor(IMAGENET_MEAN)
        out = {"pre.weight": torch.diag(1.0 / std)[..., None, None], "pre.bias": -mean / std}
    else:
        keys = ", ".join(list(state)[:6])
        raise DataError(
            f"{path} is not a recognised VGG-19 weight file: expected AdaIN's vgg_normalised.pth (keys "
            f"'0.weight', '2.weight', ...) or torchvision's vgg19 (keys 'features.0.weight', ...); found keys {keys}"
        )
    for k, (idx, op) in enumerate(zip(indices, convs)):
        _, c_in, c_out = op
        out[f"convs.{k}.weight"] = _take(state, f"{prefix}{idx}.weight", (c_out, c_in, 3, 3), path)
        out[f"convs.{k}.bias"] = _take(state, f"{prefix}{idx}.bias", (c_out,), path)
    return out
