"""Writers of tiny fixture trees in the exact on-disk formats of the real datasets (docs/architecture.md §4).

Tests call these with a tmp dir; no binary fixture is committed. Every writer returns a
:class:`FixtureTree` holding the arrays it wrote, so tests can compare decoded labels pixel by pixel.
Label maps are built by :func:`id_map`, which tiles a list of ids so that every id appears.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from npdg.data.io import write_png
from npdg.labels import LABELS

SIZE = (6, 8)  # H, W: 48 pixels, enough to hold every Cityscapes label id (0–33) plus 255
CITYSCAPES_IDS = [*range(34), 255]
MAPILLARY_IDS = list(range(66))
SYNTHIA_IDS = list(range(23))
BDD_IDS = [*range(19), 255]

#: Cityscapes colours indexed by label id, as GTA5's palette PNGs carry them.
CITYSCAPES_ID_PALETTE = np.zeros((256, 3), dtype=np.uint8)
for _lab in LABELS:
    if _lab.id >= 0:
        CITYSCAPES_ID_PALETTE[_lab.id] = _lab.color
#: Any 256-colour palette for Mapillary (only the indices matter).
MAPILLARY_PALETTE = np.random.default_rng(66).integers(0, 256, (256, 3), dtype=np.uint8)


@dataclass
class FixtureSample:
    split: str
    image_path: Path
    label_path: Path
    image: np.ndarray  # uint8 [H, W, 3] as written (JPEG files decode only approximately to it)
    raw: np.ndarray  # label ids as stored on disk


@dataclass
class FixtureTree:
    root: Path
    samples: list[FixtureSample] = field(default_factory=list)

    def split(self, split: str) -> list[FixtureSample]:
        """Samples of ``split`` sorted by image path (the loaders' order)."""
        return sorted((s for s in self.samples if s.split == split), key=lambda s: str(s.image_path))


def rgb_image(size: tuple[int, int] = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def smooth_image(size: tuple[int, int] = SIZE, seed: int = 0) -> np.ndarray:
    """A smooth colour gradient (JPEG keeps it nearly exact, unlike noise), different per seed."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    r = 40 + 150 * x / max(w - 1, 1)
    g = 60 + 120 * y / max(h - 1, 1)
    b = np.full((h, w), 30 + (seed * 37) % 180)
    return np.stack([r, g, b], axis=2).round().astype(np.uint8)


def id_map(ids: list[int], size: tuple[int, int] = SIZE, shift: int = 0, dtype=np.uint8) -> np.ndarray:
    """An ``[H, W]`` map that tiles ``ids`` (rolled by ``shift``), so every id occurs when H*W ≥ len(ids)."""
    h, w = size
    flat = np.resize(np.roll(np.asarray(ids), shift), h * w)
    return flat.reshape(h, w).astype(dtype)


def _save_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=95)


def _sizes(n: int, size: tuple[int, int], mismatch: set[int]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(image size, label size) for sample k; samples in ``mismatch`` get a label twice as large."""
    return [(size, (size[0] * 2, size[1] * 2) if k in mismatch else size) for k in range(n)]


def write_gta5(root: Path, n: int = 3, size: tuple[int, int] = SIZE, mismatch: set[int] = frozenset(),
               ids: list[int] | None = None) -> FixtureTree:
    """``images/NNNNN.png`` + ``labels/NNNNN.png`` (palette PNG, indices = Cityscapes label ids)."""
    tree = FixtureTree(Path(root))
    for k, (isz, lsz) in enumerate(_sizes(n, size, set(mismatch))):
        stem = f"{k + 1:05d}"
        image, raw = rgb_image(isz, k), id_map(ids or CITYSCAPES_IDS, lsz, shift=k)
        ip, lp = tree.root / "images" / f"{stem}.png", tree.root / "labels" / f"{stem}.png"
        write_png(ip, image)
        write_png(lp, raw, palette=CITYSCAPES_ID_PALETTE)
        tree.samples.append(FixtureSample("train", ip, lp, image, raw))
    return tree


def write_synthia(root: Path, n: int = 2, size: tuple[int, int] = SIZE, ids: list[int] | None = None,
                  mismatch: set[int] = frozenset()) -> FixtureTree:
    """``RGB/*.png`` + ``GT/LABELS/*.png``: 16-bit 3-channel, id in R, an instance id in G (cv2, BGR)."""
    tree = FixtureTree(Path(root))
    for k, (isz, lsz) in enumerate(_sizes(n, size, set(mismatch))):
        stem = f"{k:07d}"
        image, raw = rgb_image(isz, 10 + k), id_map(ids or SYNTHIA_IDS, lsz, shift=k, dtype=np.uint16)
        bgr = np.zeros((*lsz, 3), dtype=np.uint16)
        bgr[..., 2] = raw
        bgr[..., 1] = np.arange(lsz[0] * lsz[1], dtype=np.uint16).reshape(lsz) * 997  # instance ids
        ip, lp = tree.root / "RGB" / f"{stem}.png", tree.root / "GT" / "LABELS" / f"{stem}.png"
        write_png(ip, image)
        lp.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(lp), bgr)
        tree.samples.append(FixtureSample("train", ip, lp, image, raw))
    return tree


def write_cityscapes(root: Path, cities: dict[str, dict[str, int]] | None = None,
                     size: tuple[int, int] = SIZE) -> FixtureTree:
    """``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` + ``gtFine/.../*_gtFine_labelIds.png`` (L PNG),
    plus the ``_color`` / ``_instanceIds`` files the real download has next to them."""
    cities = cities or {"train": {"aachen": 2, "bochum": 1}, "val": {"frankfurt": 2}}
    tree, seed = FixtureTree(Path(root)), 100
    for split, per_city in cities.items():
        for city, n in per_city.items():
            for k in range(n):
                base = f"{city}_{k:06d}_000019"
                image, raw = rgb_image(size, seed), id_map(CITYSCAPES_IDS, size, shift=seed)
                seed += 1
                ip = tree.root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png"
                gt = tree.root / "gtFine" / split / city
                write_png(ip, image)
                write_png(gt / f"{base}_gtFine_labelIds.png", raw)
                write_png(gt / f"{base}_gtFine_color.png", CITYSCAPES_ID_PALETTE[raw])
                write_png(gt / f"{base}_gtFine_instanceIds.png", raw.astype(np.uint16) * 1000)
                tree.samples.append(FixtureSample(split, ip, gt / f"{base}_gtFine_labelIds.png", image, raw))
    return tree


def write_bdd(root: Path, layout: str = "10k", counts: dict[str, int] | None = None,
              size: tuple[int, int] = SIZE) -> FixtureTree:
    """BDD100K: ``images/10k/{split}/*.jpg`` + ``labels/sem_seg/masks/{split}/*.png`` (layout ``10k``)
    or the older ``seg/images/{split}/*.jpg`` + ``seg/labels/{split}/*_train_id.png`` (``seg``)."""
    counts = counts or {"train": 2, "val": 1}
    tree = FixtureTree(Path(root))
    for split, n in counts.items():
        for k in range(n):
            stem = f"{split[0]}{k:03d}abc-{k:04d}"
            image, raw = smooth_image(size, 200 + k), id_map(BDD_IDS, size, shift=k)
            if layout == "10k":
                ip = tree.root / "images" / "10k" / split / f"{stem}.jpg"
                lp = tree.root / "labels" / "sem_seg" / "masks" / split / f"{stem}.png"
            else:
                ip = tree.root / "seg" / "images" / split / f"{stem}.jpg"
                lp = tree.root / "seg" / "labels" / split / f"{stem}_train_id.png"
            _save_jpeg(ip, image)
            write_png(lp, raw)
            tree.samples.append(FixtureSample(split, ip, lp, image, raw))
    return tree


def write_mapillary(root: Path, counts: dict[str, int] | None = None, size: tuple[int, int] = (8, 9),
                    ids: list[int] | None = None) -> FixtureTree:
    """``{training,validation}/images/*.jpg`` + ``.../labels/*.png`` (palette PNG, ids 0–65)."""
    counts = counts or {"train": 2, "val": 1}
    tree = FixtureTree(Path(root))
    for split, n in counts.items():
        folder = {"train": "training", "val": "validation"}[split]
        for k in range(n):
            stem = f"{folder[:3]}_{k:04d}"
            image, raw = smooth_image(size, 300 + k), id_map(ids or MAPILLARY_IDS, size, shift=k)
            ip = tree.root / folder / "images" / f"{stem}.jpg"
            lp = tree.root / folder / "labels" / f"{stem}.png"
            _save_jpeg(ip, image)
            write_png(lp, raw, palette=MAPILLARY_PALETTE)
            tree.samples.append(FixtureSample(split, ip, lp, image, raw))
    return tree


WRITERS = {
    "gta5": write_gta5,
    "synthia": write_synthia,
    "cityscapes": write_cityscapes,
    "bdd100k": write_bdd,
    "mapillary": write_mapillary,
}
