"""Procedural style images for DSP on the embedded default (docs/method.md §1, "Style bank").

RAIN trains its style autoencoder on a folder of paintings; the embedded default has none, so this
module draws abstract style images instead: random palettes, linear and radial gradients, fractal
noise mapped through a palette, stripes, soft blotches, blended in random combinations with optional
blur, grain and posterization. Each image is deterministic from ``(seed, index)``.

On purpose this module knows nothing about the embedded street dataset: it imports no renderer and
names no evaluation domain, so the styles DSP learns from can never leak a held-out look
(``tests/test_style_bank.py`` checks both).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
from torch.utils.data import Dataset

from npdg.data import resolve_index
from npdg.data.transforms import image_to_tensor, parse_size
from npdg.errors import ConfigError

_STYLE_CODE = 0x57E
DEFAULT_BANK_SIZE = 1000


def style_rng(index: int, seed: int = 0) -> np.random.Generator:
    """The generator of style image ``index`` of bank ``seed`` (PCG64, no global state)."""
    if int(index) < 0 or int(seed) < 0:
        raise ConfigError(f"style index and seed must be >= 0, got index={index}, seed={seed}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([_STYLE_CODE, int(seed), int(index)])))


# ------------------------------------------------------------------------------------------------
# building blocks (float32 RGB in [0, 1], [H, W, 3])
# ------------------------------------------------------------------------------------------------
def random_palette(rng: np.random.Generator, k: int) -> np.ndarray:
    """``k`` colours ``[k, 3]``: a base hue with analogous/complementary offsets, random S and V."""
    base = rng.uniform(0.0, 180.0)
    offsets = rng.choice([0.0, 15.0, 30.0, 90.0, 60.0, -30.0], size=k)
    hsv = np.stack([(base + offsets + rng.uniform(-8, 8, k)) % 180.0,
                    rng.uniform(40, 255, k), rng.uniform(40, 255, k)], -1)
    rgb = cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0]
    return rgb.astype(np.float32) / 255.0


def _coords(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = size
    y = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h
    x = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / h  # isotropic units (image heights)
    return y, x


def _ramp(t: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Map ``t`` in [0, 1] ``[H, W]`` through a piecewise-linear palette → ``[H, W, 3]``."""
    k = len(palette)
    pos = np.clip(t, 0.0, 1.0) * (k - 1)
    i0 = np.minimum(pos.astype(np.int64), k - 2) if k > 1 else np.zeros(pos.shape, np.int64)
    f = (pos - i0)[..., None] if k > 1 else np.zeros((*pos.shape, 1), np.float32)
    return palette[i0] * (1.0 - f) + palette[np.minimum(i0 + 1, k - 1)] * f


def _linear(rng: np.random.Generator, size: tuple[int, int], palette: np.ndarray) -> np.ndarray:
    y, x = _coords(size)
    a = rng.uniform(0, 2 * np.pi)
    t = np.cos(a) * x + np.sin(a) * y
    return _ramp((t - t.min()) / (np.ptp(t) + 1e-6), palette)


def _radial(rng: np.random.Generator, size: tuple[int, int], palette: np.ndarray) -> np.ndarray:
    y, x = _coords(size)
    cy, cx = rng.uniform(0, 1), rng.uniform(0, size[1] / size[0])
    r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / rng.uniform(0.4, 1.5)
    return _ramp(r % 1.0 if rng.random() < 0.3 else np.minimum(r, 1.0), palette)


def fractal_noise(rng: np.random.Generator, size: tuple[int, int], octaves: int = 5, persistence: float = 0.6
                  ) -> np.ndarray:
    """Value-noise fBm ``[H, W]`` scaled to [0, 1]: upsampled random grids, coarse to fine."""
    h, w = size
    out = np.zeros(size, np.float32)
    cell = int(rng.choice([16, 32, 64, 128]))
    amp = 1.0
    for _ in range(octaves):
        gh, gw = max(2, h // cell), max(2, w // cell)
        g = rng.standard_normal((gh, gw)).astype(np.float32)
        out += amp * cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
        amp *= persistence
        cell = max(1, cell // 2)
    return (out - out.min()) / (np.ptp(out) + 1e-6)


def _noise(rng: np.random.Generator, size: tuple[int, int], palette: np.ndarray) -> np.ndarray:
    return _ramp(fractal_noise(rng, size, int(rng.integers(3, 7)), rng.uniform(0.4, 0.75)), palette)


def _stripes(rng: np.random.Generator, size: tuple[int, int], palette: np.ndarray) -> np.ndarray:
    y, x = _coords(size)
    a = rng.uniform(0, np.pi)
    freq = rng.uniform(2.0, 30.0)
    t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(a) * x + np.sin(a) * y) + rng.uniform(0, 2 * np.pi))
    if rng.random() < 0.5:  # hard-edged bands
        t = (t > rng.uniform(0.3, 0.7)).astype(np.float32)
    return _ramp(t, palette[rng.permutation(len(palette))[:2]])


