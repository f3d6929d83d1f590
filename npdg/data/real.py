"""Loaders for the real DG-segmentation benchmarks: GTA5, SYNTHIA, Cityscapes, BDD100K, Mapillary.

Each dataset is a :class:`RealSegDataset` subclass that declares its on-disk *layouts* (folder
templates and file-name suffixes, docs/architecture.md §4) and how its label files decode to Cityscapes train
ids. The base class finds image/label pairs, validates them and yields the sample dict of
:mod:`npdg.data`. Everything that can be wrong with a download — a wrong folder, an image without a
label, a label id outside the dataset's range, an image/label size mismatch — raises
:class:`DataError` naming the file (or is handled as ``size_mismatch`` says), never a wrong label.

The same scanning code backs the dataset doctor (:mod:`npdg.data.doctor`), so what the doctor
reports is exactly what the loader will do.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch.utils.data

from npdg.data.io import image_size, read_label_indices, read_label_synthia, read_rgb
from npdg.data.transforms import image_to_tensor, label_to_tensor, resize_label
from npdg.errors import ConfigError, DataError
from npdg.labels import ID_TO_TRAINID, IGNORE, NUM_CLASSES

SPLITS: tuple[str, ...] = ("train", "val")
SIZE_MISMATCH_MODES: tuple[str, ...] = ("resize", "error", "skip")

#: Official number of image/label pairs per split (docs/architecture.md §4); the doctor compares against them.
EXPECTED_COUNTS: dict[str, dict[str, int]] = {
    "gta5": {"train": 24966},
    "synthia": {"train": 9400},
    "cityscapes": {"train": 2975, "val": 500},
    "bdd100k": {"train": 7000, "val": 1000},
    "mapillary": {"train": 18000, "val": 2000},
}


# --------------------------------------------------------------------------------------------------
# Label tables: raw on-disk id → train id, and which raw values are legal.
# --------------------------------------------------------------------------------------------------
def _table(pairs: Iterable[tuple[int, int]], size: int = 256) -> np.ndarray:
    lut = np.full(size, IGNORE, dtype=np.uint8)
    for raw, train in pairs:
        lut[raw] = train
    return lut


def _valid(values: Iterable[int], size: int = 256) -> np.ndarray:
    ok = np.zeros(size, dtype=bool)
    ok[list(values)] = True
    return ok


#: SYNTHIA class id → train id (docs/architecture.md §4); every other id → 255.
SYNTHIA_TO_TRAINID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9,
    1: 10, 10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}
#: SYNTHIA-RAND-CITYSCAPES class ids are 0 (void) … 22 (lane marking).
SYNTHIA_MAX_ID = 22

#: Mapillary Vistas v1.2 id (0–65) → train id, SHADE's 66→19 table (docs/architecture.md §4).
MAPILLARY_TO_TRAINID: dict[int, int] = {
    13: 0, 24: 0, 41: 0, 2: 1, 15: 1, 17: 2, 6: 3, 3: 4, 45: 5, 47: 5, 48: 6, 50: 7, 30: 8,
    29: 9, 27: 10, 19: 11, 20: 12, 21: 12, 22: 12, 55: 13, 61: 14, 54: 15, 58: 16, 57: 17, 52: 18,
}
MAPILLARY_MAX_ID = 65

#: Cityscapes label ids on disk are 0–33; 255 (-1 stored as uint8) is accepted as "unlabeled".
CITYSCAPES_MAX_ID = 33


# --------------------------------------------------------------------------------------------------
# Layouts and scanning
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """One way a dataset is laid out on disk.

    ``image_dir``/``label_dir`` are folder templates relative to the root (``{split}`` is the
    on-disk split folder). An image's *key* is its path below ``image_dir`` without
    ``image_suffix``; its label is ``label_dir / (key + label_suffix)``.
    """

    name: str
    image_dir: str
    label_dir: str
    image_suffix: str
    label_suffix: str
    recursive: bool = False  # images live in sub-folders (Cityscapes cities)

    def dirs(self, root: Path, split_dir: str) -> tuple[Path, Path]:
        return root / self.image_dir.format(split=split_dir), root / self.label_dir.format(split=split_dir)

    def describe(self) -> str:
        sub = "*/" if self.recursive else ""
        return (f"{self.image_dir}/{sub}*{self.image_suffix} with labels "
                f"{self.label_dir}/{sub}*{self.label_suffix}")


@dataclass(frozen=True)
class SplitScan:
    """What is on disk for one split: every image and label file, the pairs and the orphans."""

    split: str
    layout: str
    image_dir: Path
    label_dir: Path
    images: tuple[Path, ...]
    labels: tuple[Path, ...]
    pairs: tuple[tuple[Path, Path], ...]
    orphan_images: tuple[Path, ...]
    orphan_labels: tuple[Path, ...]


def _files(folder: Path, suffix: str, recursive: bool) -> list[Path]:
    """Sorted files in ``folder`` (one level of sub-folders when ``recursive``) ending in ``suffix``
    (case-insensitive); hidden files (e.g. ``._x.png`` from macOS archives) are skipped."""
    if not folder.is_dir():
        return []
    pattern = "*/*" if recursive else "*"
    suffix = suffix.lower()
    return sorted(p for p in folder.glob(pattern)
                  if p.is_file() and p.name.lower().endswith(suffix) and not p.name.startswith("."))


def _key(path: Path, folder: Path, suffix: str) -> str:
    rel = path.relative_to(folder).as_posix()
    return rel[: len(rel) - len(suffix)]


def _listing(root: Path, limit: int = 12) -> str:
    if not root.is_dir():
        return "nothing (the folder does not exist)"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    if not names:
        return "an empty folder"
    more = f", … ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def read_split_file(path: str | Path) -> list[str]:
    """Entries of a split file: one stem or relative path per line; blank lines and ``#`` comments
    are skipped; backslashes and a leading ``./`` are normalised."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"split file not found: {path}")
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip().replace("\\", "/")
        while line.startswith("./"):
            line = line[2:]
        if line:
            entries.append(line)
    if not entries:
        raise ConfigError(f"split file {path} lists no files")
    return entries


