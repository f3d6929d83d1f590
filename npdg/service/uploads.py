"""Images the user uploads: decoded, checked and brought to a form every page can feed a model.

:func:`read_image` takes the raw bytes of a PNG or JPEG (any mode: greyscale, palette, RGBA,
16-bit, CMYK; EXIF rotation applied) and returns an :class:`UploadedImage` — uint8 RGB, at most
:data:`MAX_UPLOAD_PIXELS` (bigger images are downscaled, with a note) — or raises
:class:`~npdg.errors.DataError` with a message for the page. :func:`working_size` gives the size a
page runs the model at: the long side at most ``long_side`` pixels, both sides multiples of 32
(what the encoders' output strides need), aspect ratio kept as closely as that allows.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np

from npdg.errors import DataError
from npdg.service import readonly

#: Images above this many pixels are downscaled on upload (about 4 megapixels).
MAX_UPLOAD_PIXELS = 4_000_000
#: Upload size limit in MB (the widget's ``max_upload_size``; .streamlit/config.toml sets the server's).
MAX_UPLOAD_MB = 20
#: The formats the uploader accepts.
IMAGE_TYPES = ("png", "jpg", "jpeg")
#: Both sides of a working size are multiples of this (encoder output stride).
SIZE_MULTIPLE = 32


@dataclass(frozen=True)
class UploadedImage:
    """A decoded upload: ``image`` uint8 ``[H, W, 3]`` (read-only), its name, the size it had in the
    file and what was done to it (``notes``: mode conversion, rotation, downscaling)."""

    name: str
    image: np.ndarray
    original_size: tuple[int, int]
    notes: tuple[str, ...]


def _to_rgb(img, notes: list[str]):
    """Any PIL mode → 8-bit RGB, saying what changed."""
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        notes.append(f"{'16-bit' if mode.startswith('I;16') else mode + '-mode'} greyscale scaled to 8 bits and "
                     "repeated to 3 channels")
        return Image.fromarray(np.stack([arr] * 3, axis=-1))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        if np.asarray(rgba)[..., 3].min() < 255:
            notes.append("transparent pixels composited on white (the models take RGB)")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in ("L", "1"):
        notes.append("greyscale repeated to 3 channels")
    elif mode == "CMYK":
        notes.append("CMYK converted to RGB")
    elif mode not in ("RGB", "P"):
        notes.append(f"{mode} converted to RGB")
    return img.convert("RGB")


def _check_size(data: bytes, name: str) -> None:
    """The widget and the server refuse bigger files already; this holds for any other caller too."""
    if len(data) > MAX_UPLOAD_MB * 1_000_000:
        raise DataError(f"{name} is {len(data) / 1e6:.1f} MB; the limit is {MAX_UPLOAD_MB} MB")


def read_image(data: bytes, name: str = "upload", max_pixels: int | None = None) -> UploadedImage:
    """Decode an uploaded PNG/JPEG; DataError (with the reason) for anything else or a broken file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    limit = MAX_UPLOAD_PIXELS if max_pixels is None else int(max_pixels)
    if not data:
        raise DataError(f"{name}: the file is empty")
    _check_size(data, name)
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            if fmt not in ("PNG", "JPEG", "MPO"):
                raise DataError(f"{name}: a {fmt or 'unknown'} image; upload a PNG or JPEG")
            img.load()
            original = (img.height, img.width)
            if _exif_orientation(img) not in (None, 1):
                img = ImageOps.exif_transpose(img)
                notes.append("rotated as its EXIF orientation says")
    except DataError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        reason = "far too many pixels" if "decompression bomb" in str(exc).lower() else "not a PNG or JPEG image"
        raise DataError(f"{name}: {reason}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{name}: cannot decode the image ({exc})") from None
    img = _to_rgb(img, notes)
    h, w = img.height, img.width
    if h * w > limit:
        scale = math.sqrt(limit / (h * w))
        nh, nw = max(1, int(h * scale)), max(1, int(w * scale))
        img = img.resize((nw, nh), Image.Resampling.LANCZOS)
        notes.append(f"downscaled from {w}×{h} to {nw}×{nh} (over {limit / 1e6:g} megapixels)")
    arr = np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
    arr.setflags(write=False)
    return UploadedImage(name, arr, original, tuple(notes))


#: What the pixel values of an uploaded label PNG mean.
LABEL_KINDS: dict[str, str] = {
    "train": "train ids 0–18, 255 = ignore (what npdg and most Cityscapes pipelines train on)",
    "cityscapes": "Cityscapes label ids 0–33 (the *_labelIds.png files), mapped to train ids",
    "color": "Cityscapes colours (the *_color.png files), mapped to train ids",
}


