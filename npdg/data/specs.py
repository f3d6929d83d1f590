"""Dataset specs: the one place a dataset is named, parsed and opened.

A *spec* is a string that names a dataset:

=============================  ==================================================================
``synthetic``                  the embedded benchmark's source domain (in a list of eval specs:
                               every synthetic domain)
``source``, ``night``, ...      one synthetic domain (see ``npdg.data.synthetic.DOMAINS``)
``NAME:ROOT``                  a real dataset stored under ``ROOT`` (``gta5:/data/gta5``)
``NAME:ROOT@SPLIT_FILE``       the same, restricted to the image stems listed in ``SPLIT_FILE``
                               (GTA5 and SYNTHIA have no official val split)
=============================  ==================================================================

Training (``npdg.train``), evaluation (``npdg.evaluate`` and ``python -m npdg eval``), DSP training
(``npdg.dsp.train``) and the dashboard services all parse specs here, so they accept the same forms
and report the same errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from npdg.data import synthetic
from npdg.data.real import open_real
from npdg.data.transforms import Resize
from npdg.errors import ConfigError, DataError

#: The spec of the embedded benchmark's source domain.
SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed spec: a synthetic ``domain``, or a real dataset ``name`` under ``root``."""

    text: str
    name: str  # synthetic domain, or real dataset name (gta5, cityscapes, ...)
    root: str | None = None  # real datasets only
    split_file: str | None = None

    @property
    def is_real(self) -> bool:
        return self.root is not None

    @property
    def role(self) -> str:
        """``source`` / ``heldout`` / ``content_shift`` for synthetic domains, ``real`` otherwise."""
        return "real" if self.is_real else synthetic.DOMAINS[self.name].role


def parse_spec(text: str) -> DatasetSpec:
    """Parse one spec (see the module docstring); ConfigError with the accepted forms otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"empty dataset spec {text!r}: use 'synthetic', a synthetic domain or NAME:ROOT")
    text = text.strip()
    if ":" in text:
        name, rest = text.split(":", 1)
        root, _, split_file = rest.partition("@")
        name = name.strip().lower()
        if not root.strip():
            raise ConfigError(f"dataset spec {text!r}: give the dataset folder, e.g. {name}:/data/{name}")
        return DatasetSpec(text, name, root.strip(), split_file.strip() or None)
    domain = synthetic.SOURCE_DOMAIN if text.lower() == SYNTHETIC else text
    if domain not in synthetic.DOMAINS:
        raise ConfigError(
            f"unknown dataset spec {text!r}: use 'synthetic' or NAME:ROOT[@SPLIT_FILE] for a real dataset "
            f"(e.g. cityscapes:/data/cityscapes), or a synthetic domain ({', '.join(synthetic.DOMAINS)})"
        )
    return DatasetSpec(text, domain)


def spec_name(text: str) -> str:
    """Short name of a spec: the synthetic domain or the real dataset's name."""
    return parse_spec(text).name


