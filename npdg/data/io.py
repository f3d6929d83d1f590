"""Robust image and label file I/O for real datasets.

Real benchmark downloads are messy: RGBA or greyscale frames, 16-bit PNGs, truncated files from an
interrupted copy, colour-coded labels where index labels were expected. These helpers turn every such
case into either a well-defined conversion (documented per function) or a :class:`DataError` that
names the file, so no loader ever trains on a silently wrong picture or label.

* :func:`read_rgb` — any image → uint8 ``[H, W, 3]``.
* :func:`read_label_indices` — palette (``P``) or 8-bit (``L``) label PNG → uint8 ``[H, W]`` of the
  stored *indices* (never the palette colours).
* :func:`read_label_synthia` — SYNTHIA's 16-bit 3-channel label PNG → uint16 ``[H, W]`` class ids.
* :func:`inspect_image` — header + full decode check used by the dataset doctor.
* :func:`write_png` — atomic PNG writer (temp file + ``os.replace``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from npdg.errors import DataError
from npdg.runs import atomic_write

#: Exceptions PIL raises for unreadable, foreign or truncated files.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)
#: Label modes whose pixel values are the stored indices (no colour conversion needed).
_INDEX_MODES = ("P", "L")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _open_loaded(path: str | Path) -> Image.Image:
    """Open ``path`` with PIL and decode it fully, so a truncated file fails here, not later."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        im = Image.open(path)
        im.load()
    except _PIL_ERRORS as exc:
        raise DataError(f"cannot read image {path}: {exc} (file unreadable, truncated or not an image)") from exc
    return im


def _to_uint8_rgb(im: Image.Image) -> np.ndarray:
    """Convert any decoded PIL image to uint8 RGB (16-bit/32-bit grey is scaled, not clipped)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.int64)
        full = 65535 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
        grey = np.clip(np.round(arr * (255.0 / full)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        grey = np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode != "RGB":
        # RGBA/LA/PA: alpha is dropped; L/1: grey replicated; P: palette applied; CMYK/YCbCr converted.
        im = im.convert("RGBA").convert("RGB") if im.mode in ("PA", "LA") else im.convert("RGB")
    return np.array(im, dtype=np.uint8)  # a writable copy (np.asarray of PIL data is read-only)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB ``[H, W, 3]``.

    Accepts RGB, RGBA (alpha dropped), greyscale (replicated to three channels), palette images
    (palette applied), 16-bit images (scaled to 8 bit), and JPEG. A missing, unreadable or
    truncated file raises :class:`DataError` naming it.
    """
    with _open_loaded(path) as im:
        return _to_uint8_rgb(im)


def read_label_indices(path: str | Path, dataset: str = "") -> np.ndarray:
    """Read a label PNG whose pixel *indices* are the class ids: palette (``P``) or 8-bit ``L``.

    Palette labels (GTA5, Mapillary) are read as indices, never converted to colours. Any other mode
    (RGB colour-coded labels, 16-bit, RGBA) is refused with a message naming the file and its mode,
    because decoding it as ids would give silently wrong labels.
    """
    with _open_loaded(path) as im:
        if im.mode not in _INDEX_MODES:
            what = f"{dataset} labels" if dataset else "labels"
            raise DataError(
                f"label {path} has image mode {im.mode!r}; {what} must be palette (P) or 8-bit (L) "
                "PNGs whose pixel values are class ids (a colour-coded label cannot be decoded safely)"
            )
        return np.array(im, dtype=np.uint8)


def read_label_synthia(path: str | Path) -> np.ndarray:
    """Read a SYNTHIA label PNG (16-bit, 3 channels, class id in R) → uint16 ``[H, W]`` class ids.

    PIL cannot read these files faithfully, so OpenCV's ``IMREAD_UNCHANGED`` is used; it returns
    BGR, hence channel 2 is the R channel. A single-channel file is taken as the id map itself.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise DataError(f"cannot read SYNTHIA label {path} (file unreadable, truncated or not an image)")
    if arr.ndim == 3:
        if arr.shape[2] < 3:
            raise DataError(f"SYNTHIA label {path} has {arr.shape[2]} channels; expected 3 (id in R)")
        arr = arr[..., 2]
    if arr.dtype not in (np.uint8, np.uint16):
        raise DataError(f"SYNTHIA label {path} has pixel type {arr.dtype}; expected 16-bit unsigned")
    return np.ascontiguousarray(arr.astype(np.uint16))


@dataclass(frozen=True)
class ImageInfo:
    """What a file really holds: PIL mode, ``(H, W)``, bits per channel and a one-word kind."""

    path: str
    mode: str
    size: tuple[int, int]
    bit_depth: int

    @property
    def kind(self) -> str:
        """``rgb``, ``rgba``, ``greyscale``, ``palette``, ``16-bit`` or ``other``."""
        if self.bit_depth > 8 or self.mode.startswith("I"):
            return "16-bit"
        return {"RGB": "rgb", "RGBA": "rgba", "LA": "rgba", "PA": "rgba", "L": "greyscale", "1": "greyscale",
                "P": "palette"}.get(self.mode, "other")


def png_bit_depth(path: str | Path) -> int | None:
    """Bits per sample from a PNG's IHDR chunk, or ``None`` when the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(25)
    if len(head) < 25 or not head.startswith(_PNG_SIGNATURE):
        return None
    return head[24]


def inspect_image(path: str | Path, decode: bool = True) -> ImageInfo:
    """Describe ``path`` (mode, size, bit depth). With ``decode`` the pixels are decoded too, so a
    truncated file raises :class:`DataError`; without it only the header is read (fast)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        with Image.open(path) as im:
            if decode:
                im.load()
            mode, (w, h) = im.mode, im.size
    except _PIL_ERRORS as exc:
        raise DataError(f"cannot read image {path}: {exc} (file unreadable, truncated or not an image)") from exc
    depth = png_bit_depth(path) or (16 if mode.startswith("I;16") else 8)
    return ImageInfo(path=str(path), mode=mode, size=(h, w), bit_depth=int(depth))


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image file from its header only (cheap; no pixel decoding)."""
    return inspect_image(path, decode=False).size


def write_png(path: str | Path, array: np.ndarray, palette: np.ndarray | None = None) -> Path:
    """Write ``array`` as a PNG atomically (``npdg.runs.atomic_write``: temp file, fsync, rename).

    ``array`` is uint8 ``[H, W]`` (greyscale, or palette indices when ``palette`` [N, 3] is given),
    uint8 ``[H, W, 3]`` (RGB) or uint16 ``[H, W]``. A reader never sees a half-written file.
    """
    path = Path(path)
    arr = np.ascontiguousarray(np.asarray(array))
    if arr.dtype not in (np.uint8, np.uint16) or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"write_png needs uint8 [H,W] / [H,W,3] or uint16 [H,W]; got {arr.dtype} {arr.shape}")
    im = Image.fromarray(arr)
    if palette is not None:
        if arr.ndim != 2 or arr.dtype != np.uint8:
            raise ValueError("a palette PNG needs a uint8 [H, W] index array")
        im = im.convert("L") if im.mode != "L" else im
        im.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())  # turns mode into P
    return atomic_write(path, lambda fh: im.save(fh, format="PNG"))
