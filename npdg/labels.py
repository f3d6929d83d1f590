"""The 19 Cityscapes train classes: names, official colours, label id → train id.

The table below is vendored from ``cityscapesscripts/helpers/labels.py`` of the official
Cityscapes scripts (https://github.com/mcordts/cityscapesScripts, MIT licence, (c) 2016 Marius
Cordts et al.). Only the columns npdg needs are kept: ``name``, ``id`` (the label id stored in
``*_gtFine_labelIds.png``), ``trainId`` (0–18, 255 = ignore) and ``color`` (RGB).
``tests/test_labels.py`` checks it against the installed ``cityscapesscripts`` package.

Everything in npdg speaks train ids: ``IGNORE`` (255) marks pixels that are not scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = 255
NUM_CLASSES = 19


@dataclass(frozen=True)
class Label:
    """One Cityscapes label: ``id`` as stored on disk, ``train_id`` used for training/eval."""

    name: str
    id: int
    train_id: int
    color: tuple[int, int, int]


# (name, id, trainId, color) — verbatim from cityscapesscripts.helpers.labels
LABELS: tuple[Label, ...] = tuple(
    Label(*row)
    for row in (
        ("unlabeled", 0, 255, (0, 0, 0)),
        ("ego vehicle", 1, 255, (0, 0, 0)),
        ("rectification border", 2, 255, (0, 0, 0)),
        ("out of roi", 3, 255, (0, 0, 0)),
        ("static", 4, 255, (0, 0, 0)),
        ("dynamic", 5, 255, (111, 74, 0)),
        ("ground", 6, 255, (81, 0, 81)),
        ("road", 7, 0, (128, 64, 128)),
        ("sidewalk", 8, 1, (244, 35, 232)),
        ("parking", 9, 255, (250, 170, 160)),
        ("rail track", 10, 255, (230, 150, 140)),
        ("building", 11, 2, (70, 70, 70)),
        ("wall", 12, 3, (102, 102, 156)),
        ("fence", 13, 4, (190, 153, 153)),
        ("guard rail", 14, 255, (180, 165, 180)),
        ("bridge", 15, 255, (150, 100, 100)),
        ("tunnel", 16, 255, (150, 120, 90)),
        ("pole", 17, 5, (153, 153, 153)),
        ("polegroup", 18, 255, (153, 153, 153)),
        ("traffic light", 19, 6, (250, 170, 30)),
        ("traffic sign", 20, 7, (220, 220, 0)),
        ("vegetation", 21, 8, (107, 142, 35)),
        ("terrain", 22, 9, (152, 251, 152)),
        ("sky", 23, 10, (70, 130, 180)),
        ("person", 24, 11, (220, 20, 60)),
        ("rider", 25, 12, (255, 0, 0)),
        ("car", 26, 13, (0, 0, 142)),
        ("truck", 27, 14, (0, 0, 70)),
        ("bus", 28, 15, (0, 60, 100)),
        ("caravan", 29, 255, (0, 0, 90)),
        ("trailer", 30, 255, (0, 0, 110)),
        ("train", 31, 16, (0, 80, 100)),
        ("motorcycle", 32, 17, (0, 0, 230)),
        ("bicycle", 33, 18, (119, 11, 32)),
        ("license plate", -1, -1, (0, 0, 142)),
    )
)

TRAIN_LABELS: tuple[Label, ...] = tuple(
    sorted((lab for lab in LABELS if 0 <= lab.train_id < NUM_CLASSES), key=lambda lab: lab.train_id)
)
CLASS_NAMES: tuple[str, ...] = tuple(lab.name for lab in TRAIN_LABELS)
#: ``PALETTE[t]`` is the RGB colour of train id ``t``; row 255 (ignore) is black.
PALETTE: np.ndarray = np.zeros((256, 3), dtype=np.uint8)
for _lab in TRAIN_LABELS:
    PALETTE[_lab.train_id] = _lab.color

#: ``ID_TO_TRAINID[label_id]`` for label ids 0–255 (anything not a train class → 255).
ID_TO_TRAINID: np.ndarray = np.full(256, IGNORE, dtype=np.uint8)
for _lab in LABELS:
    if _lab.id >= 0:
        ID_TO_TRAINID[_lab.id] = _lab.train_id if 0 <= _lab.train_id < NUM_CLASSES else IGNORE

#: ``TRAINID_TO_ID[train_id]`` → Cityscapes label id (255 → 0 "unlabeled"), for exporting
#: predictions that the official evaluator reads.
TRAINID_TO_ID: np.ndarray = np.zeros(256, dtype=np.uint8)
for _lab in TRAIN_LABELS:
    TRAINID_TO_ID[_lab.train_id] = _lab.id

CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}


def class_id(name: str) -> int:
    """Train id of a class name (``"car"`` → 13); raises ``KeyError`` with the valid names."""
    try:
        return CLASS_INDEX[name]
    except KeyError:
        raise KeyError(f"unknown class {name!r}; valid: {', '.join(CLASS_NAMES)}") from None


def ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes label-id map (uint8/int, any shape) to train ids (uint8, 255 = ignore)."""
    arr = np.asarray(label_ids)
    if arr.dtype != np.uint8:
        arr = np.where((arr >= 0) & (arr < 256), arr, 0).astype(np.uint8)
    return ID_TO_TRAINID[arr]


def train_ids_to_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map a train-id map to Cityscapes label ids (ignore → 0 "unlabeled")."""
    return TRAINID_TO_ID[np.asarray(train_ids).astype(np.uint8)]


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` image of a train-id map with the official colours (ignore = black)."""
    return PALETTE[np.asarray(train_ids).astype(np.uint8)]


def decolorize(rgb: np.ndarray, strict: bool = True) -> np.ndarray:
    """Inverse of :func:`colorize`: an RGB colour-coded map → train ids.

    Colours that are not one of the 19 class colours map to 255. With ``strict`` a colour that is
    neither a class colour nor black raises ``ValueError`` naming it, so a lossy (JPEG) or foreign
    palette is never decoded silently into wrong labels.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an RGB array [H, W, 3], got shape {rgb.shape}")
    key = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    lut_keys = np.array([(r << 16) | (g << 8) | b for r, g, b in (lab.color for lab in TRAIN_LABELS)])
    out = np.full(key.shape, IGNORE, dtype=np.uint8)
    for t, k in enumerate(lut_keys):
        out[key == k] = t
    if strict:
        unknown = (out == IGNORE) & (key != 0)
        if unknown.any():
            bad = np.unique(key[unknown])[:5]
            cols = [((int(k) >> 16) & 255, (int(k) >> 8) & 255, int(k) & 255) for k in bad]
            raise ValueError(f"colours that are no Cityscapes train class: {cols}")
    return out
