"""Segmentation models: smp DeepLabV3+ and SegFormer behind one small wrapper, :class:`SegModel`.

Every model is built with ``encoder_weights=None`` (smp's default would download from a hub);
pretrained encoder weights come from a local file through :mod:`npdg.models.weights`.

:class:`SegModel` takes images as float ``[B, 3, H, W]`` in [0, 1], normalizes them with the
ImageNet mean/std *inside* the model (so datasets, DSP and the dashboard never have to agree on a
normalization), pads H and W up to the network's required divisor and crops the logits back, so
any input size works.

Padding: the normalized image is padded at the bottom and right by *reflection* (mirroring the last
rows/columns, which keeps image statistics near the border and does not inject a flat grey band
that BatchNorm-free MiT layers would see as content); when the pad is not smaller than the image
side (tiny inputs) reflection is impossible and edge replication is used instead. Padding only at
the bottom/right keeps the crop a plain ``[:H, :W]`` (mmseg's convention).

VGG-16-BN + DeepLabV3+: smp's VGG encoders cannot be dilated (``make_dilated`` raises: max-pooling
does the downsampling) and smp's DeepLabV3+ only accepts output stride 8 or 16, so
``smp.DeepLabV3Plus(encoder_name="vgg16_bn")`` fails for every setting. npdg builds the encoder with
``encoder_depth=4`` instead: the features end at conv5_3 *before* pool5, i.e. at stride 16, without
dilation (the DeepLab-LargeFOV idea of dropping the last pooling). ASPP runs at stride 16, its
output is upsampled ×4 and fused with conv3_3 (stride 4, 256 channels), exactly the layout the
ResNet variants have at output stride 16. Module names stay those of smp (``encoder.features.N``,
``decoder.aspp...``, ``segmentation_head``), and torchvision ``vgg16_bn`` state dicts load into
``encoder`` unchanged.

smp 0.6's DeepLabV3+ does not call ``initialize()`` (SegFormer does); npdg calls it for every
model, so decoder and head start from smp's Kaiming/Xavier init whatever the architecture.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base import SegmentationHead, SegmentationModel
from segmentation_models_pytorch.decoders.deeplabv3.decoder import DeepLabV3PlusDecoder
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

from npdg.errors import ConfigError
from npdg.labels import NUM_CLASSES
from npdg.models.weights import load_encoder_weights

#: Encoders each architecture supports, in the order they are listed to users.
ENCODERS: dict[str, tuple[str, ...]] = {
    "deeplabv3plus": ("resnet18", "resnet50", "resnet101", "mobilenet_v2", "vgg16_bn"),
    "segformer": ("mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5"),
}
ARCHS: tuple[str, ...] = tuple(ENCODERS)

#: ASPP variants of DeepLabV3+: smp's defaults, or RobustNet/SHADE's (rates 6/12/18, plain convs).
ASPP_VARIANTS: dict[str, dict] = {
    "smp": {"decoder_atrous_rates": (12, 24, 36), "decoder_aspp_separable": True},
    "robustnet": {"decoder_atrous_rates": (6, 12, 18), "decoder_aspp_separable": False},
}

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model's architecture (saved as model-file metadata)."""

    arch: str
    encoder: str
    num_classes: int = NUM_CLASSES
    aspp: str = "smp"

    def to_meta(self) -> dict[str, str]:
        """String metadata for a safetensors header."""
        return {k: str(v) for k, v in asdict(self).items()}


