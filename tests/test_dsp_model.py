"""The deployable DSP: stylize, gradients to ε, ascent, traversal, save/load, batch transform."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from npdg.dsp.adain import build_decoder, build_encoder
from npdg.dsp.dvae import LatentDecoder
from npdg.dsp.model import DSP, DSPBatchTransform, DSPSpec, per_sample_ce, style_ce
from npdg.errors import ConfigError, DataError

NUM_CLASSES = 5


def make_dsp(seed: int = 0, channels=(4, 8, 8), latent: int = 6) -> DSP:
    torch.manual_seed(seed)
    enc = build_encoder("tiny", channels)
    spec = DSPSpec(encoder="tiny", channels=tuple(channels), latent_dim=latent, hidden=16, image_size=(32, 64))
    return DSP(enc, build_decoder(enc), LatentDecoder(enc.channels, latent, 16), spec).freeze()


class TinySeg(nn.Module):
    """A stand-in segmentor: conv-BN-ReLU-conv, logits at full resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, NUM_CLASSES, 3, padding=1))

    def forward(self, x):
        return self.net(x)


def make_batch(b: int = 2, h: int = 32, w: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, h, w, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (b, h, w), generator=g)
    labels[:, :2] = 255
    return images, labels


def test_stylize_shape_range_layout_and_seed():
    dsp = make_dsp()
    images, _ = make_batch(3)
    out = dsp.stylize(images, n_styles=4, seed=7)
    assert out.shape == (12, 3, 32, 64)
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, dsp.stylize(images, n_styles=4, seed=7))
    assert not torch.equal(out, dsp.stylize(images, n_styles=4, seed=8))
    # layout: row b*K + k is image b in style k — restyling image 1 alone with its eps matches
    eps = dsp.sample_eps(12, seed=7)
    one = dsp.stylize(images[1:2], eps[4:8])
    assert torch.allclose(out[4:8], one, atol=1e-4)
    # K styles of one image differ from each other
    assert (out[4] - out[5]).abs().mean() > 1e-4


def test_stylize_any_size_and_bad_input():
    dsp = make_dsp()
    out = dsp.stylize(torch.rand(1, 3, 17, 23), seed=0)
    assert out.shape == (1, 3, 17, 23)
    with pytest.raises(ConfigError, match=r"\[B, 3, H, W\]"):
        dsp.stylize(torch.rand(3, 32, 32))
    with pytest.raises(ConfigError, match=r"\[B, 3, H, W\]"):
        dsp.stylize(torch.rand(1, 4, 32, 32))
    with pytest.raises(ConfigError, match="n_styles"):
        dsp.stylize(torch.rand(1, 3, 8, 8), n_styles=0)
    with pytest.raises(ConfigError, match="latent size 6"):
        dsp.stylize(torch.rand(2, 3, 8, 8), eps=torch.zeros(2, 5))
    with pytest.raises(ConfigError, match="rows"):
        dsp.stylize(torch.rand(2, 3, 8, 8), eps=torch.zeros(3, 6))
    with pytest.raises(ConfigError, match="alpha"):
        dsp.stylize(torch.rand(1, 3, 8, 8), alpha=1.5)


def test_alpha_zero_ignores_eps():
    dsp = make_dsp()
    images, _ = make_batch(1)
    a = dsp.stylize(images, dsp.sample_eps(1, seed=0), alpha=0.0)
    b = dsp.stylize(images, dsp.sample_eps(1, seed=1), alpha=0.0)
    assert torch.equal(a, b)
    assert torch.allclose(a, dsp.reconstruct(images))


def test_gradients_reach_eps():
    dsp = make_dsp()
    seg = TinySeg()
    images, labels = make_batch(2)
    eps = dsp.sample_eps(4, seed=0).requires_grad_(True)
    out = dsp.stylize(images, eps)
    loss = per_sample_ce(seg(out), labels.repeat_interleave(2, 0)).mean()
    loss.backward()
    assert eps.grad is not None and torch.isfinite(eps.grad).all()
    assert eps.grad.abs().sum(1).min() > 0  # every style row gets a gradient
    assert all(p.grad is None for p in dsp.parameters())


@pytest.mark.parametrize("rule", ["normalized", "asm"])
def test_ascent_increases_ce_and_restores_segmentor(rule):
    dsp = make_dsp(1)
    seg = TinySeg().train()
    seg.net[0].weight.requires_grad_(True)
    images, labels = make_batch(2, seed=3)
    eps0 = dsp.sample_eps(2, seed=0)
    bn_before = seg.net[1].running_mean.clone()
    ce0 = style_ce(dsp, images, labels, seg, eps0)
    eps = dsp.ascend(images, labels, seg, eps0, steps=4, step_size=0.5 if rule == "normalized" else 20.0, rule=rule)
    ce1 = style_ce(dsp, images, labels, seg, eps)
    assert eps.shape == eps0.shape and not eps.requires_grad
    assert ce1.mean() > ce0.mean()
    assert seg.training and all(p.requires_grad for p in seg.parameters())
    assert all(p.grad is None for p in seg.parameters())
    assert torch.equal(seg.net[1].running_mean, bn_before)  # ascent ran the segmentor in eval mode
    if rule == "normalized":  # 4 steps of length 0.5 per sample: moved, by at most 2
        moved = (eps - eps0).norm(dim=1)
        assert ((moved > 0.4) & (moved <= 2.0 + 1e-4)).all()


