"""The D-VAE over style vectors and the losses and optimisation that train it with the decoder.

The D-VAE (RAIN, Adversarial Style Mining) models the style vector ``s = [μ, σ]`` (2C numbers) of
the encoder's last tap:

* FC encoder q: ``2C → hidden → hidden → (ψ, log ξ²)`` with latent size d (default C);
* FC decoder p: ``d → hidden → hidden → (μ̂, σ̂)``, σ̂ through softplus so it stays positive.

At deployment only p is kept: ``ε ~ N(0, I) → p(ε) → (μ̂, σ̂) → AdaIN → decoder``.

Losses (docs/method.md §1): content ``‖E(D(t)) − t‖²`` (t detached), style (mean/std MSE summed over the
encoder's taps), KL to N(0, I), reconstruction ``‖[μ̂, σ̂] − s‖²`` (s detached); RAIN weights
1 / 1 / 1 / 5. :class:`StyleTrainer` runs RAIN's alternating optimisation (an Adam step of q and p
on KL + 5·rec, then an Adam step of the decoder on content + style with the D-VAE's output detached)
or a ``joint`` step of everything on the weighted sum.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from npdg.dsp.adain import StyleDecoder, StyleEncoder, adain_blend, style_stats, style_vector
from npdg.errors import ConfigError

OPTIMIZATIONS: tuple[str, ...] = ("alternate", "joint")


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    layers = nn.Sequential(
        nn.Linear(n_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, n_out),
    )  # fmt: skip
    for m in layers:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return layers


class LatentDecoder(nn.Module):
    """p: latent ε ``[N, d]`` → (μ̂ ``[N, C]``, σ̂ ``[N, C]`` > 0). The only D-VAE part kept at deployment."""

    def __init__(self, channels: int, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.channels, self.latent_dim, self.hidden = int(channels), int(latent_dim), int(hidden)
        self.net = _mlp(self.latent_dim, self.hidden, 2 * self.channels)
        # Output affine map (identity by default): the net predicts standardised statistics and
        # ``out * out_scale + out_shift`` puts them back in feature units (see StyleVAE.set_normalization).
        self.register_buffer("out_shift", torch.zeros(2 * self.channels))
        self.register_buffer("out_scale", torch.ones(2 * self.channels))

    def forward(self, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(eps) * self.out_scale + self.out_shift
        mu, raw = out.split(self.channels, dim=1)
        return mu, F.softplus(raw) + 1e-6


class LatentEncoder(nn.Module):
    """q: style vector ``[N, 2C]`` → (ψ ``[N, d]``, log ξ² ``[N, d]``). Dropped at deployment."""

    def __init__(self, channels: int, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.net = _mlp(2 * int(channels), int(hidden), 2 * self.latent_dim)
        #: Input standardisation ``(s − in_mean) / in_std`` (identity by default).
        self.register_buffer("in_mean", torch.zeros(2 * int(channels)))
        self.register_buffer("in_std", torch.ones(2 * int(channels)))

    def forward(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        psi, logvar = self.net((s - self.in_mean) / self.in_std).split(self.latent_dim, dim=1)
        return psi, logvar.clamp(-30.0, 20.0)


@dataclass(frozen=True)
class DVAEOutput:
    """One D-VAE pass: reconstructed statistics, posterior parameters and the sampled latent."""

    mu: torch.Tensor
    sigma: torch.Tensor
    psi: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor


class StyleVAE(nn.Module):
    """The D-VAE: q (``encoder``) and p (``decoder``) over ``s = [μ, σ]`` of C channels.

    ``latent_dim`` defaults to C and ``hidden`` to 2C (RAIN for VGG relu4_1: C = 512, hidden 1024,
    d = 512).
    """

    def __init__(self, channels: int, latent_dim: int | None = None, hidden: int | None = None) -> None:
        super().__init__()
        channels = int(channels)
        latent_dim = channels if latent_dim is None else int(latent_dim)
        hidden = 2 * channels if hidden is None else int(hidden)
        if min(channels, latent_dim, hidden) < 1:
            raise ConfigError(f"D-VAE sizes must be positive: channels {channels}, latent {latent_dim}, hidden {hidden}")
        self.channels, self.latent_dim, self.hidden = channels, latent_dim, hidden
        self.encoder = LatentEncoder(channels, latent_dim, hidden)
        self.decoder = LatentDecoder(channels, latent_dim, hidden)

    def forward(self, s: torch.Tensor, generator: torch.Generator | None = None) -> DVAEOutput:
        if s.dim() != 2 or s.shape[1] != 2 * self.channels:
            raise ValueError(f"D-VAE input must be [N, {2 * self.channels}], got {tuple(s.shape)}")
        psi, logvar = self.encoder(s)
        noise = torch.randn(psi.shape, generator=generator, device=psi.device, dtype=psi.dtype)
        z = psi + noise * torch.exp(0.5 * logvar)
        mu, sigma = self.decoder(z)
        return DVAEOutput(mu=mu, sigma=sigma, psi=psi, logvar=logvar, z=z)

    @property
    def stat_scale(self) -> torch.Tensor:
        """Per-entry scale of ``s`` (the input standardisation's std; ones when not normalised)."""
        return self.encoder.in_std

    @torch.no_grad()
    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Model standardised style vectors: q sees ``(s − mean) / std`` and p's outputs are mapped
        back with the same affine map (for σ through softplus: shift ``softplus⁻¹(mean_σ)``, scale
        ``std_σ / sigmoid(shift)``, the linearisation at the mean). The tiny encoder's statistics are
        ~0.05 with a spread of ~0.02, so without this the reconstruction term is negligible next to
        KL and p(ε) samples styles far outside the real ones."""
        c = self.channels
        mean, std = mean.reshape(-1).float(), std.reshape(-1).float()
        if mean.numel() != 2 * c or std.numel() != 2 * c:
            raise ValueError(f"normalisation statistics must have {2 * c} entries, got {mean.numel()}, {std.numel()}")
        # near-constant (dead) channels: floor each half's std at 10 % of its average so neither q's
        # input nor the reconstruction error is blown up by a ~0 std
        std = torch.cat([h.clamp_min(max(0.1 * float(h.mean()), 1e-6)) for h in (std[:c], std[c:])])
        self.encoder.in_mean.copy_(mean)
        self.encoder.in_std.copy_(std)
        m_sig = mean[c:].clamp_min(1e-4)
        raw_shift = m_sig + torch.log(-torch.expm1(-m_sig))  # softplus⁻¹
        shift = torch.cat([mean[:c], raw_shift])
        scale = torch.cat([std[:c], std[c:] / torch.sigmoid(raw_shift)])
        self.decoder.out_shift.copy_(shift)
        self.decoder.out_scale.copy_(scale)


# --------------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------------
def kl_loss(psi: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(ψ, ξ²) ‖ N(0, I)), averaged over samples and latent dimensions (≥ 0)."""
    return 0.5 * torch.mean(psi.pow(2) + logvar.exp() - logvar - 1.0)


def reconstruction_loss(
    mu: torch.Tensor, sigma: torch.Tensor, s: torch.Tensor, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """``‖[μ̂, σ̂] − s‖²`` (mean squared error) with the target ``s`` detached; with ``scale``
    (``[2C]``) the error is measured in standardised units, ``‖([μ̂, σ̂] − s) / scale‖²``."""
    diff = torch.cat([mu, sigma], dim=1) - s.detach()
    if scale is not None:
        diff = diff / scale
    return diff.pow(2).mean()


def content_loss(feat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``‖E(D(t)) − t‖²`` with ``t`` detached."""
    return F.mse_loss(feat, target.detach())


def style_loss(feats: list[torch.Tensor], style_feats: list[torch.Tensor]) -> torch.Tensor:
    """Σ over taps of MSE(μ) + MSE(σ) between the output's and the style image's features."""
    total = feats[0].new_zeros(())
    for f, g in zip(feats, style_feats, strict=True):
        mu, sigma = style_stats(f)
        mu_s, sigma_s = style_stats(g.detach())
        total = total + F.mse_loss(mu, mu_s) + F.mse_loss(sigma, sigma_s)
    return total


@dataclass(frozen=True)
class LossWeights:
    """Weights of the four terms (RAIN: content 1, style 1, KL 1, reconstruction 5)."""

    content: float = 1.0
    style: float = 1.0
    kl: float = 1.0
    rec: float = 5.0
    #: Decoder identity term ``‖D(E(x)) − x‖₁`` on the content images (0 = RAIN's four losses only).
    identity: float = 0.0

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if v < 0:
                raise ConfigError(f"loss weight {k} must be >= 0, got {v}")


@dataclass(frozen=True)
class LossTerms:
    """Unweighted loss values of one step (floats, for logging)."""

    content: float
    style: float
    kl: float
    rec: float
    total: float
    identity: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# optimisation
# --------------------------------------------------------------------------------------------------
class StyleTrainer:
    """One optimisation step of decoder + D-VAE on a (content, style) batch; encoder frozen.

    ``optimization="alternate"`` (RAIN): Adam on q, p with ``kl·KL + rec·REC``, then Adam on the
    decoder with ``content·L_c + style·L_s`` where the D-VAE's (μ̂, σ̂) are detached.
    ``"joint"``: one Adam on everything with the weighted sum of all four terms.
    Learning rate ``lr`` decays as RAIN's ``lr / (1 + lr_decay · step)``.
    """

    def __init__(
        self,
        encoder: StyleEncoder,
        decoder: StyleDecoder,
        vae: StyleVAE,
        weights: LossWeights = LossWeights(),
        optimization: str = "alternate",
        lr: float = 1e-4,
        lr_decay: float = 5e-5,
        alpha: float = 1.0,
    ) -> None:
        if optimization not in OPTIMIZATIONS:
            raise ConfigError(f"optimization must be one of {', '.join(OPTIMIZATIONS)}, got {optimization!r}")
        if lr <= 0:
            raise ConfigError(f"lr must be positive, got {lr}")
        self.encoder, self.decoder, self.vae = encoder.freeze().eval(), decoder, vae
        self.weights, self.optimization = weights, optimization
        self.lr, self.lr_decay, self.alpha = float(lr), float(lr_decay), float(alpha)
        if optimization == "alternate":
            self.optimizers = {
                "vae": torch.optim.Adam(vae.parameters(), lr=lr),
                "decoder": torch.optim.Adam(decoder.parameters(), lr=lr),
            }
        else:
            params = list(vae.parameters()) + list(decoder.parameters())
            self.optimizers = {"joint": torch.optim.Adam(params, lr=lr)}

    def state_dict(self) -> dict:
        return {k: opt.state_dict() for k, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state[k])

    def current_lr(self, step: int) -> float:
        return self.lr / (1.0 + self.lr_decay * step)

    def _set_lr(self, step: int) -> None:
        lr = self.current_lr(step)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr

    def _decoder_terms(self, content_feat, style_feats, mu, sigma):
        t = adain_blend(content_feat, mu, sigma, self.alpha)
        out_feats = self.encoder(self.decoder(t))
        return content_loss(out_feats[-1], t), style_loss(out_feats, style_feats)

    def _identity_term(self, content: torch.Tensor, content_feat: torch.Tensor) -> torch.Tensor:
        """``‖D(E(x)) − x‖₁``: keeps the decoder an autoencoder (natural colours and contrast) while it
        learns to render restyled features; without it stage 2 drifts to grey, low-contrast images."""
        if self.weights.identity <= 0:
            return content.new_zeros(())
        return F.l1_loss(self.decoder(content_feat), content)

    def step(self, content: torch.Tensor, style: torch.Tensor, step: int = 0) -> LossTerms:
        """Train on one batch; returns the unweighted loss terms. ``content``/``style``:
        ``[B, 3, H, W]`` in [0, 1] with H, W divisible by the encoder's divisor."""
        self._set_lr(step)
        self.decoder.train()
        self.vae.train()
        w = self.weights
        with torch.no_grad():
            content_feat = self.encoder.encode(content)
            style_feats = self.encoder(style)
        s = style_vector(style_feats[-1])
        out = self.vae(s)
        kl = kl_loss(out.psi, out.logvar)
        rec = reconstruction_loss(out.mu, out.sigma, s, self.vae.stat_scale)
        if self.optimization == "alternate":
            opt = self.optimizers["vae"]
            opt.zero_grad(set_to_none=True)
            (w.kl * kl + w.rec * rec).backward()
            opt.step()
            lc, ls = self._decoder_terms(content_feat, style_feats, out.mu.detach(), out.sigma.detach())
            li = self._identity_term(content, content_feat)
            opt = self.optimizers["decoder"]
            opt.zero_grad(set_to_none=True)
            (w.content * lc + w.style * ls + w.identity * li).backward()
            opt.step()
        else:
            lc, ls = self._decoder_terms(content_feat, style_feats, out.mu, out.sigma)
            li = self._identity_term(content, content_feat)
            opt = self.optimizers["joint"]
            opt.zero_grad(set_to_none=True)
            (w.content * lc + w.style * ls + w.kl * kl + w.rec * rec + w.identity * li).backward()
            opt.step()
        vals = [float(v.detach()) for v in (lc, ls, kl, rec)]
        ident = float(li.detach())
        total = w.content * vals[0] + w.style * vals[1] + w.kl * vals[2] + w.rec * vals[3] + w.identity * ident
        return LossTerms(*vals, total=total, identity=ident)


class AutoencoderTrainer:
    """Stage 1 for the ``tiny`` encoder: train encoder + decoder as an autoencoder,
    ``‖D(E(x)) − x‖²`` (pixel MSE), with Adam."""

    def __init__(self, encoder: StyleEncoder, decoder: StyleDecoder, lr: float = 1e-3) -> None:
        if lr <= 0:
            raise ConfigError(f"pretrain lr must be positive, got {lr}")
        self.encoder, self.decoder = encoder, decoder
        self.optimizer = torch.optim.Adam(list(encoder.parameters()) + list(decoder.parameters()), lr=lr)

    def state_dict(self) -> dict:
        return {"ae": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["ae"])

    def step(self, images: torch.Tensor) -> float:
        self.encoder.train()
        self.decoder.train()
        for p in self.encoder.parameters():
            p.requires_grad_(True)
        recon = self.decoder(self.encoder.encode(images))
        loss = F.mse_loss(recon, images)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())
