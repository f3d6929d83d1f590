"""Real datasets on the dashboard: browse one like a domain (docs/dashboard.md §2).

A dataset is named by its spec ``NAME:ROOT`` (``cityscapes:/data/cityscapes``; the forms of
:mod:`npdg.data.specs`). The dashboard knows the specs given when it started — ``make app
ARGS="--datasets cityscapes:/data/cityscapes"`` or the environment variable :data:`ENV`
(comma-separated) — and any added in the sidebar. :func:`dataset_info` opens every split once and
says which are usable and how long they are (a clear :class:`~npdg.errors.DataError` otherwise);
:func:`sample` reads one image/label pair in its original format and brings it to the dashboard's
working size (long side ≤ 256 px; the label nearest-neighbour). Real datasets have no same-scene
renderings: pages show one dataset's images, with predictions where a page has a model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from npdg.errors import DataError, NpdgError
from npdg.service import lru, readonly

#: Environment variable with the dataset specs the dashboard starts with (comma-separated).
ENV = "NPDG_DATASETS"
SPLITS: tuple[str, ...] = ("train", "val", "test")
_INFO = lru(16)
_SAMPLES = lru(64)


@dataclass(frozen=True)
class DatasetInfo:
    """A usable real dataset: its spec, name, root and the length of each usable split."""

    spec: str
    name: str
    root: str
    splits: dict[str, int]

    @property
    def label(self) -> str:
        return f"{self.name} ({self.root})"


def configured() -> list[str]:
    """The specs from :data:`ENV` (comma-separated, blanks ignored), in order, without repeats."""
    raw = os.environ.get(ENV, "")
    return list(dict.fromkeys(s.strip() for s in raw.split(",") if s.strip()))


def add_configured(specs: list[str]) -> None:
    """Add specs (e.g. from the command line) to :data:`ENV` for this process."""
    os.environ[ENV] = ",".join(dict.fromkeys([*configured(), *(s.strip() for s in specs if s.strip())]))


def dataset_info(spec: str) -> DatasetInfo:
    """Open every split of the real dataset ``spec`` once (cached): DataError naming the problem
    when it is not a real-dataset spec or no split can be read."""
    from npdg.data.specs import open_dataset, parse_spec

    def compute() -> DatasetInfo:
        try:
            parsed = parse_spec(spec)
        except NpdgError as exc:
            raise DataError(str(exc)) from None
        if not parsed.is_real:
            raise DataError(f"{spec!r} is a synthetic domain; give a real dataset as NAME:ROOT, e.g. cityscapes:/data/cityscapes")
        lengths, problems = {}, []
        for split in SPLITS:
            try:
                n = len(open_dataset(parsed, split, None))
            except (NpdgError, OSError) as exc:
                problems.append(f"{split}: {exc}")
                continue
            if n:
                lengths[split] = n
        if not lengths:
            raise DataError(f"{spec}: no usable split ({'; '.join(problems) or 'no images'}); "
                            f"check it with: python -m npdg data doctor --dataset {parsed.name} --root {parsed.root}")
        return DatasetInfo(spec, parsed.name, str(parsed.root), lengths)

    return _INFO.get(spec, compute)


def sample(spec: str, split: str, index: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Pair ``index`` of ``split``: (image uint8 ``[h, w, 3]``, train-id label uint8 ``[h, w]``, its
    file stem) at the working size (:func:`npdg.service.uploads.working_size`); read-only, cached."""
    from npdg.data.specs import open_dataset
    from npdg.service.uploads import fit, fit_label, working_size

    info = dataset_info(spec)
    if split not in info.splits:
        raise DataError(f"{info.name} has no usable {split!r} split (it has {', '.join(info.splits)})")
    n = info.splits[split]
    if not 0 <= int(index) < n:
        raise DataError(f"index {index} is out of range: {info.name} {split} has images 0 … {n - 1}")

    def compute():
        ds = open_dataset(spec, split, None)
        image, label = ds.load_pair(int(index))
        size = working_size(*image.shape[:2])
        return readonly(fit(image, size)), fit_label(label, size), ds.pairs[int(index)][0].stem

    return _SAMPLES.get((spec, split, int(index)), compute)


__all__ = ["ENV", "SPLITS", "DatasetInfo", "add_configured", "configured", "dataset_info", "sample"]
