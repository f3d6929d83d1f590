"""npdg.data.io: every image flavour decodes to uint8 RGB, labels keep their indices, bad files fail
with the file's name, PNG writes are atomic."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
from PIL import Image

from npdg.data.io import (
    image_size,
    inspect_image,
    png_bit_depth,
    read_label_indices,
    read_label_synthia,
    read_rgb,
    write_png,
)
from npdg.errors import DataError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def _truncate(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_read_rgb_png_is_exact(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "a.png")
    out = read_rgb(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, RGB)
    out[0, 0] = 0  # the result is a writable array (torch.from_numpy would warn otherwise)


def test_read_rgb_drops_alpha(tmp_path):
    rgba = np.concatenate([RGB, np.full((5, 7, 1), 17, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "a.png"), RGB)


def test_read_rgb_replicates_greyscale(tmp_path):
    grey = RGB[..., 0]
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    out = read_rgb(tmp_path / "g.png")
    assert out.shape == (5, 7, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_read_rgb_applies_palette(tmp_path):
    pal = np.array([[10, 20, 30], [200, 100, 0], [0, 255, 1]], np.uint8)
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    write_png(tmp_path / "p.png", idx, palette=pal)
    np.testing.assert_array_equal(read_rgb(tmp_path / "p.png"), pal[idx])


def test_read_rgb_scales_16bit_grey_and_rgb(tmp_path):
    k = np.arange(0, 256, 15, dtype=np.uint16).reshape(1, -1)  # 18 values
    cv2.imwrite(str(tmp_path / "g16.png"), k * 257)
    assert png_bit_depth(tmp_path / "g16.png") == 16
    out = read_rgb(tmp_path / "g16.png")
    np.testing.assert_array_equal(out[..., 1], k.astype(np.uint8))
    bgr = np.stack([k * 257, k * 0, np.full_like(k, 65535)], axis=2)  # B = k, G = 0, R = 255
    cv2.imwrite(str(tmp_path / "c16.png"), bgr)
    out = read_rgb(tmp_path / "c16.png")
    np.testing.assert_array_equal(out[..., 0], 255)  # R
    np.testing.assert_array_equal(out[..., 1], 0)
    np.testing.assert_array_equal(out[..., 2], k.astype(np.uint8))  # B


def test_read_rgb_jpeg(tmp_path):
    smooth = np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (16, 1))
    img = np.stack([smooth, smooth.T, np.full_like(smooth, 90)], axis=2)
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=95)
    out = read_rgb(tmp_path / "a.jpg")
    assert out.shape == (16, 16, 3)
    assert np.abs(out.astype(int) - img).mean() < 3


@pytest.mark.parametrize("case", ["missing", "truncated_png", "truncated_jpeg", "garbage"])
def test_read_rgb_bad_files_name_the_file(tmp_path, case):
    path = tmp_path / f"bad_{case}.png"
    if case == "truncated_png":
        Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        _truncate(path)
    elif case == "truncated_jpeg":
        path = tmp_path / "bad.jpg"
        Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
        _truncate(path, 0.6)
    elif case == "garbage":
        path.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=path.name):
        read_rgb(path)


def test_read_label_indices_keeps_palette_indices(tmp_path):
    idx = np.arange(48, dtype=np.uint8).reshape(6, 8)
    pal = np.random.default_rng(1).integers(0, 256, (256, 3), dtype=np.uint8)
    write_png(tmp_path / "p.png", idx, palette=pal)
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = read_label_indices(tmp_path / "p.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, idx)  # indices, not colours


def test_read_label_indices_accepts_L(tmp_path):
    lab = np.array([[0, 7, 33], [255, 26, 1]], np.uint8)
    write_png(tmp_path / "l.png", lab)
    np.testing.assert_array_equal(read_label_indices(tmp_path / "l.png"), lab)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "I;16"])
def test_read_label_indices_refuses_colour_and_16bit(tmp_path, mode):
    path = tmp_path / "colour_label.png"
    if mode == "I;16":
        cv2.imwrite(str(path), np.full((4, 4), 300, np.uint16))
    else:
        Image.new(mode, (4, 4), (128, 64, 128) if mode == "RGB" else (1, 2, 3, 4)).save(path)
    with pytest.raises(DataError, match="colour_label.png.*palette \\(P\\) or 8-bit \\(L\\)"):
        read_label_indices(path, "gta5")


def test_read_label_synthia_takes_red_channel(tmp_path):
    ids = np.arange(12, dtype=np.uint16).reshape(3, 4) + 1000  # > 8 bit: proves 16-bit is kept
    bgr = np.stack([np.full_like(ids, 7), np.full_like(ids, 60000), ids], axis=2)
    cv2.imwrite(str(tmp_path / "s.png"), bgr)
    out = read_label_synthia(tmp_path / "s.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, ids)


def test_read_label_synthia_bad_files(tmp_path):
    with pytest.raises(DataError, match="missing.png"):
        read_label_synthia(tmp_path / "missing.png")
    path = tmp_path / "trunc.png"
    cv2.imwrite(str(path), np.random.default_rng(2).integers(0, 65535, (64, 64, 3)).astype(np.uint16))
    _truncate(path)
    with pytest.raises(DataError, match="trunc.png"):
        read_label_synthia(path)


def test_inspect_image_kinds(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "rgb.png")
    Image.fromarray(RGB[..., 0]).save(tmp_path / "grey.png")
    Image.new("RGBA", (7, 5)).save(tmp_path / "rgba.png")
    cv2.imwrite(str(tmp_path / "deep.png"), np.zeros((5, 7, 3), np.uint16))
    kinds = {p: inspect_image(tmp_path / f"{p}.png").kind for p in ("rgb", "grey", "rgba", "deep")}
    assert kinds == {"rgb": "rgb", "grey": "greyscale", "rgba": "rgba", "deep": "16-bit"}
    assert image_size(tmp_path / "rgb.png") == (5, 7)
    assert inspect_image(tmp_path / "deep.png").bit_depth == 16


def test_write_png_atomic_and_overwrites(tmp_path):
    path = tmp_path / "sub" / "x.png"
    write_png(path, RGB)
    write_png(path, RGB[..., 1])
    assert os.listdir(tmp_path / "sub") == ["x.png"]  # no temp file left behind
    np.testing.assert_array_equal(np.asarray(Image.open(path)), RGB[..., 1])
    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    write_png(tmp_path / "d.png", deep)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "d.png"), cv2.IMREAD_UNCHANGED), deep)


def test_write_png_rejects_bad_arrays_and_keeps_old_file(tmp_path):
    path = tmp_path / "x.png"
    write_png(path, RGB)
    with pytest.raises(ValueError):
        write_png(path, RGB.astype(np.float32))
    with pytest.raises(ValueError):
        write_png(path, np.zeros((2, 2, 4), np.uint8))
    np.testing.assert_array_equal(read_rgb(path), RGB)
    assert os.listdir(tmp_path) == ["x.png"]
