"""The DSP training configuration (``python -m npdg dsp train --config FILE``), docs/method.md §1.

A tree of frozen sections read by npdg's one config loader (:func:`npdg.config.load_tree`): the same
YAML rules, ``--set section.key=value`` overrides, declared ranges and error messages as run
configs. :func:`validate` adds the cross-field checks of a DSP — sizes divisible by the encoder's
stride, and the held-out rule: DSP never sees a target domain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from npdg.config import MAX_SEED, check_pixels, check_tree, choice, load_tree, num, override_tree, tree_from_dict, tree_to_dict
from npdg.data.synthetic import DOMAINS, SOURCE_DOMAIN
from npdg.dsp.adain import ENCODER_KINDS, TINY_CHANNELS
from npdg.dsp.dvae import OPTIMIZATIONS
from npdg.errors import ConfigError

PRETRAIN_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class EncoderSection:
    """Style encoder: ``tiny`` (trained here) or ``vgg19`` (weights from the local file ``weights``)."""

    kind: str = choice("tiny", ENCODER_KINDS)
    channels: tuple[int, ...] = TINY_CHANNELS
    weights: str | None = None


@dataclass(frozen=True)
class DataSection:
    """Content images: ``synthetic`` (source domain), ``folder:PATH`` or ``NAME:ROOT`` (real data)."""

    content: str = "synthetic"
    size: tuple[int, int] = (128, 256)
    #: Train on random (H, W) crops of the ``size`` images (None → whole images). Fully
    #: convolutional nets and spatial statistics make crops a cheap, faithful speed-up (RAIN trains
    #: on 256² crops of 512×1024 images).
    crop: tuple[int, int] | None = None
    #: Number of content images (synthetic: rendered; folder/real: the first N). None → all / default.
    length: int | None = num(400, 1)
    #: Keep decoded images in memory (uint8) so each is rendered/read once.
    cache: bool = True


@dataclass(frozen=True)
class StyleSection:
    """Style images: ``bank`` (procedural style bank) or ``folder:PATH``."""

    source: str = "bank"
    bank_size: int = num(400, 1)
    bank_seed: int = num(0, 0)
    #: Extra synthetic domains to draw style images from (held-out domains are refused).
    domains: tuple[str, ...] = ()
    #: Probability that a style slot holds a content image instead (docs/method.md §1: bank "plus source images").
    content_fraction: float = num(0.2, 0, 1)


@dataclass(frozen=True)
class DVAESection:
    """D-VAE sizes: latent d (None → C) and hidden width (None → 2C)."""

    latent_dim: int | None = num(None, 1)
    hidden: int | None = num(None, 1)
    #: Model standardised style vectors (mean/std over ``norm_images`` style-batch images, measured
    #: with the frozen encoder when stage 2 starts); see StyleVAE.set_normalization. **[ours]**
    normalize: bool = False
    norm_images: int = num(256, 2)


@dataclass(frozen=True)
class TrainSection:
    seed: int = num(0, 0, MAX_SEED)
    batch_size: int = num(4, 1)
    pretrain_iters: int = num(1000, 0)
    pretrain_lr: float = num(1e-3, 0, lo_open=True)
    #: Stage-1 learning-rate schedule: ``constant`` or ``cosine`` (to 5 % of pretrain_lr at the end).
    pretrain_schedule: str = choice("constant", PRETRAIN_SCHEDULES)
    iters: int = num(2000, 0)
    lr: float = num(1e-4, 0, lo_open=True)
    lr_decay: float = num(5e-5, 0)
    optimization: str = choice("alternate", OPTIMIZATIONS)
    content_weight: float = num(1.0, 0)
    style_weight: float = num(1.0, 0)
    kl_weight: float = num(1.0, 0)
    rec_weight: float = num(5.0, 0)
    #: Stage-2 decoder identity term ‖D(E(x)) − x‖₁ (keeps natural colours/contrast; 0 = off). **[ours]**
    identity_weight: float = num(0.0, 0)
    alpha: float = num(1.0, 0, 1)
    log_every: int = num(10, 1)
    sample_every: int = num(250, 1)
    sample_images: int = num(3, 1)
    sample_styles: int = num(4, 1)
    checkpoint_every: int = num(250, 1)
    #: Store the final dsp.safetensors in float16.
    fp16: bool = False
    #: torch CPU threads (0 → torch's default).
    threads: int = num(0, 0)


@dataclass(frozen=True)
class DSPConfig:
    encoder: EncoderSection = field(default_factory=EncoderSection)
    data: DataSection = field(default_factory=DataSection)
    style: StyleSection = field(default_factory=StyleSection)
    dvae: DVAESection = field(default_factory=DVAESection)
    train: TrainSection = field(default_factory=TrainSection)

    @property
    def total_iters(self) -> int:
        return self.pretrain_iters + self.train.iters

    @property
    def pretrain_iters(self) -> int:
        """Stage-1 iterations (0 for vgg19, whose encoder is pretrained)."""
        return self.train.pretrain_iters if self.encoder.kind == "tiny" else 0


def held_out_domains() -> tuple[str, ...]:
    """Every synthetic domain that is not the source (held-out and content-shift domains)."""
    return tuple(sorted(name for name, d in DOMAINS.items() if d.role != "source"))


def validate(cfg: DSPConfig) -> DSPConfig:
    """Declared ranges, then combinations and the held-out rule; ConfigError names the key."""
    check_tree(cfg)
    e, d, s = cfg.encoder, cfg.data, cfg.style
    check_pixels("data.size", d.size)
    if e.kind == "vgg19" and not e.weights:
        raise ConfigError("encoder.kind vgg19 needs encoder.weights: a local vgg_normalised.pth or torchvision vgg19 file")
    if e.kind == "tiny" and (not e.channels or min(e.channels) < 1):
        raise ConfigError(f"encoder.channels must be positive integers, got {list(e.channels)}")
    divisor = 2 ** (3 if e.kind == "vgg19" else max(len(e.channels) - 1, 0))
    if d.size[0] % divisor or d.size[1] % divisor:
        raise ConfigError(f"data.size {d.size[0]}x{d.size[1]} must be divisible by {divisor} for encoder {e.kind}")
    if d.crop is not None:
        if d.crop[0] % divisor or d.crop[1] % divisor:
            raise ConfigError(f"data.crop {d.crop[0]}x{d.crop[1]} must be divisible by {divisor} for encoder {e.kind}")
        if d.crop[0] > d.size[0] or d.crop[1] > d.size[1]:
            raise ConfigError(f"data.crop {d.crop[0]}x{d.crop[1]} must fit in data.size {d.size[0]}x{d.size[1]}")
    held = held_out_domains()
    if d.content in held:
        raise ConfigError(f"data.content {d.content!r} is a held-out synthetic domain; DSP trains on the source domain only")
    for name in s.domains:
        if name in held:
            raise ConfigError(
                f"style.domains includes {name!r}, a held-out synthetic domain: DSP must never see a target "
                f"domain (held-out: {', '.join(held)}); remove it — only {SOURCE_DOMAIN!r} is allowed"
            )
        if name != SOURCE_DOMAIN:
            raise ConfigError(f"style.domains: unknown synthetic domain {name!r}; only {SOURCE_DOMAIN!r} is allowed")
    return cfg


def dsp_config_from_dict(data: dict | None, where: str = "config") -> DSPConfig:
    """Build and validate a :class:`DSPConfig` from a nested dict (missing keys take defaults)."""
    return validate(tree_from_dict(DSPConfig, data, where))


def apply_overrides(cfg: DSPConfig, overrides: list[str] | tuple[str, ...] = ()) -> DSPConfig:
    """Apply ``section.key=value`` overrides (values parsed as YAML) and validate."""
    return validate(override_tree(cfg, overrides))


def load_dsp_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DSPConfig:
    """Load a DSP config YAML (None → defaults) and apply overrides (:func:`npdg.config.load_tree`)."""
    return load_tree(DSPConfig, path, overrides, validate)


def dsp_config_to_dict(cfg: DSPConfig) -> dict:
    return tree_to_dict(cfg)


__all__ = ["DSPConfig", "apply_overrides", "dsp_config_from_dict", "dsp_config_to_dict", "held_out_domains",
           "load_dsp_config", "validate"]
