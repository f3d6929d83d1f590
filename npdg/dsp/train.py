"""Training the DSP: ``python -m npdg dsp train --config FILE --out DIR [--set k=v] [--resume]``.

Two stages (METHOD.md §1):

1. ``tiny`` encoder only — autoencoder pretraining of encoder + decoder (pixel MSE) on source
   content images and style-bank images, ``train.pretrain_iters`` iterations; the encoder is then
   frozen. (``vgg19`` loads its weights from a local file and skips this stage.)
2. D-VAE + decoder on (content, style) batches with the four DSP losses, ``train.iters``
   iterations, RAIN's alternating optimisation or ``joint``; optionally a decoder identity term
   (``train.identity_weight``) and a D-VAE over standardised style vectors (``dvae.normalize``).

Content images: the synthetic ``source`` domain's train split (default), ``folder:PATH`` or a real
dataset ``NAME:ROOT``. Style images: the procedural style bank (default) or ``folder:PATH``, mixed
with a fraction of content images; ``style.domains`` may add synthetic domains, but a held-out one
is refused — DSP must never see a target domain.

The run directory holds ``config.yaml`` (fully resolved), ``metrics.jsonl`` (one line per log step),
``samples/iter_XXXXXX.png`` (content | reconstruction | several stylizations), the atomic checkpoint
``checkpoints/last.pt`` (weights_only-loadable; resume continues exactly) and, at the end, the
deployable ``dsp.safetensors`` + ``dsp.json`` (:class:`npdg.dsp.model.DSP`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npdg.config import check_ranges, override_tree, read_yaml_mapping, tree_from_dict, tree_to_dict, tree_to_yaml
from npdg.data.transforms import resize_image
from npdg.dsp.adain import (
    ENCODER_KINDS,
    TINY_CHANNELS,
    StyleDecoder,
    StyleEncoder,
    build_decoder,
    build_encoder,
    style_vector,
)
from npdg.dsp.dvae import OPTIMIZATIONS, AutoencoderTrainer, LossWeights, StyleTrainer, StyleVAE
from npdg.dsp.model import DSP, DSPSpec
from npdg.errors import ConfigError, DataError, NpdgError
from npdg.runs import (
    RunDir,
    append_metrics,
    atomic_save,
    atomic_write_text,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    truncate_metrics,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
SAMPLES_DIR = "samples"
#: Synthetic held-out domains (used when npdg.data.synthetic cannot list them).
PRETRAIN_SCHEDULES = ("constant", "cosine")
FALLBACK_HELD_OUT = ("photo", "night", "fog", "rain", "overcast", "toon")


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderSection:
    """Style encoder: ``tiny`` (trained here) or ``vgg19`` (weights from the local file ``weights``)."""

    kind: str = "tiny"
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
    length: int | None = 400
    #: Keep decoded images in memory (uint8) so each is rendered/read once.
    cache: bool = True


@dataclass(frozen=True)
class StyleSection:
    """Style images: ``bank`` (procedural style bank) or ``folder:PATH``."""

    source: str = "bank"
    bank_size: int = 400
    bank_seed: int = 0
    #: Extra synthetic domains to draw style images from (held-out domains are refused).
    domains: tuple[str, ...] = ()
    #: Probability that a style slot holds a content image instead (METHOD: bank "plus source images").
    content_fraction: float = 0.2


@dataclass(frozen=True)
class DVAESection:
    """D-VAE sizes: latent d (None → C) and hidden width (None → 2C)."""

    latent_dim: int | None = None
    hidden: int | None = None
    #: Model standardised style vectors (mean/std over ``norm_images`` style-batch images, measured
    #: with the frozen encoder when stage 2 starts); see StyleVAE.set_normalization.
    normalize: bool = False
    norm_images: int = 256


@dataclass(frozen=True)
class TrainSection:
    seed: int = 0
    batch_size: int = 4
    pretrain_iters: int = 1000
    pretrain_lr: float = 1e-3
    #: Stage-1 learning-rate schedule: ``constant`` or ``cosine`` (to 5 % of pretrain_lr at the end).
    pretrain_schedule: str = "constant"
    iters: int = 2000
    lr: float = 1e-4
    lr_decay: float = 5e-5
    optimization: str = "alternate"
    content_weight: float = 1.0
    style_weight: float = 1.0
    kl_weight: float = 1.0
    rec_weight: float = 5.0
    #: Stage-2 decoder identity term ‖D(E(x)) − x‖₁ (keeps natural colours/contrast; 0 = off).
    identity_weight: float = 0.0
    alpha: float = 1.0
    log_every: int = 10
    sample_every: int = 250
    sample_images: int = 3
    sample_styles: int = 4
    checkpoint_every: int = 250
    #: Store the final dsp.safetensors in float16.
    fp16: bool = False
    #: torch CPU threads (0 → torch's default).
    threads: int = 0


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


def dsp_config_from_dict(data: dict | None, where: str = "config") -> DSPConfig:
    """Build and validate a :class:`DSPConfig` from a nested dict (missing keys take defaults)."""
    return validate(tree_from_dict(DSPConfig, data, where))


def apply_overrides(cfg: DSPConfig, overrides: list[str] | tuple[str, ...] = ()) -> DSPConfig:
    """Apply ``section.key=value`` overrides (values parsed as YAML) and validate."""
    return validate(override_tree(cfg, overrides))


def load_dsp_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DSPConfig:
    """Load a DSP config YAML (None → defaults) and apply overrides."""
    data, where = read_yaml_mapping(path)
    return apply_overrides(dsp_config_from_dict(data, where), overrides)


def dsp_config_to_dict(cfg: DSPConfig) -> dict:
    return tree_to_dict(cfg)


def held_out_domains() -> tuple[str, ...]:
    """Every synthetic domain that is not the source (held-out and content-shift domains)."""
    names: set[str] = set(FALLBACK_HELD_OUT)
    try:
        from npdg.data.synthetic import DOMAINS
    except ImportError:
        return tuple(sorted(names))
    names.update(name for name, d in DOMAINS.items() if d.role != "source")
    names.discard(source_domain())
    return tuple(sorted(names))


def source_domain() -> str:
    try:
        from npdg.data.synthetic import SOURCE_DOMAIN
    except ImportError:
        return "source"
    return SOURCE_DOMAIN


def validate(cfg: DSPConfig) -> DSPConfig:
    """Ranges, combinations and the held-out rule; ConfigError names the key."""
    e, d, s, t = cfg.encoder, cfg.data, cfg.style, cfg.train
    if e.kind not in ENCODER_KINDS:
        raise ConfigError(f"encoder.kind {e.kind!r} is unknown; valid: {', '.join(ENCODER_KINDS)}")
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
    if t.pretrain_schedule not in PRETRAIN_SCHEDULES:
        raise ConfigError(
            f"train.pretrain_schedule {t.pretrain_schedule!r} is unknown; valid: {', '.join(PRETRAIN_SCHEDULES)}"
        )
    if t.optimization not in OPTIMIZATIONS:
        raise ConfigError(f"train.optimization {t.optimization!r} is unknown; valid: {', '.join(OPTIMIZATIONS)}")
    positive = {"train.batch_size": t.batch_size, "train.lr": t.lr, "train.pretrain_lr": t.pretrain_lr,
                "train.log_every": t.log_every, "train.sample_every": t.sample_every,
                "train.checkpoint_every": t.checkpoint_every, "train.sample_images": t.sample_images,
                "train.sample_styles": t.sample_styles, "style.bank_size": s.bank_size}  # fmt: skip
    nonneg = {"train.iters": t.iters, "train.pretrain_iters": t.pretrain_iters, "train.lr_decay": t.lr_decay,
              "train.threads": t.threads}  # fmt: skip
    check_ranges(positive, nonneg)
    if d.length is not None and d.length < 1:
        raise ConfigError(f"data.length must be positive or null, got {d.length}")
    if not 0.0 <= s.content_fraction <= 1.0:
        raise ConfigError(f"style.content_fraction must be in [0, 1], got {s.content_fraction}")
    if not 0.0 <= t.alpha <= 1.0:
        raise ConfigError(f"train.alpha must be in [0, 1], got {t.alpha}")
    LossWeights(t.content_weight, t.style_weight, t.kl_weight, t.rec_weight, t.identity_weight)
    if cfg.dvae.norm_images < 2:
        raise ConfigError(f"dvae.norm_images must be >= 2, got {cfg.dvae.norm_images}")
    held = held_out_domains()
    if d.content in held:
        raise ConfigError(f"data.content {d.content!r} is a held-out synthetic domain; DSP trains on the source domain only")
    for name in s.domains:
        if name in held:
            raise ConfigError(
                f"style.domains includes {name!r}, a held-out synthetic domain: DSP must never see a target "
                f"domain (held-out: {', '.join(held)}); remove it — only {source_domain()!r} is allowed"
            )
        if name != source_domain():
            raise ConfigError(f"style.domains: unknown synthetic domain {name!r}; only {source_domain()!r} is allowed")
    return cfg


# --------------------------------------------------------------------------------------------------
# image pools
# --------------------------------------------------------------------------------------------------
def _to_uint8_chw(image: Any) -> torch.Tensor:
    """Any image (float [3,H,W] in [0,1], uint8 [H,W,3], PIL) → uint8 ``[3, H, W]``."""
    if isinstance(image, dict):
        image = image["image"]
    if isinstance(image, torch.Tensor):
        arr = image.detach().cpu()
        if arr.dim() == 3 and arr.shape[0] == 3:
            arr = arr.permute(1, 2, 0)
        arr = arr.numpy()
    else:
        arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(f"expected an RGB image, got array of shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)


class ImagePool:
    """``n`` images of one source, each as uint8 ``[3, H, W]`` at the configured size, optionally
    cached. ``get(i)`` returns float ``[3, H, W]`` in [0, 1]."""

    def __init__(self, name: str, n: int, load: Callable[[int], Any], size: tuple[int, int], cache: bool = True):
        if n < 1:
            raise DataError(f"{name}: no images")
        self.name, self.n, self._load, self.size, self.cache = name, int(n), load, size, cache
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.n

    def get(self, i: int) -> torch.Tensor:
        img = self._cache.get(i)
        if img is None:
            img = _to_uint8_chw(self._load(int(i)))
            if tuple(img.shape[1:]) != self.size:
                img = _to_uint8_chw(resize_image(img.permute(1, 2, 0).numpy(), self.size))
            if self.cache:
                self._cache[i] = img
        return img.float().div_(255.0)


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted); DataError if none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return files


def _read_rgb(path: Path) -> np.ndarray:
    from npdg.data.io import read_rgb

    return read_rgb(path)


def folder_pool(folder: str, size: tuple[int, int], length: int | None, cache: bool) -> ImagePool:
    files = list_images(folder)
    if length is not None:
        files = files[:length]
    return ImagePool(f"folder:{folder}", len(files), lambda i: _read_rgb(files[i]), size, cache)


def content_pool(cfg: DSPConfig) -> ImagePool:
    """The content images of ``cfg.data.content``."""
    spec, size, length, cache = cfg.data.content, cfg.data.size, cfg.data.length, cfg.data.cache
    if spec.startswith("folder:"):
        return folder_pool(spec[len("folder:") :], size, length, cache)
    if spec in ("synthetic", source_domain()):
        return synthetic_pool(source_domain(), size, length, cache)
    if ":" in spec:
        from npdg.data.real import open_real
        from npdg.data.transforms import Resize

        name, root = spec.split(":", 1)
        ds = open_real(name, root, "train", transform=Resize(size))
        n = len(ds) if length is None else min(length, len(ds))
        return ImagePool(spec, n, lambda i: ds[i]["image"], size, cache)
    raise ConfigError(f"data.content must be 'synthetic', 'folder:PATH' or NAME:ROOT, got {spec!r}")


def synthetic_pool(domain: str, size: tuple[int, int], length: int | None, cache: bool) -> ImagePool:
    try:
        from npdg.data.synthetic import SyntheticDataset
    except ImportError as exc:
        raise DataError(f"the synthetic scene generator (npdg.data.synthetic) is not available: {exc}") from None
    kwargs: dict[str, Any] = {"size": size}
    if length is not None:
        kwargs["length"] = length
    ds = SyntheticDataset(domain, "train", **kwargs)
    return ImagePool(f"synthetic:{domain}", len(ds), lambda i: ds[i]["image"], size, cache)


def style_pool(cfg: DSPConfig) -> ImagePool:
    """The style images of ``cfg.style.source`` (plus any extra allowed synthetic domains)."""
    s, size, cache = cfg.style, cfg.data.size, cfg.data.cache
    if s.source.startswith("folder:"):
        pool = folder_pool(s.source[len("folder:") :], size, None, cache)
    elif s.source == "bank":
        try:
            from npdg.data.style_bank import style_image
        except ImportError as exc:
            raise DataError(f"the procedural style bank (npdg.data.style_bank) is not available: {exc}") from None
        pool = ImagePool("style bank", s.bank_size, lambda i: style_image(i, size, s.bank_seed), size, cache)
    else:
        raise ConfigError(f"style.source must be 'bank' or 'folder:PATH', got {s.source!r}")
    if s.domains:
        extra = [synthetic_pool(d, size, cfg.data.length, cache) for d in s.domains]
        pools = [pool, *extra]
        offsets = np.cumsum([0] + [len(p) for p in pools])

        def load(i: int) -> torch.Tensor:
            k = int(np.searchsorted(offsets, i, side="right") - 1)
            return pools[k].get(i - int(offsets[k]))

        pool = ImagePool("styles", int(offsets[-1]), load, size, False)
    return pool


# --------------------------------------------------------------------------------------------------
# batches (stateless: a function of (seed, stage, step), so resume is exact)
# --------------------------------------------------------------------------------------------------
def _rng(seed: int, stream: int, step: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(stream), int(step)])


def _crop(image: torch.Tensor, crop: tuple[int, int] | None, rng: np.random.Generator) -> torch.Tensor:
    if crop is None:
        return image
    h, w = image.shape[-2:]
    y, x = int(rng.integers(0, h - crop[0] + 1)), int(rng.integers(0, w - crop[1] + 1))
    return image[:, y : y + crop[0], x : x + crop[1]]


def content_batch(
    pool: ImagePool, batch: int, seed: int, step: int, crop: tuple[int, int] | None = None
) -> torch.Tensor:
    """``batch`` content images (random choice, horizontal flip, optional crop) for ``step``."""
    rng = _rng(seed, 1, step)
    out = []
    for _ in range(batch):
        im = _crop(pool.get(int(rng.integers(0, len(pool)))), crop, rng)
        out.append(im.flip(-1) if rng.random() < 0.5 else im)
    return torch.stack(out)


def style_batch(
    styles: ImagePool, contents: ImagePool, batch: int, fraction: float, seed: int, step: int,
    crop: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``batch`` style images; each slot is a content image with probability ``fraction``."""
    rng = _rng(seed, 2, step)
    out = []
    for _ in range(batch):
        pool = contents if rng.random() < fraction else styles
        out.append(_crop(pool.get(int(rng.integers(0, len(pool)))), crop, rng))
    return torch.stack(out)


