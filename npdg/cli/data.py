"""``python -m npdg data ...``: check, preview, list and export datasets.

* ``data doctor``  — check a real-dataset download (exit 1 when it is not usable);
* ``data preview`` — a PNG grid of images and label overlays with a class legend;
* ``data domains`` — the embedded synthetic domains;
* ``data export``  — samples as Cityscapes-style PNGs (image, train ids, label ids).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from npdg.cli.common import size_arg
from npdg.config import check_unit_interval
from npdg.data.real import DATASET_CLASSES, EXPECTED_COUNTS
from npdg.errors import ConfigError

_DATASETS_HELP = ", ".join(DATASET_CLASSES)


def _add_source(p: argparse.ArgumentParser) -> None:
    """``--domain D`` or ``--dataset NAME --root DIR``, plus ``--split`` and ``--size``."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--domain", help="a synthetic domain (see `data domains`)")
    src.add_argument("--dataset", choices=list(DATASET_CLASSES), metavar="NAME",
                     help=f"a real dataset: {_DATASETS_HELP} (needs --root)")
    p.add_argument("--root", type=Path, help="folder the real dataset is stored in")
    p.add_argument("--size", type=str, default=None, metavar="HxW",
                   help="resize every sample to H x W, e.g. 256x512 (labels: nearest neighbour)")


def _source(args: argparse.Namespace, preview: bool):
    from npdg.data.export import open_samples

    if args.dataset is not None and args.root is None:
        raise ConfigError(f"--dataset {args.dataset} needs --root DIR, the folder it is stored in")
    if args.domain is not None and args.root is not None:
        raise ConfigError("--root applies to --dataset only, not to a synthetic --domain")
    size = size_arg(args.size) if args.size else None
    return open_samples(domain=args.domain, dataset=args.dataset, root=args.root, split=args.split,
                        size=size, preview=preview)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from npdg.data.doctor import diagnose

    if args.sample < 1:
        raise ConfigError(f"--sample must be at least 1, got {args.sample}")
    report = diagnose(args.dataset, args.root, full=args.full, sample=args.sample)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
    return 0 if report.usable else 1


def _cmd_preview(args: argparse.Namespace) -> int:
    from npdg.data.export import preview_grid
    from npdg.data.io import write_png

    check_unit_interval("--opacity", args.opacity)
    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    if args.out.is_dir():
        raise ConfigError(f"--out {args.out} is a folder; give the PNG file to write, e.g. {args.out / 'grid.png'}")
    preview = preview_grid(_source(args, preview=True), args.n, opacity=args.opacity)
    out = write_png(args.out, preview.image)
    h, w = preview.image.shape[:2]
    print(f"wrote {out} ({w}x{h} px, {len(preview.names)} samples, classes present: "
          f"{', '.join(map(str, preview.classes)) or 'none'})")
    return 0


def _cmd_domains(args: argparse.Namespace) -> int:
    from npdg.data.synthetic import DOMAINS

    rows = [{"name": d.name, "role": d.role, "description": d.description} for d in DOMAINS.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no synthetic domains are defined")
        return 0
    wn, wr = max(len(r["name"]) for r in rows), max(len(r["role"]) for r in rows)
    print(f"{'name':<{wn}}  {'role':<{wr}}  description")
    for r in rows:
        print(f"{r['name']:<{wn}}  {r['role']:<{wr}}  {r['description']}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from npdg.data.export import export_samples

    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} is a file; give a folder")
    dataset = _source(args, preview=False)
    out_dir = Path(args.out) / (args.domain or args.dataset) / args.split
    result = export_samples(dataset, out_dir, args.n)
    short = f" (the split has only {result.written})" if result.written < result.requested else ""
    print(f"exported {result.written} samples{short} to {result.out_dir}: NNNNNN.png, "
          "NNNNNN_labelTrainIds.png, NNNNNN_labelIds.png, samples.csv")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command and its sub-commands to the top-level CLI."""
    data = subparsers.add_parser(
        "data", help="check, preview, list and export datasets",
        description="Work with datasets: the embedded synthetic domains and real benchmarks "
                    f"({_DATASETS_HELP}).")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    counts = "; ".join(f"{k} {'/'.join(str(v) for v in c.values())}" for k, c in EXPECTED_COUNTS.items())

    p = sub.add_parser(
        "doctor", help="check a real-dataset download", formatter_class=fmt,
        description="Check a real dataset before training on it: layout, counts per split against the "
                    "official ones, images without labels, label ids out of range, image/label size "
                    "mismatches, unreadable or unusual images.\n"
                    f"Official pair counts (train/val): {counts}.\n"
                    "Exit status: 0 usable (warnings allowed), 1 not usable, 2 bad arguments.")
    p.add_argument("--dataset", required=True, choices=list(DATASET_CLASSES), metavar="NAME",
                   help=f"one of {_DATASETS_HELP}")
    p.add_argument("--root", required=True, type=Path, help="folder the dataset is stored in")
    p.add_argument("--full", action="store_true", help="decode every pair, not only a sample")
    p.add_argument("--sample", type=int, default=64, metavar="N",
                   help="pairs decoded per split without --full (default 64, spread evenly)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser(
        "preview", help="draw a PNG grid of images and label overlays",
        description="For each of the first N samples draw the image and the image with its label "
                    "overlaid, with a legend of the classes present below.")
    _add_source(p)
    p.add_argument("--split", default="train", help="train or val (synthetic: as the domain offers)")
    p.add_argument("--n", type=int, default=4, help="number of samples (default 4)")
    p.add_argument("--opacity", type=float, default=0.5, help="label overlay opacity in [0, 1] (default 0.5)")
    p.add_argument("--out", required=True, type=Path, help="PNG file to write, e.g. grid.png")
    p.set_defaults(func=_cmd_preview)

    p = sub.add_parser("domains", help="list the synthetic domains",
                       description="List the embedded synthetic domains: name, role and description.")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_cmd_domains)

    p = sub.add_parser(
        "export", help="write samples as Cityscapes-style PNGs", formatter_class=fmt,
        description="Write the first N samples to OUT/<domain or dataset>/<split>/:\n"
                    "  NNNNNN.png                RGB image\n"
                    "  NNNNNN_labelTrainIds.png  train ids 0-18, 255 = ignore\n"
                    "  NNNNNN_labelIds.png       Cityscapes label ids (ignore -> 0)\n"
                    "  samples.csv               index, source name, domain, split")
    _add_source(p)
    p.add_argument("--split", required=True, help="train or val (synthetic: as the domain offers)")
    p.add_argument("--n", type=int, required=True, help="number of samples")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.set_defaults(func=_cmd_export)
