"""Corruption domains: a second, independent set of shifted domains (docs/method.md §9).

Each domain is the *source* domain's scenes with one image corruption applied — transforms that the
``photometric`` training mode never uses (it jitters brightness, contrast and saturation, blurs with
a Gaussian and adds Gaussian noise; ``npdg.train.augment.PhotometricAugment``), so no training mode
has seen them. The labels are the source labels: every corruption keeps the geometry. The set is
for the final report only — never for choosing settings.

``jpeg``
    JPEG at quality 8: 8×8 block artefacts and chroma bleeding.
``pixelate``
    down to a quarter of the size (area) and back up (nearest).
``solarize``
    every channel value above 0.5 inverted (x → 1 − x).
``channels``
    the colour channels permuted RGB → BRG (hues move; luminance structure stays).
``hue``
    hue rotated by 120° in HSV — **the same image as** ``channels`` **up to rounding** (a 120° rotation
    maps R → G → B → R, which is the BRG permutation; mean |difference| ~0.6 of 255, tested). This
    was found after every protocol run had been scored with it, and those runs' models are gone, so
    it is kept for comparability: the set holds five distinct shifts (:data:`DISTINCT`), and
    ``corrupt_mean`` counts the channel permutation twice. ``bench/protocol.py`` also reports the
    mean over :data:`DISTINCT` (docs/method.md §9).
``impulse``
    salt-and-pepper noise on 6 % of the pixels (seeded per scene).
"""

from __future__ import annotations

import cv2
import numpy as np
from torch.utils.data import Dataset

from npdg.data import resolve_index
from npdg.data import scene as sc
from npdg.data.synthetic import SOURCE_DOMAIN, check_size, check_split, render_scene
from npdg.data.transforms import image_to_tensor, label_to_tensor
from npdg.errors import ConfigError

CORRUPTIONS: tuple[str, ...] = ("jpeg", "pixelate", "solarize", "channels", "hue", "impulse")
#: The corruptions that differ from one another (``hue`` repeats ``channels``; see above).
DISTINCT: tuple[str, ...] = tuple(c for c in CORRUPTIONS if c != "hue")
_CODES = {name: 0xC0 + i for i, name in enumerate(CORRUPTIONS)}


def check_corruption(name: str) -> str:
    if name not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    return name


def corrupt(image: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    """``image`` (uint8 ``[H, W, 3]`` RGB) with corruption ``name`` applied; a new uint8 array."""
    check_corruption(name)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ConfigError(f"corrupt() needs a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    if name == "jpeg":
        ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 8])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    if name == "pixelate":
        small = cv2.resize(image, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    if name == "solarize":
        return np.where(image > 127, 255 - image, image).astype(np.uint8)
    if name == "channels":
        return np.ascontiguousarray(image[..., [2, 0, 1]])
    if name == "hue":
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)  # OpenCV hue: 0..179 for 0..358°
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + 60) % 180
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    out = image.copy()  # impulse
    hit = rng.random((h, w)) < 0.06
    salt = rng.random((h, w)) < 0.5
    out[hit & salt] = 255
    out[hit & ~salt] = 0
    return out


class CorruptedDataset(Dataset):
    """Source scenes ``0 .. length-1`` of ``split`` with corruption ``name``: samples of the npdg
    contract (``domain`` = ``corrupt_<name>``), labels of the source scenes."""

    def __init__(self, name: str, split: str = "test", size: tuple[int, int] = (128, 256), length: int = 50):
        self.name = check_corruption(name)
        self.split = check_split(split)
        self.size = check_size(size)
        if isinstance(length, bool) or not isinstance(length, int | np.integer) or length <= 0:
            raise ConfigError(f"dataset length must be a positive integer, got {length!r}")
        self.length = int(length)
        self.domain = f"corrupt_{name}"

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        i = resolve_index(i, self.length, f"{self.length} {self.domain}/{self.split} scenes")
        image, label = render_scene(SOURCE_DOMAIN, self.split, i, self.size)
        seq = np.random.SeedSequence([sc.SPLIT_CODES[self.split], i, _CODES[self.name]])
        image = corrupt(image, self.name, np.random.Generator(np.random.PCG64(seq)))
        return {"image": image_to_tensor(image), "label": label_to_tensor(label), "domain": self.domain,
                "split": self.split, "index": i, "name": f"{self.domain}_{self.split}_{i:06d}"}


__all__ = ["CORRUPTIONS", "DISTINCT", "CorruptedDataset", "check_corruption", "corrupt"]