def test_ascent_zero_steps_and_bad_rule():
    dsp = make_dsp()
    images, labels = make_batch(1)
    eps0 = dsp.sample_eps(1, seed=0)
    assert torch.equal(dsp.ascend(images, labels, TinySeg(), eps0, steps=0), eps0)
    with pytest.raises(ConfigError, match="rule"):
        dsp.ascend(images, labels, TinySeg(), eps0, rule="pgd")
    with pytest.raises(ConfigError, match="labels"):
        dsp.ascend(images, labels[0], TinySeg(), eps0)


def test_traverse():
    dsp = make_dsp()
    image = torch.rand(3, 16, 24)
    out = dsp.traverse(image, dim=2, values=[-2, 0, 2])
    assert out.shape == (3, 3, 16, 24)
    eps = torch.zeros(3, 6)
    eps[:, 2] = torch.tensor([-2.0, 0, 2])
    assert torch.allclose(out, dsp.stylize(image[None], eps))
    with pytest.raises(ConfigError, match="out of range"):
        dsp.traverse(image, dim=6, values=[0])


def test_save_load_round_trip(tmp_path):
    dsp = make_dsp(2)
    images, _ = make_batch(2)
    eps = dsp.sample_eps(2, seed=0)
    dsp.save(tmp_path / "d")
    spec = json.loads((tmp_path / "d" / "dsp.json").read_text())
    assert spec["encoder"] == "tiny" and spec["latent_dim"] == 6 and spec["channels"] == [4, 8, 8]
    loaded = DSP.load(tmp_path / "d")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(loaded.stylize(images, eps), dsp.stylize(images, eps))
    dsp.save(tmp_path / "h", fp16=True)
    half = DSP.load(tmp_path / "h")
    assert json.loads((tmp_path / "h" / "dsp.json").read_text())["dtype"] == "float16"
    assert (half.stylize(images, eps) - dsp.stylize(images, eps)).abs().max() < 0.02
    assert (tmp_path / "h" / "dsp.safetensors").stat().st_size < (tmp_path / "d" / "dsp.safetensors").stat().st_size


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="dsp.json"):
        DSP.load(tmp_path)
    make_dsp().save(tmp_path / "d")
    other = make_dsp(channels=(4, 8, 10))
    other.save(tmp_path / "o")
    (tmp_path / "o" / "dsp.json").write_text((tmp_path / "d" / "dsp.json").read_text())
    with pytest.raises(DataError, match="do not match"):
        DSP.load(tmp_path / "o")
    (tmp_path / "d" / "dsp.json").write_text("{}")
    with pytest.raises(DataError, match="not an npdg DSP"):
        DSP.load(tmp_path / "d")


def test_batch_transform_dsp_mode_persists_and_resets():
    dsp = make_dsp()
    seg = TinySeg()
    images, labels = make_batch(2)
    tf = DSPBatchTransform(dsp, mode="ascend", ascent_steps=1, step_size=0.5, reset_every=3, segmentor=seg)
    x, y = tf(images, labels, step=1)
    assert x.shape == (4, 3, 32, 64) and torch.equal(x[:2], images)
    assert torch.equal(y, torch.cat([labels, labels]))
    eps1 = tf.eps.clone()
    tf(images, labels, step=2)
    assert (tf.eps - eps1).norm(dim=1).max() == pytest.approx(0.5, abs=1e-4)  # one more ascent step
    eps2 = tf.eps.clone()
    tf(images, labels, step=3)  # reset, then one step
    assert ((tf.eps - eps2).norm(dim=1) > 0.6).all()
    tf.segmentor = None
    with pytest.raises(ConfigError, match="segmentor"):
        tf(images, labels, step=4)


def test_batch_transform_random_mode():
    dsp = make_dsp()
    images, labels = make_batch(2)
    tf = DSPBatchTransform(dsp, mode="random", seed=0)
    x1, _ = tf(images, labels, step=0)
    x2, _ = tf(images, labels, step=1)
    assert x1.shape == (4, 3, 32, 64) and not torch.equal(x1[2:], x2[2:])
    with pytest.raises(ConfigError, match="mode"):
        DSPBatchTransform(dsp, mode="mixup")


def test_load_files_without_latent_normalisation(tmp_path):
    """DSP files written before the D-VAE output normalisation load with the identity map."""
    from safetensors.torch import load_file, save_file

    dsp = make_dsp(4)
    dsp.save(tmp_path / "d")
    path = tmp_path / "d" / "dsp.safetensors"
    state = load_file(str(path))
    assert "latent.out_shift" in state and "latent.out_scale" in state
    legacy = {k: v for k, v in state.items() if not k.startswith("latent.out_")}
    save_file(legacy, str(path), metadata={"format": "npdg-dsp"})
    loaded = DSP.load(tmp_path / "d")
    eps = dsp.sample_eps(2, seed=1)
    images, _ = make_batch(2)
    assert torch.equal(loaded.latent.out_scale, torch.ones(16))
    assert torch.allclose(loaded.stylize(images, eps), dsp.stylize(images, eps))
