"""D-VAE shapes, losses and the two optimisation schemes (npdg.dsp.dvae)."""

from __future__ import annotations

import pytest
import torch

from npdg.dsp.adain import build_decoder, build_encoder, style_vector
from npdg.dsp.dvae import (
    AutoencoderTrainer,
    LossWeights,
    StyleTrainer,
    StyleVAE,
    kl_loss,
    reconstruction_loss,
    style_loss,
)
from npdg.errors import ConfigError


def test_dvae_shapes_and_positive_sigma():
    torch.manual_seed(0)
    vae = StyleVAE(channels=12)
    assert vae.latent_dim == 12 and vae.hidden == 24
    s = torch.randn(5, 24)
    out = vae(s)
    assert out.mu.shape == out.sigma.shape == (5, 12)
    assert out.psi.shape == out.logvar.shape == out.z.shape == (5, 12)
    assert (out.sigma > 0).all()
    mu, sigma = vae.decoder(torch.randn(7, 12) * 10)
    assert (sigma > 0).all() and mu.shape == (7, 12)
    vae2 = StyleVAE(channels=8, latent_dim=3, hidden=5)
    assert vae2(torch.randn(2, 16)).z.shape == (2, 3)
    with pytest.raises(ValueError):
        vae(torch.randn(2, 10))


def test_kl_is_nonnegative_and_zero_at_prior():
    torch.manual_seed(1)
    for _ in range(5):
        assert kl_loss(torch.randn(4, 6), torch.randn(4, 6)) >= 0
    assert kl_loss(torch.zeros(3, 4), torch.zeros(3, 4)).item() == pytest.approx(0.0, abs=1e-7)
    # KL(N(1, 1) || N(0, 1)) = 0.5 per dimension
    assert kl_loss(torch.ones(2, 3), torch.zeros(2, 3)).item() == pytest.approx(0.5)


def test_reconstruction_target_is_detached():
    s = torch.randn(2, 8, requires_grad=True)
    mu = torch.randn(2, 4, requires_grad=True)
    loss = reconstruction_loss(mu, torch.ones(2, 4), s)
    loss.backward()
    assert s.grad is None and mu.grad is not None


def test_style_loss_zero_for_identical_features():
    feats = [torch.rand(2, 3, 8, 8), torch.rand(2, 5, 4, 4)]
    assert style_loss(feats, feats).item() == pytest.approx(0.0, abs=1e-10)
    assert style_loss(feats, [f * 2 for f in feats]).item() > 0.01


def _setup(seed=0):
    torch.manual_seed(seed)
    enc = build_encoder("tiny", (4, 8, 8))
    dec = build_decoder(enc)
    vae = StyleVAE(enc.channels)
    g = torch.Generator().manual_seed(seed)
    content = torch.rand(4, 3, 32, 64, generator=g)
    style = (torch.rand(4, 3, 32, 64, generator=g) * 0.5 + torch.tensor([0.5, 0.1, 0.2])[:, None, None]).clamp(0, 1)
    return enc, dec, vae, content, style


@pytest.mark.parametrize("optimization", ["alternate", "joint"])
def test_losses_decrease_on_fixed_batch(optimization):
    enc, dec, vae, content, style = _setup()
    enc_before = [p.clone() for p in enc.parameters()]
    trainer = StyleTrainer(enc, dec, vae, optimization=optimization, lr=3e-3)
    torch.manual_seed(0)
    first = [trainer.step(content, style, i) for i in range(3)]
    for i in range(3, 60):
        trainer.step(content, style, i)
    last = [trainer.step(content, style, i) for i in range(60, 63)]

    def mean(terms, key):
        return sum(getattr(t, key) for t in terms) / len(terms)

    assert mean(last, "rec") < 0.5 * mean(first, "rec")
    assert mean(last, "content") + mean(last, "style") < mean(first, "content") + mean(first, "style")
    assert mean(last, "total") < mean(first, "total")
    assert all(t.kl >= 0 for t in first + last)
    # the encoder is frozen
    assert all(torch.equal(a, b) for a, b in zip(enc_before, enc.parameters()))
    assert not any(p.requires_grad for p in enc.parameters())