def read_label(data: bytes, name: str, size: tuple[int, int], kind: str = "train", also: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an uploaded label PNG for an image of ``size`` (H, W, as uploaded) → uint8 train ids.

    ``kind`` (:data:`LABEL_KINDS`) says what the pixels hold. The label must have exactly the
    image's size — ``size``, or ``also`` (the size the file had before the upload was downscaled)
    — and is never resized here; one channel for ids; any other value than the kind allows is
    refused with the offending values named.
    """
    from PIL import Image, UnidentifiedImageError

    from npdg.labels import IGNORE, NUM_CLASSES, decolorize, ids_to_train_ids

    if kind not in LABEL_KINDS:
        raise DataError(f"label kind must be one of {', '.join(LABEL_KINDS)}, got {kind!r}")
    if not data:
        raise DataError(f"{name}: the file is empty")
    _check_size(data, name)
    try:
        img = Image.open(io.BytesIO(data))
        if img.format != "PNG":
            raise DataError(f"{name}: labels must be PNG (lossless), got {img.format or 'an unknown format'}")
        img.load()
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{name}: cannot decode the label ({exc})") from None
    if (img.height, img.width) not in (tuple(size), tuple(also or size)):
        raise DataError(f"{name}: the label is {img.width}×{img.height} but the image is {size[1]}×{size[0]}; "
                        "upload the label that belongs to this image (labels are never resized)")
    if kind == "color":
        try:
            return readonly(decolorize(np.asarray(img.convert("RGB"), dtype=np.uint8)).astype(np.uint8))
        except ValueError as exc:
            raise DataError(f"{name}: {exc}") from None
    if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
        raise DataError(f"{name}: a {img.mode} image; an id label has one channel (mode L or P)")
    arr = np.asarray(img).astype(np.int64)
    if kind == "cityscapes":
        bad = np.unique(arr[(arr < 0) | ((arr > 33) & (arr != 255))])  # -1 'license plate' is stored as 255
        if bad.size:
            raise DataError(f"{name}: values {bad[:5].tolist()} are no Cityscapes label ids (0–33)")
        return readonly(ids_to_train_ids(arr).astype(np.uint8))
    bad = np.unique(arr[(arr >= NUM_CLASSES) & (arr != IGNORE)])
    if bad.size or arr.min() < 0:
        hint = " — Cityscapes label ids? choose that kind" if bad.size and bad.max() <= 33 else ""
        raise DataError(f"{name}: values {bad[:5].tolist()} are no train ids (0–{NUM_CLASSES - 1}, {IGNORE} = ignore){hint}")
    return readonly(arr.astype(np.uint8))


def _exif_orientation(img) -> int | None:
    try:
        return img.getexif().get(0x0112)
    except Exception:
        return None


def working_size(height: int, width: int, long_side: int = 256, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """The (H, W) to run a model at for an image of ``height × width``: long side ≤ ``long_side``
    (never upscaled beyond the image, never below ``multiple``), both multiples of ``multiple``."""
    if height < 1 or width < 1:
        raise DataError(f"an image must have a positive size, got {height}×{width}")
    scale = min(1.0, long_side / max(height, width))

    def snap(v: float) -> int:
        return max(multiple, int(round(v * scale / multiple)) * multiple)

    return snap(height), snap(width)


def fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` resized to ``size`` (H, W) with bilinear filtering; a new uint8 array."""
    from PIL import Image

    h, w = size
    if image.shape[:2] == (h, w):
        return np.array(image)
    return np.asarray(Image.fromarray(np.asarray(image)).resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8).copy()


def fit_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A train-id ``label`` brought to ``size`` (H, W) nearest-neighbour (never blended: ids are
    classes, not intensities); a new read-only uint8 array."""
    from PIL import Image

    lab = np.asarray(label, dtype=np.uint8)
    h, w = size
    if lab.shape != (h, w):
        lab = np.asarray(Image.fromarray(lab).resize((w, h), Image.Resampling.NEAREST), dtype=np.uint8)
    return readonly(np.array(lab))


__all__ = ["IMAGE_TYPES", "fit_label", "LABEL_KINDS", "MAX_UPLOAD_MB", "read_label", "MAX_UPLOAD_PIXELS", "SIZE_MULTIPLE", "UploadedImage", "fit", "read_image",
           "working_size"]