def _blotches(rng: np.random.Generator, size: tuple[int, int], palette: np.ndarray) -> np.ndarray:
    h, w = size
    img = np.empty((h, w, 3), np.float32)
    img[:] = palette[0]
    for _ in range(int(rng.integers(6, 40))):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        r = int(rng.uniform(0.02, 0.25) * h) + 1
        cv2.circle(img, c, r, tuple(float(v) for v in palette[int(rng.integers(0, len(palette)))]), -1, cv2.LINE_AA)
    return cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 6.0) * h / 256.0)


_LAYERS: tuple[Callable[[np.random.Generator, tuple[int, int], np.ndarray], np.ndarray], ...] = (
    _linear, _radial, _noise, _stripes, _blotches,
)


def _blend(rng: np.random.Generator, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mode = int(rng.integers(0, 4))
    if mode == 0:  # alpha
        return a + (b - a) * np.float32(rng.uniform(0.3, 0.7))
    if mode == 1:  # multiply
        return a * b * np.float32(rng.uniform(1.0, 1.6))
    if mode == 2:  # screen
        return 1.0 - (1.0 - a) * (1.0 - b)
    # masked by fractal noise: patches of one layer over the other
    m = fractal_noise(rng, a.shape[:2], 4, 0.5)[..., None]
    m = np.clip((m - 0.5) * rng.uniform(2.0, 12.0) + 0.5, 0.0, 1.0)
    return a * (1.0 - m) + b * m


def style_image(index: int, size=(256, 512), seed: int = 0) -> np.ndarray:
    """Style image ``index`` of bank ``seed``: uint8 ``[H, W, 3]`` RGB, deterministic."""
    h, w = parse_size(size)
    rng = style_rng(index, seed)
    palette = random_palette(rng, int(rng.integers(2, 6)))
    layers = rng.choice(len(_LAYERS), size=int(rng.integers(1, 4)), replace=False)
    img = _LAYERS[layers[0]](rng, (h, w), palette)
    for k in layers[1:]:
        pal = palette if rng.random() < 0.6 else random_palette(rng, int(rng.integers(2, 5)))
        img = _blend(rng, img, _LAYERS[k](rng, (h, w), pal))
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 3.0) * h / 256.0)
    if rng.random() < 0.4:  # grain
        img = img + rng.normal(0.0, rng.uniform(0.01, 0.06), (h, w, 1)).astype(np.float32)
    out = cv2.convertScaleAbs(np.clip(img, 0.0, 1.0), alpha=255.0)
    if rng.random() < 0.25:  # posterize
        step = 256 // int(rng.integers(3, 7))
        out = (out // step * step + step // 2).astype(np.uint8)
    return np.ascontiguousarray(out)


class StyleBankDataset(Dataset):
    """``length`` procedural style images of bank ``seed`` as ``dict(image, index, name)``.

    ``image`` is float32 ``[3, H, W]`` in [0, 1]; ``name`` is ``style_<seed>_<index:06d>``.
    """

    def __init__(self, length: int = DEFAULT_BANK_SIZE, size=(256, 512), seed: int = 0):
        if not isinstance(length, (int, np.integer)) or isinstance(length, bool) or length <= 0:
            raise ConfigError(f"style bank length must be a positive integer, got {length!r}")
        if int(seed) < 0:
            raise ConfigError(f"style bank seed must be >= 0, got {seed}")
        self.length, self.size, self.seed = int(length), parse_size(size), int(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        i = resolve_index(i, self.length, f"a style bank of {self.length}")
        return {"image": image_to_tensor(style_image(i, self.size, self.seed)), "index": i,
                "name": f"style_{self.seed}_{i:06d}"}

    def __repr__(self) -> str:
        return f"StyleBankDataset(length={self.length}, size={self.size}, seed={self.seed})"
