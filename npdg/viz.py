"""Pictures of images and label maps: overlays, legends, grids (numpy + PIL, no UI).

Shared by the CLI (``data preview``) and the dashboard, so both draw labels the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from npdg.labels import CLASS_NAMES, IGNORE, NUM_CLASSES, PALETTE


def to_uint8_image(image) -> np.ndarray:
    """Accept a float ``[3,H,W]``/``[H,W,3]`` tensor or array in [0, 1], or uint8 ``[H,W,3]``;
    return uint8 ``[H, W, 3]``."""
    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return arr


def overlay(
    image,
    label,
    opacity: float = 0.5,
    classes: Iterable[int] | None = None,
) -> np.ndarray:
    """Blend the colour-coded ``label`` (train ids) over ``image``.

    ``opacity`` in [0, 1] is the weight of the label colours; ``classes`` limits the overlay to those
    train ids (others, and ignore pixels, show the image unchanged).
    """
    img = to_uint8_image(image).astype(np.float32)
    lab = label.detach().cpu().numpy() if hasattr(label, "detach") else np.asarray(label)
    lab = lab.astype(np.int64)
    if lab.shape != img.shape[:2]:
        raise ValueError(f"label shape {lab.shape} does not match image shape {img.shape[:2]}")
    mask = lab != IGNORE
    if classes is not None:
        keep = np.zeros(256, dtype=bool)
        keep[[c for c in classes if 0 <= c < 256]] = True
        mask &= keep[np.clip(lab, 0, 255)]
    colour = PALETTE[np.clip(lab, 0, 255)].astype(np.float32)
    a = float(np.clip(opacity, 0.0, 1.0)) * mask[..., None]
    return (img * (1.0 - a) + colour * a + 0.5).astype(np.uint8)


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def legend(classes: Sequence[int] | None = None, columns: int = 1, width: int = 170) -> np.ndarray:
    """A legend image: a colour swatch and the name of each train class in ``classes``."""
    classes = list(range(NUM_CLASSES)) if classes is None else list(classes)
    rows = (len(classes) + columns - 1) // columns
    row_h = 18
    im = Image.new("RGB", (width * columns, max(row_h * rows + 4, row_h)), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    font = _font(12)
    for k, c in enumerate(classes):
        x, y = (k // rows) * width + 4, (k % rows) * row_h + 3
        draw.rectangle([x, y, x + 14, y + 12], fill=tuple(int(v) for v in PALETTE[c]), outline=(0, 0, 0))
        draw.text((x + 20, y - 1), f"{c:2d} {CLASS_NAMES[c]}", fill=(0, 0, 0), font=font)
    return np.asarray(im)


def grid(
    tiles: Sequence[np.ndarray],
    ncols: int,
    titles: Sequence[str] | None = None,
    pad: int = 4,
    title_h: int = 16,
) -> np.ndarray:
    """Arrange uint8 ``[H, W, 3]`` tiles (same size) in a grid with optional titles above each."""
    if not tiles:
        raise ValueError("grid needs at least one tile")
    h, w = tiles[0].shape[:2]
    nrows = (len(tiles) + ncols - 1) // ncols
    th = title_h if titles else 0
    canvas = Image.new("RGB", (ncols * (w + pad) + pad, nrows * (h + th + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    for k, tile in enumerate(tiles):
        if tile.shape[:2] != (h, w):
            tile = np.asarray(Image.fromarray(tile).resize((w, h), Image.BILINEAR))
        r, c = divmod(k, ncols)
        x, y = pad + c * (w + pad), pad + r * (h + th + pad)
        if titles:
            draw.text((x, y), str(titles[k])[: max(8, w // 7)], fill=(0, 0, 0), font=font)
        canvas.paste(Image.fromarray(tile), (x, y + th))
    return np.asarray(canvas)


def stack_below(top: np.ndarray, bottom: np.ndarray, pad: int = 4) -> np.ndarray:
    """Put ``bottom`` under ``top`` on a white canvas as wide as the wider of the two."""
    w = max(top.shape[1], bottom.shape[1])
    out = np.full((top.shape[0] + pad + bottom.shape[0], w, 3), 255, dtype=np.uint8)
    out[: top.shape[0], : top.shape[1]] = top
    out[top.shape[0] + pad :, : bottom.shape[1]] = bottom
    return out