def validate_spec(arch: str, encoder: str, num_classes: int, aspp: str = "smp") -> ModelSpec:
    """Check an (arch, encoder, classes, aspp) choice; raise :class:`ConfigError` listing valid ones."""
    if arch not in ENCODERS:
        raise ConfigError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHS)}")
    if encoder not in ENCODERS[arch]:
        valid = "; ".join(f"{a}: {', '.join(e)}" for a, e in ENCODERS.items())
        raise ConfigError(f"encoder {encoder!r} is not available for {arch}; valid encoders — {valid}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if aspp not in ASPP_VARIANTS:
        raise ConfigError(f"unknown ASPP variant {aspp!r}; valid: {', '.join(ASPP_VARIANTS)}")
    if arch != "deeplabv3plus" and aspp != "smp":
        raise ConfigError(f"the ASPP variant only applies to deeplabv3plus, not {arch}")
    return ModelSpec(arch, encoder, num_classes, aspp)


class VGGDeepLabV3Plus(smp.DeepLabV3Plus):
    """smp DeepLabV3+ on a VGG encoder truncated before pool5 (stride 16, no dilation).

    Same attributes and forward as :class:`smp.DeepLabV3Plus`; only the construction differs
    because smp refuses VGG with output stride 8/16 (see the module docstring).
    """

    def __init__(self, encoder_name: str, classes: int, decoder_atrous_rates, decoder_aspp_separable):
        SegmentationModel.__init__(self)
        # depth 4 → features end at conv5_3 (before pool5): stride 16; output_stride=32 means
        # "do not dilate", which is the only value smp's VGG accepts.
        self.encoder = get_encoder(encoder_name, in_channels=3, depth=4, weights=None, output_stride=32)
        self.decoder = DeepLabV3PlusDecoder(
            encoder_channels=self.encoder.out_channels,
            encoder_depth=4,
            out_channels=256,
            atrous_rates=decoder_atrous_rates,
            output_stride=16,
            aspp_separable=decoder_aspp_separable,
            aspp_dropout=0.5,
        )
        self.segmentation_head = SegmentationHead(256, classes, activation=None, kernel_size=1, upsampling=4)
        self.classification_head = None
        self.name = f"deeplabv3plus-{encoder_name}"


def _build_net(spec: ModelSpec) -> SegmentationModel:
    """The bare smp model for ``spec`` (random init, no download)."""
    if spec.arch == "segformer":
        net = smp.Segformer(encoder_name=spec.encoder, encoder_weights=None, classes=spec.num_classes)
    elif spec.encoder.startswith("vgg"):
        net = VGGDeepLabV3Plus(spec.encoder, spec.num_classes, **ASPP_VARIANTS[spec.aspp])
    else:
        net = smp.DeepLabV3Plus(
            encoder_name=spec.encoder,
            encoder_weights=None,
            encoder_output_stride=16,
            classes=spec.num_classes,
            **ASPP_VARIANTS[spec.aspp],
        )
    net.initialize()
    return net


def _pad_bottom_right(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """Pad ``[B, C, H, W]`` by reflection (replication when the image is too small to reflect)."""
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class SegModel(nn.Module):
    """An smp segmentation network with built-in normalization and size handling.

    ``net`` is the smp model itself; later stages (gates, sensitivity hooks, pruning) address its
    modules by name, e.g. ``net.encoder.layer1.0.bn1``. ``forward`` maps images ``[B, 3, H, W]``
    in [0, 1] to logits ``[B, num_classes, H, W]`` for any H, W ≥ 1.
    """

    def __init__(self, net: SegmentationModel, spec: ModelSpec):
        super().__init__()
        self.net = net
        self.spec = spec
        self.arch = spec.arch
        self.encoder = spec.encoder
        self.num_classes = spec.num_classes
        #: H and W are padded up to a multiple of this (the encoder's output stride).
        self.divisor = int(net.encoder.output_stride)
        # Non-persistent: the state dict is exactly the smp model's (prefixed ``net.``).
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB → ImageNet-normalized input."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"SegModel expects images [B, 3, H, W], got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.divisor, (-w) % self.divisor
        logits = self.net(_pad_bottom_right(self.normalize(x), ph, pw))
        return logits[..., :h, :w]

    def extra_repr(self) -> str:
        return f"arch={self.arch}, encoder={self.encoder}, num_classes={self.num_classes}, divisor={self.divisor}"


def build_model(
    arch: str,
    encoder: str,
    num_classes: int = NUM_CLASSES,
    encoder_weights=None,
    *,
    aspp: str = "smp",
    strict: bool = True,
) -> SegModel:
    """Build a :class:`SegModel` (random init) and optionally load local encoder weights.

    ``encoder_weights``: path of a local ``.pth``/``.pt``/``.safetensors`` file (torchvision, timm,
    smp or npdg naming; see :func:`npdg.models.weights.load_encoder_weights`, which ``strict`` is
    passed to). Never a hub name: nothing is downloaded. ``aspp``: ``"smp"`` (default) or
    ``"robustnet"`` (DeepLabV3+ only).
    """
    spec = validate_spec(arch, encoder, num_classes, aspp)
    if isinstance(encoder_weights, str) and encoder_weights.lower() in {"imagenet", "ssl", "swsl"}:
        raise ConfigError(
            f"encoder_weights={encoder_weights!r} would download from a hub; npdg loads weights from a "
            "local file only — pass the path of a .pth/.pt/.safetensors file"
        )
    model = SegModel(_build_net(spec), spec)
    if encoder_weights is not None:
        load_encoder_weights(model, encoder_weights, strict=strict)
    return model
