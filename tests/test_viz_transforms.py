"""npdg.viz overlays/grids and npdg.data.transforms keep labels exact."""

import numpy as np
import pytest
import torch

from npdg import viz
from npdg.data import transforms as T
from npdg.errors import ConfigError
from npdg.labels import PALETTE


def test_overlay_blends_only_selected_classes():
    img = np.full((4, 4, 3), 100, np.uint8)
    lab = np.array([[0, 0, 13, 13]] * 3 + [[255, 255, 255, 255]], np.uint8)
    out = viz.overlay(img, lab, opacity=1.0)
    assert tuple(out[0, 0]) == tuple(PALETTE[0]) and tuple(out[0, 2]) == tuple(PALETTE[13])
    assert tuple(out[3, 0]) == (100, 100, 100)  # ignore pixels untouched
    only_car = viz.overlay(img, lab, opacity=1.0, classes=[13])
    assert tuple(only_car[0, 0]) == (100, 100, 100) and tuple(only_car[0, 2]) == tuple(PALETTE[13])
    half = viz.overlay(img, lab, opacity=0.5)
    assert abs(int(half[0, 0, 0]) - (100 + 128) // 2) <= 1
    assert (viz.overlay(img, lab, opacity=0.0) == img).all()


def test_overlay_accepts_tensors_and_checks_shapes():
    img = torch.rand(3, 5, 6)
    lab = torch.zeros(5, 6, dtype=torch.long)
    assert viz.overlay(img, lab).shape == (5, 6, 3)
    with pytest.raises(ValueError, match="does not match"):
        viz.overlay(img, torch.zeros(4, 6, dtype=torch.long))


def test_grid_and_legend_shapes():
    tiles = [np.zeros((10, 20, 3), np.uint8)] * 5
    g = viz.grid(tiles, ncols=2, titles=list("abcde"), pad=2, title_h=8)
    assert g.shape == (3 * (10 + 8 + 2) + 2, 2 * (20 + 2) + 2, 3)
    leg = viz.legend([0, 13])
    assert leg.shape[0] >= 36 and leg.dtype == np.uint8
    # the swatch of class 13 holds its colour
    assert (leg == PALETTE[13]).all(axis=-1).sum() > 50


@pytest.mark.parametrize("text,expected", [("256x512", (256, 512)), ("64X128", (64, 128)), ((32, 64), (32, 64))])
def test_parse_size(text, expected):
    assert T.parse_size(text) == expected


@pytest.mark.parametrize("bad", ["256", "axb", "0x64", (1, 2, 3)])
def test_parse_size_errors(bad):
    with pytest.raises(ConfigError):
        T.parse_size(bad)


def test_resize_keeps_label_ids_and_crops_pad_with_ignore():
    rng = np.random.default_rng(0)
    lab = rng.choice([0, 2, 13, 255], size=(37, 53)).astype(np.uint8)
    img = rng.integers(0, 255, size=(37, 53, 3), dtype=np.uint8)
    i2, l2 = T.Resize((64, 96))(img, lab)
    assert i2.shape == (64, 96, 3) and l2.shape == (64, 96)
    assert set(np.unique(l2)) <= {0, 2, 13, 255}
    i3, l3 = T.ResizeHeight(20)(img, lab)
    assert i3.shape[0] == 20 and i3.shape[1] == round(53 * 20 / 37)
    i4, l4 = T.CenterCrop((40, 60))(img, lab)
    assert i4.shape == (40, 60, 3) and (l4[37:, :] == 255).all() and (i4[37:] == 0).all()
    i5, l5 = T.RandomCrop((16, 16))(img, lab, np.random.default_rng(1))
    i6, l6 = T.RandomCrop((16, 16))(img, lab, np.random.default_rng(1))
    assert (l5 == l6).all() and (i5 == i6).all()


def test_to_tensor():
    img = np.array([[[0, 128, 255]]], np.uint8)
    t = T.image_to_tensor(img)
    assert t.shape == (3, 1, 1) and t.dtype == torch.float32
    assert torch.allclose(t.flatten(), torch.tensor([0.0, 128 / 255, 1.0]))
    assert T.label_to_tensor(np.array([[255]], np.uint8)).dtype == torch.int64