def test_alternate_keeps_decoder_loss_out_of_the_dvae():
    """RAIN's alternation: the D-VAE is trained on KL + rec only — a zero rec/KL weight freezes it."""
    enc, dec, vae, content, style = _setup(1)
    before = [p.clone() for p in vae.parameters()]
    trainer = StyleTrainer(enc, dec, vae, weights=LossWeights(kl=0.0, rec=0.0), optimization="alternate")
    dec_before = [p.clone() for p in dec.parameters()]
    trainer.step(content, style)
    assert all(torch.equal(a, b) for a, b in zip(before, vae.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(dec_before, dec.parameters()))


def test_trainer_config_errors():
    enc, dec, vae, _, _ = _setup()
    with pytest.raises(ConfigError, match="optimization"):
        StyleTrainer(enc, dec, vae, optimization="sgd")
    with pytest.raises(ConfigError, match="weight"):
        LossWeights(rec=-1)


def test_lr_decay_follows_rain():
    enc, dec, vae, _, _ = _setup()
    trainer = StyleTrainer(enc, dec, vae, lr=1e-4, lr_decay=5e-5)
    assert trainer.current_lr(0) == pytest.approx(1e-4)
    assert trainer.current_lr(20000) == pytest.approx(1e-4 / 2)


def test_autoencoder_pretraining_reduces_reconstruction_error():
    torch.manual_seed(0)
    enc = build_encoder("tiny", (4, 8, 8))
    dec = build_decoder(enc)
    ae = AutoencoderTrainer(enc, dec, lr=3e-3)
    x = torch.rand(4, 3, 32, 32)
    first = ae.step(x)
    for _ in range(60):
        last = ae.step(x)
    assert last < 0.5 * first


def test_style_vector_feeds_dvae():
    enc = build_encoder("tiny", (4, 8, 6))
    s = style_vector(enc.encode(torch.rand(3, 3, 16, 16)))
    assert s.shape == (3, 12) and (s[:, 6:] > 0).all()


def test_normalization_standardises_dvae_input_and_output():
    torch.manual_seed(0)
    vae = StyleVAE(4, hidden=8)
    mean = torch.tensor([0.05, 0.02, 0.03, 0.04, 0.06, 0.01, 0.02, 0.08])
    std = torch.tensor([0.01, 0.02, 0.01, 0.02, 0.01, 0.005, 0.01, 0.02])
    vae.set_normalization(mean, std)
    assert torch.equal(vae.stat_scale, std)
    # p's raw output 0 maps to the mean statistics (σ through softplus)
    for m in vae.decoder.net:
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.zeros_(m.weight)
            torch.nn.init.zeros_(m.bias)
    mu, sigma = vae.decoder(torch.randn(3, vae.latent_dim))
    assert torch.allclose(mu, mean[:4].expand(3, 4), atol=1e-6)
    assert torch.allclose(sigma, mean[4:].expand(3, 4), atol=1e-5)
    # rec loss in standardised units: an error of one std costs 1
    s = mean.expand(2, 8).clone()
    assert reconstruction_loss(s[:, :4] + std[:4], s[:, 4:] + std[4:], s, std).item() == pytest.approx(1.0)
    assert reconstruction_loss(s[:, :4], s[:, 4:], s).item() == 0.0
    with pytest.raises(ValueError):
        vae.set_normalization(mean[:4], std[:4])


def test_normalized_dvae_state_round_trips():
    vae = StyleVAE(4, hidden=8)
    vae.set_normalization(torch.rand(8) * 0.1, torch.rand(8) * 0.1 + 0.01)
    other = StyleVAE(4, hidden=8)
    other.load_state_dict(vae.state_dict())
    assert torch.equal(other.decoder.out_scale, vae.decoder.out_scale)
    assert torch.equal(other.encoder.in_mean, vae.encoder.in_mean)


def test_identity_term_keeps_decoder_an_autoencoder():
    enc, dec, vae, content, style = _setup(2)
    off = StyleTrainer(enc, dec, vae, optimization="alternate").step(content, style)
    assert off.identity == 0.0
    trainer = StyleTrainer(enc, dec, vae, weights=LossWeights(identity=10.0), optimization="alternate", lr=3e-3)
    first = trainer.step(content, style, 0)
    for i in range(1, 40):
        last = trainer.step(content, style, i)
    assert first.identity > 0 and last.identity < first.identity
    assert last.total == pytest.approx(last.content + last.style + last.kl + 5 * last.rec + 10 * last.identity)
    with pytest.raises(ConfigError, match="identity"):
        LossWeights(identity=-1)
