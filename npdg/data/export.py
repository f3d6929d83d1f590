"""Export samples as Cityscapes-style PNG files, and draw preview grids — for synthetic domains and
real datasets alike.

An exported split can be read by any tool that speaks Cityscapes (the official evaluator reads
``*_labelIds.png``): ``DIR/<domain or dataset>/<split>/``

* ``{index:06d}.png`` — the RGB image;
* ``{index:06d}_labelTrainIds.png`` — train ids 0–18, 255 = ignore (8-bit greyscale);
* ``{index:06d}_labelIds.png`` — Cityscapes label ids (ignore → 0 "unlabeled");
* ``samples.csv`` — ``index,name,domain,split`` so every file traces back to its source.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data

from npdg.data.io import write_png
from npdg.data.real import open_real
from npdg.data.transforms import Resize, ResizeHeight
from npdg.errors import ConfigError, DataError
from npdg.labels import IGNORE, NUM_CLASSES, train_ids_to_ids
from npdg.runs import atomic_write_text
from npdg.viz import grid, legend, overlay, stack_below, to_uint8_image

#: Real images are shown at this height in previews when no ``size`` is given (keeps grids small).
PREVIEW_HEIGHT = 256


def open_samples(
    domain: str | None = None,
    dataset: str | None = None,
    root: str | Path | None = None,
    split: str = "train",
    size: tuple[int, int] | None = None,
    preview: bool = False,
) -> torch.utils.data.Dataset:
    """Open a synthetic ``domain`` or the real ``dataset`` under ``root`` (exactly one of the two).

    ``size`` = (H, W) resizes every sample (labels with nearest neighbour). Without it synthetic
    domains use their default size and real images keep theirs — or, with ``preview``, are scaled to
    a height of :data:`PREVIEW_HEIGHT`.
    """
    if (domain is None) == (dataset is None):
        raise ConfigError("give either a synthetic domain or a real dataset (with its root), not both/neither")
    if domain is not None:
        from npdg.data import synthetic  # imported lazily: the generator is heavier than the loaders

        if domain not in synthetic.DOMAINS:
            raise ConfigError(f"unknown synthetic domain {domain!r}; valid: {', '.join(synthetic.DOMAINS)}")
        kwargs: dict[str, Any] = {"split": split} if size is None else {"split": split, "size": tuple(size)}
        return synthetic.SyntheticDataset(domain, **kwargs)
    if root is None:
        raise ConfigError(f"dataset {dataset!r} needs --root, the folder it is stored in")
    transform = Resize(tuple(size)) if size is not None else (ResizeHeight(PREVIEW_HEIGHT) if preview else None)
    return open_real(dataset, root, split=split, transform=transform)


def _sample_arrays(sample: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 image ``[H, W, 3]`` and uint8 train-id label ``[H, W]`` of a sample dict."""
    image = to_uint8_image(sample["image"])
    lab = sample["label"]
    lab = lab.detach().cpu().numpy() if hasattr(lab, "detach") else np.asarray(lab)
    bad = (lab < 0) | ((lab >= NUM_CLASSES) & (lab != IGNORE))
    if bad.any():
        raise DataError(f"sample {sample.get('name')!r} has label values outside 0–18/255: "
                        f"{sorted({int(v) for v in np.unique(lab[bad])})[:10]}")
    return image, lab.astype(np.uint8)


def _count(dataset: torch.utils.data.Dataset, n: int) -> int:
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    return min(n, len(dataset))


@dataclass(frozen=True)
class ExportResult:
    """Where an export went and how many samples it wrote (fewer than asked when the split is small)."""

    out_dir: Path
    requested: int
    written: int
    files: tuple[Path, ...]


def export_samples(dataset: torch.utils.data.Dataset, out_dir: str | Path, n: int) -> ExportResult:
    """Write the first ``n`` samples of ``dataset`` into ``out_dir`` in the format of the module doc."""
    out_dir = Path(out_dir)
    count = _count(dataset, n)
    files: list[Path] = []
    rows = []
    for i in range(count):
        sample = dataset[i]
        image, train_ids = _sample_arrays(sample)
        files.append(write_png(out_dir / f"{i:06d}.png", image))
        files.append(write_png(out_dir / f"{i:06d}_labelTrainIds.png", train_ids))
        files.append(write_png(out_dir / f"{i:06d}_labelIds.png", train_ids_to_ids(train_ids)))
        rows.append((i, sample.get("name", ""), sample.get("domain", ""), sample.get("split", "")))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("index", "name", "domain", "split"))
    writer.writerows(rows)
    csv_path = out_dir / "samples.csv"
    atomic_write_text(buf.getvalue(), csv_path)
    return ExportResult(out_dir, n, count, tuple(files) + (csv_path,))


@dataclass(frozen=True)
class Preview:
    """A preview grid (uint8 ``[H, W, 3]``), the sample names shown and the train ids present."""

    image: np.ndarray
    names: tuple[str, ...]
    classes: tuple[int, ...]


def preview_grid(dataset: torch.utils.data.Dataset, n: int, opacity: float = 0.5) -> Preview:
    """For each of the first ``n`` samples the image and the image with its label overlaid, in two
    columns, with a legend of the classes present below."""
    count = _count(dataset, n)
    tiles, titles, names, present = [], [], [], set()
    for i in range(count):
        sample = dataset[i]
        image, label = _sample_arrays(sample)
        name = str(sample.get("name", i))
        tiles += [image, overlay(image, label, opacity=opacity)]
        titles += [name, f"{name} + labels"]
        names.append(name)
        present.update(int(v) for v in np.unique(label) if v != IGNORE)
    body = grid(tiles, ncols=2, titles=titles)
    classes = tuple(sorted(present))
    columns = max(1, min(max(len(classes), 1), body.shape[1] // 170))
    return Preview(stack_below(body, legend(classes, columns=columns)), tuple(names), classes)
