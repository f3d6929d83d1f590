"""Training the DSP: ``python -m npdg dsp train --config FILE --out DIR [--set k=v] [--resume]``.

Two stages (docs/method.md §1):

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npdg.config import tree_to_yaml
from npdg.data.io import read_rgb, write_png
from npdg.data.specs import open_dataset, parse_spec
from npdg.data.style_bank import style_image
from npdg.data.synthetic import SOURCE_DOMAIN, SyntheticDataset
from npdg.data.transforms import Resize, resize_image
from npdg.dsp.adain import (
    StyleDecoder,
    StyleEncoder,
    build_decoder,
    build_encoder,
    style_vector,
)
from npdg.dsp.config import DSPConfig, apply_overrides, dsp_config_to_dict, load_dsp_config
from npdg.dsp.dvae import AutoencoderTrainer, LossWeights, StyleTrainer, StyleVAE
from npdg.dsp.model import DSP, DSPSpec
from npdg.errors import ConfigError, DataError, NpdgError
from npdg.runs import (
    RunDir,
    append_metrics,
    atomic_write_text,
    capture_rng_state,
    load_checkpoint,
    prepare_run_dir,
    restore_rng_state,
    save_checkpoint,
    truncate_metrics,
)
from npdg.viz import grid, to_uint8_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
SAMPLES_DIR = "samples"
#: (step, total, latest losses) -> None, called after every iteration (the CLI draws its bar with it).
ProgressFn = Callable[[int, int, dict], None]
#: Keys (and types) a DSP training checkpoint must hold before any field is read.
CHECKPOINT_KEYS = {"step": int, "encoder": dict, "decoder": dict, "vae": dict, "ae_opt": dict, "rng": dict}


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


def folder_pool(folder: str, size: tuple[int, int], length: int | None, cache: bool) -> ImagePool:
    files = list_images(folder)
    if length is not None:
        files = files[:length]
    return ImagePool(f"folder:{folder}", len(files), lambda i: read_rgb(files[i]), size, cache)


def content_pool(cfg: DSPConfig) -> ImagePool:
    """The content images of ``cfg.data.content``."""
    spec, size, length, cache = cfg.data.content, cfg.data.size, cfg.data.length, cfg.data.cache
    if spec.startswith("folder:"):
        return folder_pool(spec[len("folder:") :], size, length, cache)
    parsed = parse_spec(spec)
    if not parsed.is_real:
        if parsed.name != SOURCE_DOMAIN:
            raise ConfigError(f"data.content {spec!r}: DSP trains on the source domain only")
        return synthetic_pool(SOURCE_DOMAIN, size, length, cache)
    if parsed.is_real:
        ds = open_dataset(parsed, "train", None, transform=Resize(size))
        n = len(ds) if length is None else min(length, len(ds))
        return ImagePool(spec, n, lambda i: ds[i]["image"], size, cache)
    raise ConfigError(f"data.content must be 'synthetic', 'folder:PATH' or NAME:ROOT, got {spec!r}")


def synthetic_pool(domain: str, size: tuple[int, int], length: int | None, cache: bool) -> ImagePool:
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
    """Create or reopen the run directory (``npdg.runs.prepare_run_dir``: refuses to mix two runs and
    only ever deletes a folder npdg made)."""
    return prepare_run_dir(out, resume=resume, overwrite=overwrite, kind="dsp", subdirs=("checkpoints", SAMPLES_DIR))


class DSPTraining:
    """Stage 1 (tiny autoencoder) then stage 2 (D-VAE + decoder); see the module docstring."""

    def __init__(self, cfg: DSPConfig, run: RunDir, progress: ProgressFn | None = None) -> None:
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
        save_checkpoint(self.state(), self.run.last_checkpoint)

    def resume(self) -> None:
        ckpt = load_checkpoint(self.run.last_checkpoint, required=CHECKPOINT_KEYS)
        m = self.modules
        try:
            m.encoder.load_state_dict(ckpt["encoder"])
            m.decoder.load_state_dict(ckpt["decoder"])
            m.vae.load_state_dict(ckpt["vae"])
            self.ae.load_state_dict(ckpt["ae_opt"])
            self.step = int(ckpt["step"])
            if "style_opt" in ckpt:
                self._style_trainer().load_state_dict(ckpt["style_opt"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
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
        cfg, t = self.cfg, self.cfg.train
        total = cfg.total_iters
        start_time = time.time()
        window_start, window_n = time.time(), 0
        try:
            while self.step < total:
                stage1 = self.step < cfg.pretrain_iters
                record = self._pretrain_step(self.step) if stage1 else self._style_step(self.step)
                self._check_finite(record)
                self.step += 1
                window_n += 1
                self.last = {k: float(v) for k, v in record.items()}
                if self.progress is not None:
                    self.progress(self.step, total, self.last)
                if self.step % t.log_every == 0 or self.step == total:
                    now = time.time()
                    ips = window_n * t.batch_size / max(now - window_start, 1e-9)
                    lr = self.pretrain_lr(self.step - 1) if stage1 else self._style_trainer().current_lr(self.step - cfg.pretrain_iters)
                    append_metrics(self.run, {"iter": self.step, **record, "lr": lr, "images_per_s": ips,
                                              "time": now - start_time})  # fmt: skip
                    window_start, window_n = now, 0
                if self.step % t.sample_every == 0 or self.step == total or self.step == cfg.pretrain_iters:
                    self.save_samples()
                if self.step % t.checkpoint_every == 0 or self.step == total:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            self.save_checkpoint()
            raise
        dsp_dir = self.modules.dsp(cfg).save(self.run.root, fp16=t.fp16)
        return TrainResult(self.run.root, self.step, self.last, time.time() - start_time, dsp_dir)


def train_dsp(
    config: str | Path | DSPConfig | None,
    out: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
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
    if resume:  # a foreign or truncated checkpoint is refused before anything is written
        load_checkpoint(RunDir(run_root).last_checkpoint, required=CHECKPOINT_KEYS)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    # modules (vgg19 weights), content and style sources: everything that can fail on bad input is built
    # before the run folder is created, so a failed start leaves nothing behind
    training = DSPTraining(cfg, RunDir(run_root), progress=progress)
    run = prepare_out(run_root, resume=resume, overwrite=overwrite)
    atomic_write_text(tree_to_yaml(cfg), run.config)
    if resume:
        training.resume()
    return training.run_all()


__all__ = ["DSPConfig", "DSPTraining", "TrainResult", "load_dsp_config", "train_dsp"]