# --------------------------------------------------------------------------------------------------
# the training run
# --------------------------------------------------------------------------------------------------
@dataclass
class DSPModules:
    encoder: StyleEncoder
    decoder: StyleDecoder
    vae: StyleVAE

    def spec(self, cfg: DSPConfig) -> DSPSpec:
        return DSPSpec(
            encoder=cfg.encoder.kind,
            channels=self.encoder.tap_channels if cfg.encoder.kind == "tiny" else (),
            latent_dim=self.vae.latent_dim,
            hidden=self.vae.hidden,
            alpha=cfg.train.alpha,
            image_size=cfg.data.size,
        )

    def dsp(self, cfg: DSPConfig) -> DSP:
        """A DSP view of the modules being trained (shares their weights; nothing is frozen)."""
        return DSP(self.encoder, self.decoder, self.vae.decoder, self.spec(cfg))


def build_modules(cfg: DSPConfig) -> DSPModules:
    enc = build_encoder(cfg.encoder.kind, cfg.encoder.channels, cfg.encoder.weights if cfg.encoder.kind == "vgg19" else None)
    return DSPModules(enc, build_decoder(enc), StyleVAE(enc.channels, cfg.dvae.latent_dim, cfg.dvae.hidden))


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or resumed-and-finished) DSP training produced."""

    out: Path
    iters_done: int
    last_losses: dict[str, float]
    seconds: float
    dsp_dir: Path


def prepare_out(out: str | Path, resume: bool, overwrite: bool) -> RunDir:
    """Create or reopen the run directory (refuses to mix two runs, like npdg.runs)."""
    import shutil

    if resume and overwrite:
        raise ConfigError("--resume and --overwrite cannot be used together")
    run = RunDir(Path(out))
    if resume:
        if not run.last_checkpoint.is_file():
            raise ConfigError(f"cannot resume: no checkpoint at {run.last_checkpoint}")
    elif run.root.exists() and any(run.root.iterdir()):
        if not overwrite:
            raise ConfigError(f"output directory {run.root} already exists; pass --resume to continue it or --overwrite")
        shutil.rmtree(run.root)
    for d in (run.root, run.checkpoints, run.root / SAMPLES_DIR):
        d.mkdir(parents=True, exist_ok=True)
    return run


class DSPTraining:
    """Stage 1 (tiny autoencoder) then stage 2 (D-VAE + decoder); see the module docstring."""

    def __init__(self, cfg: DSPConfig, run: RunDir, progress: bool = True) -> None:
        self.cfg, self.run, self.progress = cfg, run, progress
        torch.manual_seed(cfg.train.seed)
        self.modules = build_modules(cfg)
        t = cfg.train
        self.ae = AutoencoderTrainer(self.modules.encoder, self.modules.decoder, lr=t.pretrain_lr)
        self.style: StyleTrainer | None = None
        self.step = 0
        self.contents = content_pool(cfg)
        self.styles = style_pool(cfg)
        self.last: dict[str, float] = {}

    # ---- state -------------------------------------------------------------------------------
    def _style_trainer(self) -> StyleTrainer:
        if self.style is None:
            t = self.cfg.train
            self.style = StyleTrainer(
                self.modules.encoder, self.modules.decoder, self.modules.vae,
                LossWeights(t.content_weight, t.style_weight, t.kl_weight, t.rec_weight, t.identity_weight),
                optimization=t.optimization, lr=t.lr, lr_decay=t.lr_decay, alpha=t.alpha,
            )  # fmt: skip
        return self.style

    def state(self) -> dict:
        m = self.modules
        state = {
            "step": self.step,
            "encoder": m.encoder.state_dict(),
            "decoder": m.decoder.state_dict(),
            "vae": m.vae.state_dict(),
            "ae_opt": self.ae.state_dict(),
            "rng": capture_rng_state(),
            "config": dsp_config_to_dict(self.cfg),
        }
        if self.style is not None:
            state["style_opt"] = self.style.state_dict()
        return state

    def save_checkpoint(self) -> None:
        atomic_save(self.state(), self.run.last_checkpoint)

    def resume(self) -> None:
        ckpt = load_checkpoint(self.run.last_checkpoint)
        m = self.modules
        try:
            m.encoder.load_state_dict(ckpt["encoder"])
            m.decoder.load_state_dict(ckpt["decoder"])
            m.vae.load_state_dict(ckpt["vae"])
            self.ae.load_state_dict(ckpt["ae_opt"])
            self.step = int(ckpt["step"])
            if "style_opt" in ckpt:
                self._style_trainer().load_state_dict(ckpt["style_opt"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise NpdgError(
                f"checkpoint {self.run.last_checkpoint} does not match this configuration ({exc}); "
                "resume with the run's own config.yaml"
            ) from None
        restore_rng_state(ckpt["rng"])
        truncate_metrics(self.run, self.step)

    # ---- iterations --------------------------------------------------------------------------
    def _pretrain_step(self, step: int) -> dict[str, float]:
        t = self.cfg.train
        half = max(1, t.batch_size // 2)
        crop = self.cfg.data.crop
        images = torch.cat([
            content_batch(self.contents, half, t.seed, step, crop),
            style_batch(self.styles, self.contents, t.batch_size - half, 0.0, t.seed, step, crop),
        ]) if t.batch_size > 1 else content_batch(self.contents, 1, t.seed, step, crop)  # fmt: skip
        for group in self.ae.optimizer.param_groups:
            group["lr"] = self.pretrain_lr(step)
        loss = self.ae.step(images)
        return {"stage": 1, "recon": loss, "loss": loss}

    def pretrain_lr(self, step: int) -> float:
        """Stage-1 learning rate at ``step`` (``train.pretrain_schedule``)."""
        t = self.cfg.train
        if t.pretrain_schedule == "constant":
            return t.pretrain_lr
        frac = min(step / max(self.cfg.pretrain_iters, 1), 1.0)
        return t.pretrain_lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * frac)))

    def _style_step(self, step: int) -> dict[str, float]:
        t = self.cfg.train
        if self.style is None:
            self.modules.encoder.freeze()
        if step == self.cfg.pretrain_iters and self.cfg.dvae.normalize:
            self.fit_normalization()
        crop = self.cfg.data.crop
        content = content_batch(self.contents, t.batch_size, t.seed, step, crop)
        style = style_batch(self.styles, self.contents, t.batch_size, self.cfg.style.content_fraction, t.seed, step,
                            crop)
        terms = self._style_trainer().step(content, style, step - self.cfg.pretrain_iters)
        out = terms.as_dict()
        return {"stage": 2, **out, "loss": out.pop("total")}

    @torch.no_grad()
    def fit_normalization(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of the style vectors of ``dvae.norm_images`` style-batch images (same mix and
        crops as stage 2, fixed seed) under the frozen encoder → :meth:`StyleVAE.set_normalization`."""
        t, n = self.cfg.train, self.cfg.dvae.norm_images
        enc = self.modules.encoder.eval()
        vecs = []
        for k in range(0, n, 32):
            imgs = style_batch(self.styles, self.contents, min(32, n - k), self.cfg.style.content_fraction,
                               t.seed + 777, k, self.cfg.data.crop)  # fmt: skip
            vecs.append(style_vector(enc.encode(imgs)))
        s = torch.cat(vecs)
        mean, std = s.mean(0), s.std(0)
        self.modules.vae.set_normalization(mean, std)
        return mean, std

    def _check_finite(self, record: dict[str, float]) -> None:
        bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            kept = (
                f"the last good checkpoint is kept at {self.run.last_checkpoint}"
                if self.run.last_checkpoint.is_file()
                else "no checkpoint was written yet"
            )
            raise NpdgError(
                f"DSP training diverged at iteration {self.step + 1}: {', '.join(bad)} is NaN/inf; {kept}. "
                "Lower train.lr / train.pretrain_lr (or the loss weights) and --resume or start again."
            )

    def save_samples(self) -> Path:
        """Grid: one row per sample image — content | reconstruction | K stylizations (fixed ε)."""
        from npdg.data.io import write_png
        from npdg.viz import grid, to_uint8_image

        t = self.cfg.train
        n = min(t.sample_images, len(self.contents))
        images = torch.stack([self.contents.get(i) for i in range(n)])
        dsp = self.modules.dsp(self.cfg)
        with torch.no_grad():
            recon = dsp.reconstruct(images)
            styled = None
            if self.step > self.cfg.pretrain_iters:
                eps = dsp.sample_eps(n * t.sample_styles, seed=t.seed + 12345)
                styled = dsp.stylize(images, eps).view(n, t.sample_styles, 3, *images.shape[-2:])
        tiles, titles = [], []
        for i in range(n):
            tiles += [to_uint8_image(images[i]), to_uint8_image(recon[i])]
            titles += ["content", "reconstruction"]
            if styled is not None:
                tiles += [to_uint8_image(s) for s in styled[i]]
                titles += [f"style {k}" for k in range(t.sample_styles)]
        ncols = 2 + (t.sample_styles if styled is not None else 0)
        path = self.run.root / SAMPLES_DIR / f"iter_{self.step:06d}.png"
        write_png(path, grid(tiles, ncols, titles))
        return path

    def run_all(self) -> TrainResult:
        from tqdm import tqdm

        cfg, t = self.cfg, self.cfg.train
        total = cfg.total_iters
        start_time = time.time()
        bar = tqdm(total=total, initial=self.step, desc="dsp train", disable=not self.progress, dynamic_ncols=True)
        window_start, window_n = time.time(), 0
        try:
            while self.step < total:
                stage1 = self.step < cfg.pretrain_iters
                record = self._pretrain_step(self.step) if stage1 else self._style_step(self.step)
                self._check_finite(record)
                self.step += 1
                window_n += 1
                self.last = {k: float(v) for k, v in record.items()}
                bar.update(1)
                if self.step % t.log_every == 0 or self.step == total:
                    now = time.time()
                    ips = window_n * t.batch_size / max(now - window_start, 1e-9)
                    lr = self.pretrain_lr(self.step - 1) if stage1 else self._style_trainer().current_lr(self.step - cfg.pretrain_iters)
                    append_metrics(self.run, {"iter": self.step, **record, "lr": lr, "images_per_s": ips,
                                              "time": now - start_time})  # fmt: skip
                    bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k != "stage"})
                    window_start, window_n = now, 0
                if self.step % t.sample_every == 0 or self.step == total or self.step == cfg.pretrain_iters:
                    self.save_samples()
                if self.step % t.checkpoint_every == 0 or self.step == total:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            bar.close()
            self.save_checkpoint()
            raise
        bar.close()
        dsp_dir = self.modules.dsp(cfg).save(self.run.root, fp16=t.fp16)
        return TrainResult(self.run.root, self.step, self.last, time.time() - start_time, dsp_dir)


def train_dsp(
    config: str | Path | DSPConfig | None,
    out: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume) a DSP into ``out``; returns a :class:`TrainResult`.

    With ``resume`` and no ``config``, the run's own ``config.yaml`` is used (overrides still apply,
    e.g. more ``train.iters``).
    """
    run_root = Path(out)
    if isinstance(config, DSPConfig):
        cfg = apply_overrides(config, overrides)
    elif config is None and resume:
        cfg = load_dsp_config(run_root / "config.yaml", overrides)
    else:
        cfg = load_dsp_config(config, overrides)
    run = prepare_out(run_root, resume=resume, overwrite=overwrite)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    atomic_write_text(tree_to_yaml(cfg), run.config)
    training = DSPTraining(cfg, run, progress=progress)
    if resume:
        training.resume()
    return training.run_all()


__all__ = [
    "DSPConfig",
    "DSPTraining",
    "TrainResult",
    "apply_overrides",
    "dsp_config_to_dict",
    "load_dsp_config",
    "train_dsp",
]
