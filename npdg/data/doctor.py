"""The dataset doctor: check a real-dataset download before training on it.

:func:`diagnose` detects the layout, counts images and labels per split against the official counts,
pairs images with labels (orphans are listed by file name), and decodes a sample of pairs (all of
them with ``full=True``) to check label ids, image/label size agreement and image formats. It uses
the loaders' own scanning and decoding code (:mod:`npdg.data.real`), so a report without errors
means the loader will open the dataset. The result is a frozen :class:`DoctorReport` that renders as
text for people and as a dict for ``--json``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from npdg.data.io import ImageInfo, inspect_image
from npdg.data.real import RealSegDataset, SplitScan, dataset_class
from npdg.errors import DataError

LEVELS: tuple[str, ...] = ("error", "warning", "info")
#: Per-file findings of one kind listed before the rest are only counted.
MAX_PER_KIND = 20

_IMAGE_KIND_NOTES = {
    "rgba": "has an alpha channel; it is dropped when loading",
    "greyscale": "is greyscale; it is replicated to three channels when loading",
    "palette": "is a palette image; its palette is applied when loading",
    "16-bit": "is 16-bit; it is scaled to 8 bit when loading",
    "other": "has an unusual colour mode; it is converted to RGB when loading",
}


@dataclass(frozen=True)
class Finding:
    """One observation: ``level`` is ``error`` (the loader will fail or mislabel), ``warning`` (it
    works but differs from the official release) or ``info``; ``file`` names the file concerned."""

    level: str
    message: str
    file: str | None = None


@dataclass(frozen=True)
class SplitSummary:
    """Counts of one split: files found, pairs formed, official count, orphans, pairs decoded."""

    split: str
    images: int
    labels: int
    pairs: int
    expected: int | None
    orphan_images: int
    orphan_labels: int
    checked: int


@dataclass(frozen=True)
class DoctorReport:
    """Everything :func:`diagnose` found about one dataset root."""

    dataset: str
    root: str
    layout: str | None
    full: bool
    splits: tuple[SplitSummary, ...] = ()
    findings: tuple[Finding, ...] = ()

    @property
    def usable(self) -> bool:
        """True when no finding is an error."""
        return not any(f.level == "error" for f in self.findings)

    def count(self, level: str) -> int:
        return sum(f.level == level for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (what ``data doctor --json`` prints)."""
        d = asdict(self)
        d["usable"] = self.usable
        d["counts"] = {lvl: self.count(lvl) for lvl in LEVELS}
        return d

    def render(self) -> str:
        """Human-readable report: verdict, per-split table, then findings, errors first."""
        verdict = "USABLE" if self.usable else "NOT USABLE"
        lines = [f"{self.dataset} at {self.root}: {verdict} "
                 f"({self.count('error')} errors, {self.count('warning')} warnings)",
                 f"layout: {self.layout or 'not recognised'}; "
                 f"{'every pair decoded' if self.full else 'a sample of pairs decoded (--full for all)'}"]
        if self.splits:
            lines.append(f"{'split':<6} {'images':>7} {'labels':>7} {'pairs':>7} {'official':>8} "
                         f"{'orphan img':>10} {'orphan lbl':>10} {'checked':>7}")
            for s in self.splits:
                exp = "-" if s.expected is None else str(s.expected)
                lines.append(f"{s.split:<6} {s.images:>7} {s.labels:>7} {s.pairs:>7} {exp:>8} "
                             f"{s.orphan_images:>10} {s.orphan_labels:>10} {s.checked:>7}")
        tag = {"error": "ERROR", "warning": "WARN ", "info": "info "}
        for level in LEVELS:
            for f in self.findings:
                if f.level == level:
                    lines.append(f"{tag[level]} {f.message}" + (f"  [{f.file}]" if f.file else ""))
        return "\n".join(lines)


@dataclass
class _Collector:
    """Accumulates findings; per-file findings beyond :data:`MAX_PER_KIND` of a kind are counted and
    summarised at the end instead of listed."""

    items: list[Finding] = field(default_factory=list)
    per_kind: Counter = field(default_factory=Counter)

    def add(self, level: str, message: str, file: str | Path | None = None, kind: str | None = None) -> None:
        if kind is not None:
            self.per_kind[(level, kind)] += 1
            if self.per_kind[(level, kind)] > MAX_PER_KIND:
                return
        self.items.append(Finding(level, message, None if file is None else str(file)))

    def finish(self) -> tuple[Finding, ...]:
        for (level, kind), n in sorted(self.per_kind.items()):
            if n > MAX_PER_KIND:
                self.items.append(Finding(level, f"… and {n - MAX_PER_KIND} more files: {kind} "
                                                 f"({n} in all)"))
        order = {lvl: i for i, lvl in enumerate(LEVELS)}
        return tuple(sorted(self.items, key=lambda f: order[f.level]))


