"""The deployable DSP: stylize images from latent codes ε, ascend ε against a segmentor, traverse.

``DSP`` holds the frozen style encoder E, the decoder D and the D-VAE's latent decoder p (the FC
encoder q is dropped after training). For a latent ε: ``p(ε) → (μ̂, σ̂)``, ``t = α·AdaIN(E(x); μ̂, σ̂)
+ (1 − α)·E(x)``, image ``D(t)`` clamped to [0, 1]. Everything is differentiable in ε, which is
what makes gradient ascent on the segmentor's loss possible (docs/method.md §1).

On disk a DSP is two files in one folder: ``dsp.safetensors`` (weights of E, D and p, float32 or
float16) and ``dsp.json`` (architecture: encoder kind, channels, latent size, hidden size, α).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn

from npdg.config import ASCENT_RULES as CONFIG_ASCENT_RULES
from npdg.dsp.adain import StyleDecoder, StyleEncoder, adain_blend, build_decoder, build_encoder, check_alpha
from npdg.dsp.dvae import LatentDecoder
from npdg.errors import ConfigError, DataError
from npdg.runs import atomic_write_bytes, atomic_write_text

WEIGHTS_FILE = "dsp.safetensors"
SPEC_FILE = "dsp.json"
FORMAT = "npdg-dsp"
FORMAT_VERSION = 1
ASCENT_RULES: tuple[str, ...] = CONFIG_ASCENT_RULES
#: Default step size per rule: α_ε for the normalized step, ASM's numerator 20 for ``(20/loss)·g``.
DEFAULT_STEP_SIZE = {"normalized": 1.0, "asm": 20.0}
IGNORE_INDEX = 255


@dataclass(frozen=True)
class DSPSpec:
    """Architecture and defaults of a saved DSP (the content of ``dsp.json``)."""

    encoder: str
    channels: tuple[int, ...]
    latent_dim: int
    hidden: int
    alpha: float = 1.0
    #: Training image size (H, W), a sensible default size for sampling; informational.
    image_size: tuple[int, int] | None = None
    dtype: str = "float32"
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(format=FORMAT, version=FORMAT_VERSION, channels=list(self.channels))
        d["image_size"] = list(self.image_size) if self.image_size else None
        return d

    @classmethod
    def from_json(cls, data: dict, where: str) -> DSPSpec:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DataError(f"{where} is not an npdg DSP description (missing \"format\": \"{FORMAT}\")")
        try:
            size = data.get("image_size")
            return cls(
                encoder=str(data["encoder"]),
                channels=tuple(int(c) for c in data["channels"]),
                latent_dim=int(data["latent_dim"]),
                hidden=int(data["hidden"]),
                alpha=float(data.get("alpha", 1.0)),
                image_size=(int(size[0]), int(size[1])) if size else None,
                dtype=str(data.get("dtype", "float32")),
                extra=dict(data.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DataError(f"{where} is malformed: {exc!r}") from None


def _pad_to_multiple(x: torch.Tensor, divisor: int) -> tuple[torch.Tensor, int, int]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, h, w


class DSP(nn.Module):
    """Differentiable Style Perturbation, ready to use (frozen, eval mode after :meth:`load`)."""

    def __init__(self, encoder: StyleEncoder, decoder: StyleDecoder, latent: LatentDecoder, spec: DSPSpec) -> None:
        super().__init__()
        self.encoder, self.decoder, self.latent = encoder, decoder, latent
        self.spec = spec
        check_alpha(spec.alpha)

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def build(cls, spec: DSPSpec) -> DSP:
        """Untrained modules of the architecture ``spec`` describes."""
        encoder = build_encoder(spec.encoder, spec.channels if spec.encoder == "tiny" else None)
        return cls(encoder, build_decoder(encoder), LatentDecoder(encoder.channels, spec.latent_dim, spec.hidden), spec)

    def freeze(self) -> DSP:
        """Eval mode, no parameter gradients (gradients still flow to ε and the images)."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    @property
    def latent_dim(self) -> int:
        return self.latent.latent_dim

    @property
    def divisor(self) -> int:
        return self.encoder.divisor

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- saving -----------------------------------------------------------------------------
    def save(self, directory: str | Path, fp16: bool = False) -> Path:
        """Write ``dsp.safetensors`` and ``dsp.json`` into ``directory`` (atomically per file)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        dtype = torch.float16 if fp16 else torch.float32
        tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(save(tensors, metadata={"format": FORMAT}), directory / WEIGHTS_FILE)
        spec = DSPSpec(**{**asdict(self.spec), "dtype": "float16" if fp16 else "float32"})
        atomic_write_text(json.dumps(spec.to_json(), indent=2) + "\n", directory / SPEC_FILE)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> DSP:
        """Load a saved DSP (float32, eval mode, frozen). Missing/mismatched files → DataError."""
        directory = Path(directory)
        spec_path, weights_path = directory / SPEC_FILE, directory / WEIGHTS_FILE
        for p in (spec_path, weights_path):
            if not p.is_file():
                raise DataError(f"not a DSP folder: {p} is missing (train one with `python -m npdg dsp train`)")
        try:
            data = json.loads(spec_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read {spec_path}: {exc}") from None
        spec = DSPSpec.from_json(data, str(spec_path))
        try:
            dsp = cls.build(spec)
        except ConfigError as exc:
            raise DataError(f"{spec_path}: {exc}") from None
        try:
            state = load_file(str(weights_path))
        except Exception as exc:
            raise DataError(f"cannot read DSP weights {weights_path}: {exc}") from None
        try:
            state = {k: v.float() for k, v in state.items()}
            # files written before the D-VAE output normalisation existed: identity map
            for key, value in dsp.latent.state_dict().items():
                if key in ("out_shift", "out_scale"):
                    state.setdefault(f"latent.{key}", value.detach().clone())
            dsp.load_state_dict(state)
        except RuntimeError as exc:
            raise DataError(f"DSP weights {weights_path} do not match {spec_path}: {exc}") from None
        return dsp.to(device).freeze()

    # ---- sampling ---------------------------------------------------------------------------
    def sample_eps(self, n: int, generator: torch.Generator | None = None, seed: int | None = None) -> torch.Tensor:
        """``n`` latent codes from N(0, I), ``[n, d]``, on this DSP's device.

        Drawn on the CPU (with ``generator``, or a fresh one seeded with ``seed``) so the same seed
        gives the same codes on every device.
        """
        if n < 1:
            raise ConfigError(f"number of latent codes must be >= 1, got {n}")
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        eps = torch.randn(int(n), self.latent_dim, generator=generator)
        return eps.to(self.device)

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ConfigError(f"images must be a float tensor [B, 3, H, W] in [0, 1], got {shape}")
        if not images.is_floating_point():
            raise ConfigError(f"images must be float in [0, 1], got dtype {images.dtype}")
        if min(images.shape[-2:]) < 1 or images.shape[0] < 1:
            raise ConfigError(f"images must be non-empty, got shape {tuple(images.shape)}")
        return images.to(self.device, torch.float32)

    def _resolve_eps(self, b: int, eps, n_styles, generator, seed) -> torch.Tensor:
        if n_styles is not None and int(n_styles) < 1:
            raise ConfigError(f"n_styles must be >= 1, got {n_styles}")
        if eps is None:
            return self.sample_eps(b * int(n_styles or 1), generator=generator, seed=seed)
        if not isinstance(eps, torch.Tensor) or eps.dim() != 2 or eps.shape[1] != self.latent_dim:
            shape = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
            raise ConfigError(f"eps must be [B*K, {self.latent_dim}] (latent size {self.latent_dim}), got {shape}")
        if eps.shape[0] % b != 0 or (n_styles is not None and eps.shape[0] != b * int(n_styles)):
            want = f"{b}×{n_styles}" if n_styles is not None else f"a multiple of {b}"
            raise ConfigError(f"eps has {eps.shape[0]} rows; expected {want} (images × styles)")
        return eps.to(self.device)

    def style_params(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``p(ε)`` → (μ̂, σ̂), each ``[N, C]``."""
        return self.latent(eps)

    def stylize(
        self,
        images: torch.Tensor,
        eps: torch.Tensor | None = None,
        n_styles: int | None = None,
        alpha: float | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Restyle each image with K latent styles → ``[B*K, 3, H, W]`` in [0, 1].

        Row ``b*K + k`` is image b in style k (the K styles of one image are adjacent). ``eps`` is
        ``[B*K, d]`` (K inferred) or None to draw ``B * n_styles`` codes from N(0, I) with
        ``generator``/``seed``. Differentiable in ``eps`` (and in ``images``). Any H, W: the input is
        padded to the encoder's divisor and the output cropped back.
        """
        images = self._check_images(images)
        b = images.shape[0]
        eps = self._resolve_eps(b, eps, n_styles, generator, seed)
        k = eps.shape[0] // b
        a = self.spec.alpha if alpha is None else check_alpha(alpha)
        x, h, w = _pad_to_multiple(images, self.divisor)
        feat = self.encoder.encode(x)
        if k > 1:
            feat = feat.repeat_interleave(k, dim=0)
        mu, sigma = self.style_params(eps)
        out = self.decoder(adain_blend(feat, mu, sigma, a))
        return out[..., :h, :w].clamp(0.0, 1.0)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """``D(E(x))`` without restyling (α = 0): what the autoencoder alone does to an image."""
        images = self._check_images(images)
        x, h, w = _pad_to_multiple(images, self.divisor)
        return self.decoder(self.encoder.encode(x))[..., :h, :w].clamp(0.0, 1.0)

    def traverse(
        self,
        image: torch.Tensor,
        dim: int,
        values,
        base_eps: torch.Tensor | None = None,
        alpha: float | None = None,
    ) -> torch.Tensor:
        """Latent traversal: image restyled with ε = ``base_eps`` (default 0) where coordinate
        ``dim`` takes each of ``values`` → ``[len(values), 3, H, W]``."""
        if image.dim() == 3:
            image = image.unsqueeze(0)
        if image.dim() != 4 or image.shape[0] != 1:
            raise ConfigError(f"traverse needs one image [3, H, W] or [1, 3, H, W], got {tuple(image.shape)}")
        if not 0 <= int(dim) < self.latent_dim:
            raise ConfigError(f"latent dimension {dim} out of range 0..{self.latent_dim - 1}")
        vals = torch.as_tensor(list(values), dtype=torch.float32, device=self.device).flatten()
        if vals.numel() < 1:
            raise ConfigError("traverse needs at least one value")
        if base_eps is None:
            base = torch.zeros(self.latent_dim, device=self.device)
        else:
            base = base_eps.reshape(-1).to(self.device, torch.float32)
            if base.numel() != self.latent_dim:
                raise ConfigError(f"base_eps must have {self.latent_dim} values, got {base.numel()}")
        eps = base.repeat(vals.numel(), 1)
        eps[:, int(dim)] = vals
        return self.stylize(image, eps, alpha=alpha)

    # ---- adversarial ascent -----------------------------------------------------------------
    def ascend(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        segmentor: nn.Module,
        eps: torch.Tensor,
        steps: int = 1,
        step_size: float | None = None,
        rule: str = "normalized",
        reset_every: int = 0,
        alpha: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Gradient ascent on ``CE(segmentor(stylize(images, ε)), labels)`` w.r.t. ε → new ε (detached).

        ``rule="normalized"`` (default): per-sample ``ε ← ε + step_size · g/‖g‖`` with g the gradient
        of that sample's own mean CE. ``rule="asm"``: ASM's ``ε ← ε + (step_size / loss) · g``
        (step_size 20) with the batch-mean loss. ``reset_every = M > 0`` re-draws ε from N(0, I)
        before ascent steps M, 2M, ... so long ascents stay near the prior. The segmentor runs in
        eval mode with its parameters' ``requires_grad`` off; both are restored afterwards.
        """
        if rule not in ASCENT_RULES:
            raise ConfigError(f"ascent rule must be one of {', '.join(ASCENT_RULES)}, got {rule!r}")
        if steps < 0:
            raise ConfigError(f"ascent steps must be >= 0, got {steps}")
        size = DEFAULT_STEP_SIZE[rule] if step_size is None else float(step_size)
        images = self._check_images(images)
        eps = self._resolve_eps(images.shape[0], eps, None, None, None).detach().clone()
        k = eps.shape[0] // images.shape[0]
        labels = _check_labels(labels, images).to(self.device)
        if k > 1:
            labels = labels.repeat_interleave(k, dim=0)
        with _frozen(segmentor):
            for i in range(int(steps)):
                if reset_every > 0 and i > 0 and i % reset_every == 0:
                    eps = self.sample_eps(eps.shape[0], generator=generator)
                e = eps.requires_grad_(True)
                per_sample = per_sample_ce(segmentor(self.stylize(images, e, alpha=alpha)), labels)
                if rule == "normalized":
                    (g,) = torch.autograd.grad(per_sample.sum(), e)
                    g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
                    eps = (e + size * g).detach()
                else:
                    loss = per_sample.mean()
                    (g,) = torch.autograd.grad(loss, e)
                    eps = (e + (size / max(float(loss.detach()), 1e-6)) * g).detach()
        return eps.detach()


def _check_labels(labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    if labels.dim() != 3 or labels.shape[0] != images.shape[0]:
        raise ConfigError(f"labels must be [B, H, W] with B = {images.shape[0]}, got {tuple(labels.shape)}")
    return labels.long()


def per_sample_ce(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy of each sample over its non-ignored pixels → ``[N]``.

    Logits of another size than the labels are bilinearly resized first. A sample whose pixels are
    all ignored contributes 0.
    """
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    ce = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
    valid = (labels != ignore_index).flatten(1).sum(1).clamp_min(1)
    return ce.flatten(1).sum(1) / valid


def style_ce(
    dsp: DSP, images: torch.Tensor, labels: torch.Tensor, segmentor: nn.Module, eps: torch.Tensor,
    alpha: float | None = None,
) -> torch.Tensor:
    """Per-sample CE of ``segmentor`` on ``dsp.stylize(images, eps, alpha)`` (no gradients; segmentor
    in eval mode, restored). Labels are repeated for the K styles of each image."""
    with torch.no_grad(), _frozen(segmentor):
        out = dsp.stylize(images, eps, alpha=alpha)
        k = out.shape[0] // images.shape[0]
        lab = _check_labels(labels, images).to(out.device).repeat_interleave(k, dim=0)
        return per_sample_ce(segmentor(out), lab)


class _frozen:
    """Context: segmentor in eval mode with ``requires_grad`` off; both restored on exit."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __enter__(self) -> nn.Module:
        self.training = self.module.training
        self.flags = [(p, p.requires_grad) for p in self.module.parameters()]
        for p, _ in self.flags:
            p.requires_grad_(False)
        self.module.eval()
        return self.module

    def __exit__(self, *exc) -> None:
        for p, flag in self.flags:
            p.requires_grad_(flag)
        self.module.train(self.training)


# --------------------------------------------------------------------------------------------------
# training-loop hook
# --------------------------------------------------------------------------------------------------
#: How a batch is stylized: ``ascend`` (persistent ε pushed by gradient ascent) or ``random`` (fresh ε).
BATCH_MODES: tuple[str, ...] = ("ascend", "random")


class DSPBatchTransform:
    """Batch hook for the segmentor's training loop: ``(images, labels, step)`` →
    ``(cat[clean, stylized], cat[labels, labels])``.

    ``mode="ascend"`` keeps one persistent ε per batch slot, updated every call by ``ascent_steps``
    steps of :meth:`DSP.ascend` against :attr:`segmentor` (set at construction or later as an
    attribute) and re-drawn from N(0, I) every ``reset_every`` calls (0 = never).
    ``mode="random"`` draws fresh ε ~ N(0, I) every call, no ascent.
    """

    def __init__(
        self,
        dsp: DSP,
        mode: str = "ascend",
        ascent_steps: int = 1,
        step_size: float | None = None,
        reset_every: int = 10,
        alpha: float | None = None,
        segmentor: nn.Module | None = None,
        rule: str = "normalized",
        seed: int = 0,
    ) -> None:
        if mode not in BATCH_MODES:
            raise ConfigError(f"DSP batch mode must be one of {', '.join(BATCH_MODES)}, got {mode!r}")
        if rule not in ASCENT_RULES:
            raise ConfigError(f"ascent rule must be one of {', '.join(ASCENT_RULES)}, got {rule!r}")
        if ascent_steps < 0 or reset_every < 0:
            raise ConfigError(f"ascent_steps and reset_every must be >= 0, got {ascent_steps}, {reset_every}")
        if alpha is not None:
            check_alpha(alpha)
        self.dsp = dsp.freeze()
        self.mode, self.ascent_steps, self.step_size = mode, int(ascent_steps), step_size
        self.reset_every, self.alpha, self.rule = int(reset_every), alpha, rule
        self.segmentor = segmentor
        self.generator = torch.Generator().manual_seed(int(seed))
        self.eps: torch.Tensor | None = None

    def _slot_eps(self, b: int, step: int) -> torch.Tensor:
        """ε for ``b`` batch slots: kept from the last call unless a reset is due."""
        reset = self.eps is None or self.mode == "random" or (self.reset_every > 0 and step % self.reset_every == 0)
        if reset:
            self.eps = self.dsp.sample_eps(b, generator=self.generator)
        elif self.eps.shape[0] < b:  # a larger batch than before: new slots get fresh codes
            extra = self.dsp.sample_eps(b - self.eps.shape[0], generator=self.generator)
            self.eps = torch.cat([self.eps, extra])
        return self.eps[:b]

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dsp.device != images.device:
            self.dsp.to(images.device)
        b = images.shape[0]
        eps = self._slot_eps(b, int(step))
        if self.mode == "ascend" and self.ascent_steps > 0:
            if self.segmentor is None:
                raise ConfigError("DSP batch mode 'ascend' needs the segmentor for ε ascent: set transform.segmentor")
            eps = self.dsp.ascend(images, labels, self.segmentor, eps, steps=self.ascent_steps,
                                  step_size=self.step_size, rule=self.rule, alpha=self.alpha)
            self.eps = torch.cat([eps, self.eps[b:]]) if self.eps.shape[0] > b else eps
        with torch.no_grad():
            styled = self.dsp.stylize(images, eps, alpha=self.alpha).to(images.dtype)
        return torch.cat([images, styled]), torch.cat([labels, labels])


def dsp_batch_transform(cfg, segmentor: nn.Module, device: torch.device | str | None, mode: str | None = None,
                        dsp: DSP | None = None) -> DSPBatchTransform:
    """The training loop's DSP hook built from a run config's ``dsp`` section (``npdg.config.DSPConfig``).

    ``mode`` ``ascend`` ascends ε against ``segmentor`` for ``dsp.ascent_steps`` steps per iteration;
    ``random`` re-draws ε ~ N(0, I) every iteration (docs/method.md §0). ``None`` picks ``ascend`` when
    ``dsp.ascent_steps > 0``. Which training mode uses which is decided in ``npdg.recipes.dsp``. ``cfg.dsp.path`` names the folder written by ``npdg dsp train``
    (loaded unless an already loaded ``dsp`` is given).
    """
    g = cfg.dsp
    if dsp is None:
        if not g.path:
            raise ConfigError("this mode needs a trained DSP: set dsp.path (made with `python -m npdg dsp train`)")
        dsp = DSP.load(g.path, device=device)
    mode = mode or ("ascend" if g.ascent_steps > 0 else "random")
    return DSPBatchTransform(
        dsp, mode=mode, ascent_steps=g.ascent_steps if mode == "ascend" else 0, step_size=g.step_size,
        reset_every=g.reset_every, alpha=g.alpha, segmentor=segmentor, rule=g.rule, seed=cfg.train.seed,
    )