def open_dataset(spec: str | DatasetSpec, split: str, size: tuple[int, int] | None, length: int | None = None,
                 transform: Callable | None = None) -> Dataset:
    """Open a dataset from a spec.

    Synthetic domains render at ``size`` (None → the generator's default); real images are resized
    to ``size`` (None → native size) unless an explicit ``transform`` is given. ``length`` caps the
    number of synthetic scenes.
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec.is_real:
        if transform is None and size is not None:
            transform = Resize(tuple(size))
        return open_real(spec.name, spec.root, split, transform=transform, split_file=spec.split_file)
    if size is None:
        return synthetic.SyntheticDataset(spec.name, split, length=length, transform=transform)
    return synthetic.SyntheticDataset(spec.name, split, size=tuple(size), length=length, transform=transform)


def default_targets(source: str) -> list[str]:
    """Specs averaged into the held-out mean when none are configured: every held-out synthetic domain
    for a synthetic source, none for a real source (real targets must be named)."""
    src = parse_spec(source)
    if src.is_real:
        return []
    return [name for name in synthetic.domain_names("heldout") if name != src.name]


def extra_eval_specs(source: str, targets: Sequence[str]) -> list[str]:
    """Domains evaluated but not averaged: with default synthetic targets, the content-shift domain
    (the method's stated limit, docs/method.md §7, shown beside the style-shift targets)."""
    if targets or parse_spec(source).is_real:
        return []
    return list(synthetic.domain_names("content_shift"))


def is_averaged(name: str, source: str | None) -> bool:
    """Whether an evaluated domain counts towards the mean target mIoU when no targets are named:
    every domain except the source and the synthetic content-shift domain."""
    if name == source:
        return False
    info = synthetic.DOMAINS.get(name)
    return not (info is not None and info.role == "content_shift")


def open_named(specs: Sequence[str], split: str, size: tuple[int, int] | None,
               domains: Sequence[str] | None = None) -> tuple[dict[str, Dataset], str | None]:
    """Open every spec of an evaluation request; ``synthetic`` expands to all synthetic domains.

    ``domains`` keeps only those names (unknown names are refused). Returns
    ``({name: dataset}, synthetic source domain or None)``.
    """
    wanted = set(domains) if domains else None
    parsed = []
    for text in specs:
        if text.strip().lower() == SYNTHETIC:
            parsed += [DatasetSpec(SYNTHETIC, name) for name in synthetic.DOMAINS]
        else:
            parsed.append(parse_spec(text))
    if wanted:
        unknown = sorted(wanted - {p.name for p in parsed})
        if unknown:
            raise ConfigError(f"unknown domains {unknown}; available: {', '.join(p.name for p in parsed)}")
    datasets: dict[str, Dataset] = {}
    for p in parsed:
        if wanted is None or p.name in wanted:
            datasets[p.name] = open_dataset(p, split, size if not p.is_real else None)
    if not datasets:
        raise ConfigError(f"no dataset left to evaluate (specs {' '.join(specs)}, domains {' '.join(domains or [])})")
    source = synthetic.SOURCE_DOMAIN if any(not p.is_real and p.name == synthetic.SOURCE_DOMAIN for p in parsed) else None
    return datasets, source


def spread_images(dataset: Dataset, n: int) -> torch.Tensor:
    """``n`` images spread evenly over ``dataset`` (deterministic), stacked ``[n, 3, H, W]`` — the
    source images of a sensitivity probe (docs/method.md §3)."""
    if len(dataset) < 1:
        raise DataError("the source dataset is empty: no images to probe sensitivity with")
    n = min(int(n), len(dataset))
    idx = sorted({int(i * len(dataset) / n) for i in range(n)})
    images = [dataset[i]["image"] for i in idx]
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise DataError(f"probe images differ in size {sorted(shapes)}; set data.size so the loader resizes them")
    return torch.stack(images)


def domain_stack(indices: Sequence[int], domains: Sequence[str], split: str = "val",
                 size: tuple[int, int] = synthetic.DEFAULT_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """The same scenes rendered in several synthetic domains, for the "oracle" sensitivity probe.

    Returns ``(images [B·K, 3, H, W], labels [B, H, W])`` with the K = ``len(domains)`` renderings of
    one scene adjacent (the layout ``npdg.sensitivity.probe`` expects for pre-stylized images). The
    labels are identical across appearance domains; a content-shift domain is refused.
    """
    if len(domains) < 2:
        raise ConfigError(f"a domain stack needs at least 2 domains (variance over styles), got {list(domains)}")
    for d in domains:
        synthetic.check_domain(d)
        if synthetic.DOMAINS[d].role == "content_shift":
            raise ConfigError(f"{d!r} changes the layout, not the style: it cannot be stacked with the others")
    if not indices:
        raise ConfigError("a domain stack needs at least one scene index")
    images, labels = [], []
    for i in indices:
        label = None
        for d in domains:
            image, lab = synthetic.render_scene(d, split, int(i), tuple(size))
            images.append(torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0))
            label = lab
        labels.append(torch.from_numpy(label.astype("int64")))
    return torch.stack(images), torch.stack(labels)


__all__ = [
    "SYNTHETIC", "DatasetSpec", "default_targets", "domain_stack", "extra_eval_specs", "is_averaged",
    "open_dataset", "open_named", "parse_spec", "spec_name", "spread_images",
]