def _sample_indices(n: int, sample: int, full: bool) -> list[int]:
    """All indices with ``full``; else ``sample`` indices spread evenly (deterministic)."""
    if full or n <= sample:
        return list(range(n))
    if sample <= 0:
        return []
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, sample)})


def _check_counts(cls: type[RealSegDataset], scan: SplitScan, out: _Collector, missing_level: str = "error") -> None:
    """Counts against the official release. ``missing_level`` is the level of a missing split folder:
    a warning when another split of the dataset is usable (a partial download still trains/evaluates)."""
    expected = cls.expected_counts().get(scan.split)
    n, where = len(scan.pairs), f"{scan.split}"
    if not scan.image_dir.is_dir():
        out.add(missing_level, f"{where}: image folder {scan.image_dir} is missing")
    elif not scan.images:
        out.add("error", f"{where}: no images in {scan.image_dir}")
    if scan.images and not scan.label_dir.is_dir():
        out.add("error", f"{where}: label folder {scan.label_dir} is missing")
    if scan.images and n == 0 and scan.label_dir.is_dir():
        out.add("error", f"{where}: no image has a label ({len(scan.labels)} label files in {scan.label_dir} "
                         "match no image name)")
    if expected is not None and 0 < n < expected:
        out.add("warning", f"{where}: {n} image/label pairs, fewer than the official {expected}")
    elif expected is not None and n > expected:
        out.add("info", f"{where}: {n} image/label pairs, more than the official {expected}")
    elif expected is not None and n == expected:
        out.add("info", f"{where}: {n} image/label pairs, as in the official release")
    for img in scan.orphan_images:
        out.add("error", f"{where}: image without a label (expected in {scan.label_dir})", img.name,
                kind="image without a label")
    for lab in scan.orphan_labels:
        out.add("warning", f"{where}: label without an image (ignored)", lab.name, kind="label without an image")


def _header_only(path: Path) -> ImageInfo | None:
    try:
        return inspect_image(path, decode=False)
    except DataError:
        return None


def _check_pair(cls: type[RealSegDataset], img: Path, lab: Path, out: _Collector) -> None:
    """Decode one pair the way the loader does and record what is wrong with it."""
    info: ImageInfo | None
    try:
        info = inspect_image(img, decode=True)
    except DataError as exc:
        out.add("error", f"unreadable image: {exc}", img, kind="unreadable image")
        info = _header_only(img)  # a truncated file still has a header: keep checking the size
    else:
        if info.kind != "rgb":
            out.add("warning", f"image {_IMAGE_KIND_NOTES[info.kind]} (mode {info.mode}, "
                               f"{info.bit_depth}-bit)", img, kind=f"{info.kind} image")
    try:
        raw = cls.read_raw_label(lab)
        cls.decode_label(raw, lab)
    except DataError as exc:
        out.add("error", str(exc), lab, kind="bad label")
        return
    if info is not None and raw.shape != info.size:
        out.add("warning", f"label is {raw.shape[0]}x{raw.shape[1]} but image {img.name} is "
                           f"{info.size[0]}x{info.size[1]} (loader default size_mismatch='resize' resizes the "
                           "label with nearest neighbour; 'error' refuses, 'skip' drops the pair)", lab,
                kind="image/label size mismatch")


def diagnose(name: str, root: str | Path, full: bool = False, sample: int = 64) -> DoctorReport:
    """Check the ``name`` dataset under ``root``; see the module docstring. Only an unknown dataset
    name raises (ConfigError); every problem with the files becomes a :class:`Finding`."""
    cls = dataset_class(name)
    root = Path(root)
    out = _Collector()
    try:
        layout = cls.detect_layout(root)
    except DataError as exc:
        out.add("error", str(exc))
        return DoctorReport(cls.name, str(root), None, full, (), out.finish())
    out.add("info", f"layout {layout.name}: {layout.describe()}")
    if not cls.has_split_dirs:
        out.add("info", f"{cls.name} ships as one pool: split 'train' is every image; other splits need a "
                        "split file")
    summaries = []
    scans = [cls.scan_split(root, split) for split in cls.disk_splits()]
    missing_level = "warning" if any(scan.pairs for scan in scans) else "error"
    for scan in scans:
        _check_counts(cls, scan, out, missing_level)
        chosen = _sample_indices(len(scan.pairs), sample, full)
        for i in chosen:
            _check_pair(cls, *scan.pairs[i], out)
        summaries.append(SplitSummary(
            split=scan.split, images=len(scan.images), labels=len(scan.labels), pairs=len(scan.pairs),
            expected=cls.expected_counts().get(scan.split), orphan_images=len(scan.orphan_images),
            orphan_labels=len(scan.orphan_labels), checked=len(chosen)))
    return DoctorReport(cls.name, str(root), layout.name, full, tuple(summaries), out.finish())
