"""Paired image/label transforms that keep labels exact.

Images are resized with area/bilinear interpolation, labels always with nearest neighbour, so a
resized label map holds only ids that were in the original. Crops pad labels with 255 (ignore).
A transform is any callable ``(image uint8 [H,W,3], label uint8 [H,W], rng) -> (image, label)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

from npdg.config import parse_size  # noqa: F401 - re-exported: sizes are parsed in one place
from npdg.labels import IGNORE

if TYPE_CHECKING:  # torch is imported where tensors are made: the renderers that use this module stay torch-free
    import torch


class PairTransform(Protocol):
    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an ``[H, W, 3]`` uint8 image to ``(H, W)`` (area when shrinking, bilinear otherwise)."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    shrink = h * w < image.shape[0] * image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a label map with nearest neighbour (never invents ids)."""
    h, w = size
    if label.shape[:2] == (h, w):
        return label
    return cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)


@dataclass(frozen=True)
class Resize:
    """Resize image and label to exactly ``size`` = (H, W)."""

    size: tuple[int, int]

    def __call__(self, image, label, rng=None):
        return resize_image(image, self.size), resize_label(label, self.size)


@dataclass(frozen=True)
class ResizeHeight:
    """Resize so the height is ``height``, keeping the aspect ratio (Mapillary's protocol)."""

    height: int

    def __call__(self, image, label, rng=None):
        h, w = image.shape[:2]
        size = (self.height, max(1, round(w * self.height / h)))
        return resize_image(image, size), resize_label(label, size)


def _pad_to(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    ph, pw = max(0, size[0] - h), max(0, size[1] - w)
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE)
    return image, label


@dataclass(frozen=True)
class CenterCrop:
    """Crop the centre ``size`` = (H, W); smaller inputs are padded (image 0, label 255)."""

    size: tuple[int, int]

    def __call__(self, image, label, rng=None):
        image, label = _pad_to(image, label, self.size)
        h, w = image.shape[:2]
        y, x = (h - self.size[0]) // 2, (w - self.size[1]) // 2
        return image[y : y + self.size[0], x : x + self.size[1]], label[y : y + self.size[0], x : x + self.size[1]]


@dataclass(frozen=True)
class RandomCrop:
    """Crop a random ``size`` window (uses the ``rng`` passed in, for reproducibility)."""

    size: tuple[int, int]

    def __call__(self, image, label, rng=None):
        rng = rng if rng is not None else np.random.default_rng()
        image, label = _pad_to(image, label, self.size)
        h, w = image.shape[:2]
        y = int(rng.integers(0, h - self.size[0] + 1))
        x = int(rng.integers(0, w - self.size[1] + 1))
        return image[y : y + self.size[0], x : x + self.size[1]], label[y : y + self.size[0], x : x + self.size[1]]


@dataclass(frozen=True)
class Compose:
    """Apply transforms in order."""

    transforms: tuple

    def __call__(self, image, label, rng=None):
        for t in self.transforms:
            image, label = t(image, label, rng)
        return image, label


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` → float32 ``[3, H, W]`` in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def label_to_tensor(label: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W]`` train ids → int64 ``[H, W]``."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(label)).long()
