"""AdaIN statistics, encoders/decoder and VGG-19 weight-file detection (npdg.dsp.adain)."""

from __future__ import annotations

import pytest
import torch

from npdg.dsp.adain import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    STAT_EPS,
    adain,
    adain_blend,
    build_decoder,
    build_encoder,
    check_alpha,
    detect_vgg_format,
    load_vgg19_weights,
    style_stats,
    style_vector,
    vgg19_plan,
)
from npdg.errors import ConfigError, DataError


def test_style_stats_definition():
    torch.manual_seed(0)
    f = torch.randn(2, 5, 7, 9) * 3 + 1
    mu, sigma = style_stats(f)
    assert mu.shape == sigma.shape == (2, 5)
    flat = f.flatten(2)
    assert torch.allclose(mu, flat.mean(2))
    assert torch.allclose(sigma, (flat.var(2, unbiased=False) + STAT_EPS).sqrt())
    assert style_vector(f).shape == (2, 10)
    # a 1×1 map has a finite sigma sqrt(eps), not NaN
    _, s1 = style_stats(torch.ones(1, 3, 1, 1))
    assert torch.allclose(s1, torch.full((1, 3), STAT_EPS**0.5))


def test_adain_output_has_target_statistics():
    torch.manual_seed(1)
    f = torch.randn(3, 4, 16, 16) * 2 - 0.5
    mu_t = torch.tensor([[0.0, 1.0, -2.0, 5.0]]).repeat(3, 1)
    sigma_t = torch.tensor([[1.0, 0.5, 3.0, 0.1]]).repeat(3, 1)
    out = adain(f, mu_t, sigma_t)
    mu_o = out.flatten(2).mean(2)
    std_o = out.flatten(2).std(2, unbiased=False)
    assert torch.allclose(mu_o, mu_t, atol=1e-5)
    assert torch.allclose(std_o, sigma_t, rtol=1e-4)


def test_alpha_blend_and_validation():
    torch.manual_seed(2)
    f = torch.randn(2, 3, 8, 8)
    mu, sigma = torch.randn(2, 3), torch.rand(2, 3) + 0.5
    assert torch.equal(adain_blend(f, mu, sigma, 0.0), f)
    full = adain_blend(f, mu, sigma, 1.0)
    assert torch.allclose(full, adain(f, mu, sigma))
    half = adain_blend(f, mu, sigma, 0.5)
    assert torch.allclose(half, 0.5 * full + 0.5 * f, atol=1e-6)
    for bad in (-0.1, 1.5, "x"):
        with pytest.raises(ConfigError, match="alpha"):
            check_alpha(bad)
    with pytest.raises(ConfigError):
        adain_blend(f, mu, sigma, 2.0)


def test_tiny_encoder_decoder_shapes_and_divisor():
    enc = build_encoder("tiny", (4, 8, 12))
    dec = build_decoder(enc)
    assert enc.divisor == 4 and enc.channels == 12 and enc.tap_channels == (4, 8, 12)
    x = torch.rand(2, 3, 32, 64)
    feats = enc(x)
    assert [tuple(f.shape) for f in feats] == [(2, 4, 32, 64), (2, 8, 16, 32), (2, 12, 8, 16)]
    assert all((f >= 0).all() for f in feats)  # taps are ReLU outputs
    assert dec(feats[-1]).shape == x.shape
    with pytest.raises(ConfigError):
        build_encoder("resnet")


def test_vgg_decoder_mirrors_adain():
    enc = build_encoder("vgg19")
    assert enc.taps == ("relu1_1", "relu2_1", "relu3_1", "relu4_1") and enc.divisor == 8
    dec = build_decoder(enc)
    convs = [(c.in_channels, c.out_channels) for c in dec.convs]
    # AdaIN / RAIN decoder: 512→256, 256→256 ×3, 256→128, 128→128, 128→64, 64→64, 64→3
    assert convs == [(512, 256), (256, 256), (256, 256), (256, 256), (256, 128), (128, 128), (128, 64),
                     (64, 64), (64, 3)]
    assert sum(1 for op in dec.plan if op[0] == "up") == 3


def _fake_states():
    """Random state dicts with VGG-19 shapes in both namings (only the part up to relu4_1 + a bit)."""
    g = torch.Generator().manual_seed(0)
    convs = [(op[1], op[2]) for op in vgg19_plan() if op[0] == "conv"]
    norm = {"0.weight": torch.randn(3, 3, 1, 1, generator=g), "0.bias": torch.randn(3, generator=g)}
    tv = {}
    for (ci, co), ni, ti in zip(convs, (2, 5, 9, 12, 16, 19, 22, 25, 29), (0, 2, 5, 7, 10, 12, 14, 16, 19)):
        w, b = torch.randn(co, ci, 3, 3, generator=g) * 0.05, torch.randn(co, generator=g)
        norm[f"{ni}.weight"], norm[f"{ni}.bias"] = w, b
        tv[f"features.{ti}.weight"], tv[f"features.{ti}.bias"] = w, b
    norm["32.weight"] = torch.randn(512, 512, 3, 3, generator=g) * 0  # later layers are ignored
    tv["classifier.0.weight"] = torch.zeros(4, 4)
    return norm, tv


def test_vgg_weight_detection_both_formats(tmp_path):
    norm, tv = _fake_states()
    torch.save(norm, tmp_path / "vgg_normalised.pth")
    torch.save(tv, tmp_path / "vgg19.pth")
    assert detect_vgg_format(norm) == "normalised" and detect_vgg_format(tv) == "torchvision"
    sd_n = load_vgg19_weights(tmp_path / "vgg_normalised.pth")
    sd_t = load_vgg19_weights(tmp_path / "vgg19.pth")
    assert torch.equal(sd_n["pre.weight"], norm["0.weight"])
    assert torch.equal(sd_n["convs.8.weight"], norm["29.weight"])
    assert torch.equal(sd_t["convs.8.weight"], tv["features.19.weight"])
    assert torch.equal(sd_t["convs.3.bias"], tv["features.7.bias"])
    # torchvision weights get the ImageNet normalisation in the 1×1 pre conv
    enc = build_encoder("vgg19", weights=tmp_path / "vgg19.pth")
    x = torch.rand(1, 3, 4, 4)
    expected = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(enc.pre(x), expected, atol=1e-6)
    assert enc(torch.rand(1, 3, 16, 24))[-1].shape == (1, 512, 2, 3)


def test_vgg_weight_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_vgg19_weights(tmp_path / "missing.pth")
    norm, tv = _fake_states()
    tv["features.10.weight"] = torch.zeros(256, 64, 3, 3)  # wrong in-channels
    torch.save(tv, tmp_path / "bad.pth")
    with pytest.raises(DataError, match=r"features\.10\.weight.*shape"):
        load_vgg19_weights(tmp_path / "bad.pth")
    del norm["29.bias"]
    torch.save(norm, tmp_path / "incomplete.pth")
    with pytest.raises(DataError, match="lacks '29.bias'"):
        load_vgg19_weights(tmp_path / "incomplete.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(DataError, match="not a recognised VGG-19"):
        load_vgg19_weights(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read"):
        load_vgg19_weights(tmp_path / "junk.pth")