# --------------------------------------------------------------------------------------------------
# Base dataset
# --------------------------------------------------------------------------------------------------
class RealSegDataset(torch.utils.data.Dataset):
    """A sorted list of (image, label) file pairs of one real dataset split, decoded to train ids.

    ``transform`` is a :mod:`npdg.data.transforms` pair transform, called with
    ``numpy.random.default_rng((seed, index))`` when ``seed`` is given (reproducible crops) and with
    ``None`` otherwise. ``size_mismatch`` says what to do when a label is not the size of its image:
    ``"resize"`` (nearest-neighbour resize of the label, one warning), ``"error"`` or ``"skip"``.
    """

    name: ClassVar[str] = ""
    layouts: ClassVar[tuple[Layout, ...]] = ()
    #: False for datasets shipped as one pool (GTA5, SYNTHIA): ``train`` = every file.
    has_split_dirs: ClassVar[bool] = True
    #: npdg split name → folder name on disk (Mapillary: ``train`` → ``training``).
    split_dirs: ClassVar[dict[str, str]] = {}
    #: ``lut[raw id]`` → train id, and ``valid[raw id]`` → whether the id may appear on disk.
    lut: ClassVar[np.ndarray]
    valid: ClassVar[np.ndarray]
    label_help: ClassVar[str] = ""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable | None = None,
        split_file: str | Path | None = None,
        size_mismatch: str = "resize",
        seed: int | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r} for {self.name}; valid: {', '.join(SPLITS)}")
        if size_mismatch not in SIZE_MISMATCH_MODES:
            raise ConfigError(f"size_mismatch must be one of {', '.join(SIZE_MISMATCH_MODES)}; got {size_mismatch!r}")
        if not self.has_split_dirs and split != "train" and split_file is None:
            raise ConfigError(
                f"{self.name} has no official {split!r} split: it ships as one pool of images (split "
                "'train' = every image). Pass a split file listing the images of this split.")
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.size_mismatch = size_mismatch
        self.seed = seed
        self._warned_resize = False
        self.scan = self.scan_split(self.root, split)
        self._check_scan(self.scan)
        pairs = list(self.scan.pairs)
        if split_file is not None:
            pairs = self._filter_by_split_file(pairs, read_split_file(split_file), Path(split_file))
        self.skipped: tuple[tuple[Path, Path], ...] = ()
        if size_mismatch == "skip":
            pairs = self._drop_mismatched(pairs)
        if not pairs:
            raise DataError(f"{self.name} {split}: no usable image/label pairs under {self.root}")
        self.pairs: tuple[tuple[Path, Path], ...] = tuple(pairs)

    # ---- discovery ---------------------------------------------------------------------------
    @classmethod
    def split_dir(cls, split: str) -> str:
        return cls.split_dirs.get(split, split)

    @classmethod
    def expected_counts(cls) -> dict[str, int]:
        return dict(EXPECTED_COUNTS.get(cls.name, {}))

    @classmethod
    def disk_splits(cls) -> tuple[str, ...]:
        """Splits that exist as folders on disk (``("train",)`` for one-pool datasets)."""
        return SPLITS if cls.has_split_dirs else ("train",)

    @classmethod
    def expected_layout(cls) -> str:
        return " or ".join(f"[{lay.name}] {lay.describe()}" for lay in cls.layouts)

    @classmethod
    def detect_layout(cls, root: str | Path) -> Layout:
        """The first layout whose image and label folders exist for some split; else a DataError that
        says what was expected and what was found."""
        root = Path(root)
        if not root.exists():
            raise DataError(f"{cls.name} root {root} does not exist")
        if not root.is_dir():
            raise DataError(f"{cls.name} root {root} is not a folder")
        for lay in cls.layouts:
            for split in cls.disk_splits():
                img_dir, lab_dir = lay.dirs(root, cls.split_dir(split))
                if img_dir.is_dir() and lab_dir.is_dir():
                    return lay
        splits = ", ".join(cls.split_dir(s) for s in cls.disk_splits())
        raise DataError(
            f"{root} does not look like {cls.name}: expected {cls.expected_layout()}"
            + (f" (split folders: {splits})" if cls.has_split_dirs else "")
            + f"; found {_listing(root)}")

    @classmethod
    def scan_split(cls, root: str | Path, split: str) -> SplitScan:
        """Find every image and label of ``split`` and pair them (no file is opened)."""
        root = Path(root)
        lay = cls.detect_layout(root)
        img_dir, lab_dir = lay.dirs(root, cls.split_dir(split if cls.has_split_dirs else "train"))
        images = _files(img_dir, lay.image_suffix, lay.recursive)
        labels = _files(lab_dir, lay.label_suffix, lay.recursive)
        by_lower = {p.as_posix().lower(): p for p in labels}  # tolerate e.g. ``.PNG`` on disk
        pairs, orphans = [], []
        paired_labels: set[Path] = set()
        for img in images:
            wanted = lab_dir / (_key(img, img_dir, lay.image_suffix) + lay.label_suffix)
            lab = by_lower.get(wanted.as_posix().lower())
            if lab is not None:
                pairs.append((img, lab))
                paired_labels.add(lab)
            else:
                orphans.append(img)
        return SplitScan(
            split=split, layout=lay.name, image_dir=img_dir, label_dir=lab_dir,
            images=tuple(images), labels=tuple(labels), pairs=tuple(pairs),
            orphan_images=tuple(orphans), orphan_labels=tuple(p for p in labels if p not in paired_labels))

    def _check_scan(self, scan: SplitScan) -> None:
        where = f"{self.name} {scan.split} (layout {scan.layout})"
        if not scan.image_dir.is_dir():
            raise DataError(f"{where}: image folder {scan.image_dir} not found; found in {self.root}: "
                            f"{_listing(self.root)}")
        if not scan.images:
            lay = next(lay for lay in self.layouts if lay.name == scan.layout)
            raise DataError(f"{where}: no *{lay.image_suffix} images in {scan.image_dir}; found "
                            f"{_listing(scan.image_dir)}")
        if scan.orphan_images:
            names = ", ".join(p.name for p in scan.orphan_images[:5])
            more = f" and {len(scan.orphan_images) - 5} more" if len(scan.orphan_images) > 5 else ""
            raise DataError(f"{where}: {len(scan.orphan_images)} image(s) without a label in {scan.label_dir}: "
                            f"{names}{more}")

    def _filter_by_split_file(self, pairs: list[tuple[Path, Path]], entries: list[str], source: Path):
        """Keep the pairs whose image is named in ``entries`` (by stem, key or relative path)."""
        index: dict[str, int] = {}
        lay = next(lay for lay in self.layouts if lay.name == self.scan.layout)
        for i, (img, _) in enumerate(pairs):
            rel_dir = img.relative_to(self.scan.image_dir).as_posix()
            rel_root = img.relative_to(self.root).as_posix()
            keys = {img.stem, img.name, rel_dir, rel_root, _key(img, self.scan.image_dir, lay.image_suffix),
                    rel_dir.rsplit(".", 1)[0], rel_root.rsplit(".", 1)[0]}
            for k in keys:
                index.setdefault(k, i)
        missing = [e for e in entries if e not in index]
        if missing:
            raise DataError(f"split file {source}: {len(missing)} listed file(s) not found among the {self.name} "
                            f"images in {self.scan.image_dir}: {', '.join(missing[:5])}")
        keep = sorted({index[e] for e in entries})
        return [pairs[i] for i in keep]

    def _drop_mismatched(self, pairs: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
        kept, skipped = [], []
        for img, lab in pairs:
            (kept if image_size(img) == image_size(lab) else skipped).append((img, lab))
        self.skipped = tuple(skipped)
        if skipped:
            warnings.warn(f"{self.name} {self.split}: skipped {len(skipped)} pair(s) whose label size differs "
                          f"from the image (first: {skipped[0][0].name})", stacklevel=3)
        return kept

    # ---- decoding ----------------------------------------------------------------------------
    @classmethod
    def read_raw_label(cls, path: Path) -> np.ndarray:
        """The label file's stored ids (uint8 or uint16 ``[H, W]``)."""
        return read_label_indices(path, cls.name)

    @classmethod
    def decode_label(cls, raw: np.ndarray, path: Path | str) -> np.ndarray:
        """Raw ids → train ids (uint8, 255 ignore); ids outside the dataset's range raise DataError."""
        raw = np.asarray(raw)
        if raw.size and int(raw.max()) >= len(cls.valid):
            bad = np.unique(raw[raw >= len(cls.valid)])
        else:
            bad_mask = ~cls.valid[raw]
            bad = np.unique(raw[bad_mask]) if bad_mask.any() else np.empty(0, raw.dtype)
        if bad.size:
            shown = ", ".join(str(int(v)) for v in bad[:10]) + (" …" if bad.size > 10 else "")
            raise DataError(f"{cls.name} label {path} holds ids outside the valid range ({cls.label_help}): {shown}")
        return cls.lut[raw]

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image uint8 ``[H, W, 3]`` and train-id label uint8 ``[H, W]`` of pair ``index``, sizes
        reconciled per ``size_mismatch`` but not transformed."""
        img_path, lab_path = self.pairs[index]
        image = read_rgb(img_path)
        label = self.decode_label(self.read_raw_label(lab_path), lab_path)
        if label.shape != image.shape[:2]:
            label = self._reconcile(image, label, lab_path)
        return image, label

    def _reconcile(self, image: np.ndarray, label: np.ndarray, lab_path: Path) -> np.ndarray:
        msg = (f"{self.name} label {lab_path} is {label.shape[0]}x{label.shape[1]} but its image is "
               f"{image.shape[0]}x{image.shape[1]}")
        if self.size_mismatch != "resize":
            raise DataError(msg + " (size_mismatch='error'; use 'resize' or 'skip' to accept such pairs)")
        if not self._warned_resize:
            warnings.warn(msg + "; resizing labels to their images with nearest neighbour (size_mismatch="
                          "'resize'); further mismatches in this dataset are not reported", stacklevel=3)
            self._warned_resize = True
        return resize_label(label, image.shape[:2])

    # ---- Dataset protocol --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index = index % len(self)
        image, label = self.load_pair(index)
        if self.transform is not None:
            rng = np.random.default_rng((self.seed, index)) if self.seed is not None else None
            image, label = self.transform(image, label, rng)
        return {
            "image": image_to_tensor(image),
            "label": label_to_tensor(label),
            "domain": self.name,
            "split": self.split,
            "index": index,
            "name": self.pairs[index][0].stem,
        }

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"layout={self.scan.layout!r})")


# --------------------------------------------------------------------------------------------------
# The five datasets
# --------------------------------------------------------------------------------------------------
_CITYSCAPES_VALID = _valid([*range(CITYSCAPES_MAX_ID + 1), 255])
_CITYSCAPES_HELP = f"Cityscapes label ids 0–{CITYSCAPES_MAX_ID}, 255"


class GTA5(RealSegDataset):
    """GTA5 (Playing for Data): palette PNG labels whose indices are Cityscapes label ids."""

    name = "gta5"
    has_split_dirs = False
    layouts = (Layout("gta5", "images", "labels", ".png", ".png"),)
    lut = ID_TO_TRAINID
    valid = _CITYSCAPES_VALID
    label_help = _CITYSCAPES_HELP


class SYNTHIA(RealSegDataset):
    """SYNTHIA-RAND-CITYSCAPES: 16-bit 3-channel label PNGs with the class id in R."""

    name = "synthia"
    has_split_dirs = False
    layouts = (Layout("synthia", "RGB", "GT/LABELS", ".png", ".png"),)
    lut = _table(SYNTHIA_TO_TRAINID.items(), size=65536)
    valid = _valid(range(SYNTHIA_MAX_ID + 1), size=65536)
    label_help = f"SYNTHIA class ids 0–{SYNTHIA_MAX_ID}"

    @classmethod
    def read_raw_label(cls, path: Path) -> np.ndarray:
        return read_label_synthia(path)


class Cityscapes(RealSegDataset):
    """Cityscapes fine annotations: ``*_gtFine_labelIds.png`` (8-bit label ids)."""

    name = "cityscapes"
    layouts = (Layout("cityscapes", "leftImg8bit/{split}", "gtFine/{split}", "_leftImg8bit.png",
                      "_gtFine_labelIds.png", recursive=True),)
    lut = ID_TO_TRAINID
    valid = _CITYSCAPES_VALID
    label_help = _CITYSCAPES_HELP


class BDD100K(RealSegDataset):
    """BDD100K semantic segmentation: masks already hold train ids (0–18, 255)."""

    name = "bdd100k"
    layouts = (
        Layout("bdd100k-10k", "images/10k/{split}", "labels/sem_seg/masks/{split}", ".jpg", ".png"),
        Layout("bdd100k-seg", "seg/images/{split}", "seg/labels/{split}", ".jpg", "_train_id.png"),
    )
    lut = _table((t, t) for t in range(NUM_CLASSES))
    valid = _valid([*range(NUM_CLASSES), IGNORE])
    label_help = "BDD100K train ids 0–18, 255"


class Mapillary(RealSegDataset):
    """Mapillary Vistas v1.2: palette PNG labels with ids 0–65, mapped to 19 classes (SHADE's table).
    The v2.0 download's ``{split}/v1.2/labels`` folder is accepted as well."""

    name = "mapillary"
    split_dirs = {"train": "training", "val": "validation"}
    layouts = (
        Layout("mapillary-v1.2", "{split}/images", "{split}/labels", ".jpg", ".png"),
        Layout("mapillary-v2.0", "{split}/images", "{split}/v1.2/labels", ".jpg", ".png"),
    )
    lut = _table(MAPILLARY_TO_TRAINID.items())
    valid = _valid(range(MAPILLARY_MAX_ID + 1))
    label_help = f"Mapillary v1.2 ids 0–{MAPILLARY_MAX_ID}"


DATASET_CLASSES: dict[str, type[RealSegDataset]] = {
    cls.name: cls for cls in (GTA5, SYNTHIA, Cityscapes, BDD100K, Mapillary)
}


def dataset_class(name: str) -> type[RealSegDataset]:
    """The loader class of dataset ``name``; ConfigError listing the valid names otherwise."""
    try:
        return DATASET_CLASSES[name.lower()]
    except (KeyError, AttributeError):
        raise ConfigError(f"unknown dataset {name!r}; valid: {', '.join(DATASET_CLASSES)}") from None


def open_real(
    name: str,
    root: str | Path,
    split: str = "train",
    transform: Callable | None = None,
    split_file: str | Path | None = None,
    size_mismatch: str = "resize",
    seed: int | None = None,
) -> RealSegDataset:
    """Open split ``split`` of real dataset ``name`` stored under ``root`` (see docs/architecture.md §4)."""
    return dataset_class(name)(root, split=split, transform=transform, split_file=split_file,
                               size_mismatch=size_mismatch, seed=seed)
