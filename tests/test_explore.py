"""Style grids and traversals (npdg.dsp.explore): the same codes, images and CE as the DSP itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from npdg.dsp.adain import build_decoder, build_encoder
from npdg.dsp.dvae import LatentDecoder
from npdg.dsp.explore import TRAVERSE_VALUES, style_grid, traverse_grid
from npdg.dsp.model import DSP, DSPSpec, style_ce
from npdg.errors import ConfigError
from npdg.viz import to_uint8_image

NUM_CLASSES = 5


def make_dsp(seed: int = 0) -> DSP:
    torch.manual_seed(seed)
    enc = build_encoder("tiny", (4, 8, 8))
    spec = DSPSpec(encoder="tiny", channels=(4, 8, 8), latent_dim=6, hidden=16, image_size=(16, 32))
    return DSP(enc, build_decoder(enc), LatentDecoder(enc.channels, 6, 16), spec).freeze()


class TinySeg(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, NUM_CLASSES, 3, padding=1))

    def forward(self, x):
        return self.net(x)


def batch(b: int = 2, h: int = 16, w: int = 32):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(b, 3, h, w, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (b, h, w), generator=g)
    labels[:, :2] = 255
    return images, labels


def test_style_grid_matches_stylize_ascend_and_style_ce():
    dsp, seg = make_dsp(), TinySeg().train()
    flags = [p.requires_grad for p in seg.parameters()]
    x, y = batch()
    calls = []
    grid = style_grid(dsp, x, y, seg, n_styles=3, steps=2, step_size=0.05, seed=4,
                      progress=lambda d, t: calls.append((d, t)))
    assert seg.training and [p.requires_grad for p in seg.parameters()] == flags
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert grid.random.shape == grid.ascended.shape == (2, 3, 16, 32, 3) and grid.random.dtype == np.uint8
    assert grid.inputs.shape == (2, 16, 32, 3) and grid.labels.shape == (2, 16, 32)
    assert grid.eps_random.shape == grid.eps_ascended.shape == (2, 3, 6)
    for a in (grid.inputs, grid.random, grid.ascended, grid.eps_random, grid.ce_steps, grid.labels):
        assert not a.flags.writeable
    # the codes: drawn from the seed, then exactly DSP.ascend with the same number of steps
    eps0 = dsp.sample_eps(6, seed=4)
    np.testing.assert_array_equal(grid.eps_random.reshape(6, 6), eps0.numpy())
    eps2 = dsp.ascend(x, y, seg, eps0, steps=2, step_size=0.05)
    np.testing.assert_allclose(grid.eps_ascended.reshape(6, 6), eps2.numpy(), atol=1e-5)
    # the CE before/after is style_ce on those codes; the images are their stylizations
    np.testing.assert_allclose(grid.ce_before.reshape(-1), style_ce(dsp, x, y, seg, eps0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(grid.ce_after.reshape(-1), style_ce(dsp, x, y, seg, eps2).numpy(), rtol=1e-4)
    with torch.no_grad():
        first = to_uint8_image(dsp.stylize(x[1:2], eps0[3:4])[0])
    np.testing.assert_array_equal(grid.random[1, 0], first)
    # a small normalized step climbs the CE (first order: never down, up on average)
    assert (grid.ce_steps[..., 1] >= grid.ce_steps[..., 0] - 1e-6).all()
    assert grid.ce_steps[..., 2].mean() > grid.ce_steps[..., 0].mean()
    t = grid.ce_table()
    assert list(t.columns) == ["image", "style", "step", "ce"] and len(t) == 2 * 3 * 3
    assert t.query("image == 1 and style == 2 and step == 2")["ce"].item() == pytest.approx(float(grid.ce_steps[1, 2, 2]))
    tiles, titles, ncols = grid.tiles()
    assert ncols == 7 and len(tiles) == len(titles) == 14 and titles[0] == "input"


def test_pseudo_labels_chunks_and_seed():
    dsp, seg = make_dsp(), TinySeg().eval()
    x, _ = batch(3)
    whole = style_grid(dsp, x, None, seg, n_styles=2, steps=1, seed=1)
    assert whole.pseudo_labels
    with torch.no_grad():
        np.testing.assert_array_equal(whole.labels, seg(x).argmax(1).numpy())
    chunked = style_grid(dsp, x, None, seg, n_styles=2, steps=1, seed=1, batch_size=1)
    np.testing.assert_allclose(chunked.ce_steps, whole.ce_steps, rtol=1e-5)
    np.testing.assert_allclose(chunked.eps_ascended, whole.eps_ascended, atol=1e-5)
    other = style_grid(dsp, x, None, seg, n_styles=2, steps=1, seed=2)
    assert not np.array_equal(other.eps_random, whole.eps_random)


def test_no_segmentor_and_zero_steps():
    dsp = make_dsp()
    x, y = batch(1)
    only = style_grid(dsp, x, None, None, n_styles=4, steps=3, seed=0)
    assert only.ascended is None and only.ce_steps is None and only.ce_table().empty
    assert only.random.shape == (1, 4, 16, 32, 3) and only.tiles()[2] == 5
    flat = style_grid(dsp, x, y, TinySeg(), n_styles=2, steps=0)
    np.testing.assert_array_equal(flat.ascended, flat.random)
    assert flat.ce_steps.shape == (1, 2, 1)


def test_style_grid_refuses_bad_arguments():
    dsp, seg = make_dsp(), TinySeg()
    x, y = batch()
    with pytest.raises(ConfigError, match="n_styles"):
        style_grid(dsp, x, y, seg, n_styles=0, steps=1)
    with pytest.raises(ConfigError, match="labels"):
        style_grid(dsp, x, y[:1], seg, n_styles=1, steps=1)
    with pytest.raises(ConfigError, match="rule"):
        style_grid(dsp, x, y, seg, n_styles=1, steps=1, rule="sgd")


def test_traverse_grid_images_and_ce():
    dsp, seg = make_dsp(), TinySeg()
    x, y = batch(1)
    tg = traverse_grid(dsp, x[0], y[0], seg, dim=2)
    assert tg.images.shape == (len(TRAVERSE_VALUES), 16, 32, 3) and not tg.images.flags.writeable
    with torch.no_grad():
        ref = dsp.traverse(x, 2, TRAVERSE_VALUES)
    np.testing.assert_array_equal(tg.images[6], to_uint8_image(ref[6]))
    eps = torch.zeros(1, 6)
    eps[0, 2] = 3.0
    assert float(tg.ce[6]) == pytest.approx(style_ce(dsp, x, y, seg, eps).item(), rel=1e-5)
    assert len(np.unique(tg.ce)) > 1  # the style moves the CE
    t = tg.table()
    assert list(t.columns) == ["dim", "value", "ce"] and t["value"].tolist() == list(TRAVERSE_VALUES)
    bare = traverse_grid(dsp, x, None, None, dim=0, values=[0.0, 1.0])
    assert bare.ce is None and bare.images.shape[0] == 2 and bare.table()["ce"].isna().all()
    with pytest.raises(ConfigError, match="out of range"):
        traverse_grid(dsp, x, None, None, dim=6)
