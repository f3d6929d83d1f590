"""Uploaded images (npdg.service.uploads): every mode to uint8 RGB with a note, EXIF rotation,
huge images downscaled, non-images and broken files refused with a message; working sizes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from npdg.errors import DataError
from npdg.service import uploads


def _png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_rgb_png_round_trips_exactly():
    arr = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    up = uploads.read_image(_png(Image.fromarray(arr)), "a.png")
    assert up.image.dtype == np.uint8 and up.image.shape == (20, 30, 3) and up.notes == ()
    np.testing.assert_array_equal(up.image, arr)
    assert not up.image.flags.writeable and up.original_size == (20, 30)


@pytest.mark.parametrize("mode, note", [("L", "greyscale"), ("RGBA", "composited on white"), ("CMYK", "CMYK")])
def test_other_modes_become_rgb_with_a_note(mode, note):
    img = Image.new(mode, (16, 8), 100 if mode == "L" else (10, 20, 30, 0) if mode == "RGBA" else (0, 50, 100, 0))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    up = uploads.read_image(_png(img, fmt), f"x.{fmt.lower()}")
    assert up.image.shape == (8, 16, 3) and any(note in n for n in up.notes)
    if mode == "RGBA":  # fully transparent → white
        assert (up.image == 255).all()
    if mode == "L":
        assert (up.image == 100).all()


def test_16_bit_greyscale_is_scaled_to_8_bits():
    arr = np.full((6, 9), 65535, dtype=np.uint16)
    arr[0, 0] = 0
    up = uploads.read_image(_png(Image.fromarray(arr)), "depth.png")
    assert up.image.dtype == np.uint8 and up.image[1, 1].tolist() == [255, 255, 255] and up.image[0, 0, 0] == 0
    assert any("16-bit" in n for n in up.notes)


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (40, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    up = uploads.read_image(_png(img, "JPEG", exif=exif), "phone.jpg")
    assert up.image.shape[:2] == (40, 10) and any("EXIF" in n for n in up.notes)


def test_huge_images_are_downscaled_with_a_note():
    up = uploads.read_image(_png(Image.new("RGB", (400, 300), (1, 2, 3))), "big.png", max_pixels=10_000)
    h, w = up.image.shape[:2]
    assert h * w <= 10_000 and abs(w / h - 4 / 3) < 0.05
    assert any("downscaled from 400×300" in n for n in up.notes) and up.original_size == (300, 400)


@pytest.mark.parametrize("data, match", [
    (b"", "empty"),
    (b"%PDF-1.4 not an image at all", "not a PNG or JPEG"),
    (_png(Image.new("RGB", (8, 8)), "GIF"), "GIF image"),
    (_png(Image.new("RGB", (64, 64)))[:60], "cannot decode"),
])
def test_bad_files_are_refused_with_a_message(data, match):
    with pytest.raises(DataError, match=match):
        uploads.read_image(data, "bad.png")


def test_working_size_keeps_the_aspect_in_multiples_of_32():
    assert uploads.working_size(1200, 1920) == (160, 256)
    assert uploads.working_size(100, 100) == (96, 96)  # never upscaled past the image
    assert uploads.working_size(10, 5000) == (32, 256)  # never below one stride
    h, w = uploads.working_size(3000, 4000)
    assert h % 32 == 0 and w % 32 == 0 and max(h, w) <= 256
    with pytest.raises(DataError):
        uploads.working_size(0, 10)
    out = uploads.fit(np.zeros((10, 20, 3), np.uint8), (32, 64))
    assert out.shape == (32, 64, 3) and out.flags.writeable
