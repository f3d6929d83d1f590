"""``python -m npdg eval``: score a saved model on the synthetic benchmark or real datasets.

Examples::

    python -m npdg eval --run runs/erm --data synthetic --limit 50
    python -m npdg eval --checkpoint model.safetensors --data cityscapes:/data/cityscapes \\
        --data bdd100k:/data/bdd100k --protocol robustnet --device cuda --json eval.json

Prints one row per domain (source / target, mIoU, pixel accuracy, images) and the mean mIoU over
the targets, and writes the full result (:meth:`npdg.evaluate.EvalResult.to_dict`) as JSON: to
``--json``, or by default to ``RUN/eval/<protocol>_<split>.json`` when ``--run`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from npdg.cli import add_command, add_device_option, add_model_source_options
from npdg.data.transforms import parse_size
from npdg.errors import ConfigError, DataError
from npdg.evaluate import AMP_CHOICES, MODES, PROTOCOLS, EvalResult, evaluate, get_protocol


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "eval", "evaluate a model: mIoU per domain and the mean over held-out targets", __doc__)
    add_model_source_options(p, run_help="a run directory (uses DIR/model.safetensors)")
    p.add_argument("--data", action="append", required=True, metavar="SPEC",
                   help="'synthetic' (the embedded benchmark) or NAME:ROOT for a real dataset, e.g. "
                        "cityscapes:/data/cityscapes; repeat for several")
    p.add_argument("--domains", nargs="+", metavar="NAME", help="evaluate only these domains / datasets")
    p.add_argument("--split", default="val", help="dataset split (default: val)")
    p.add_argument("--limit", type=int, metavar="N", help="first N images of each domain")
    p.add_argument("--size", metavar="HxW", help="synthetic render size; real data: resize every image to HxW")
    p.add_argument("--protocol", default="robustnet", choices=list(PROTOCOLS), help="resolution protocol preset")
    p.add_argument("--mode", choices=MODES, help="override the protocol's inference mode")
    p.add_argument("--crop", metavar="HxW", help="sliding-window size (with --mode slide)")
    p.add_argument("--stride", metavar="HxW", help="sliding-window stride (with --mode slide)")
    p.add_argument("--batch-size", type=int, default=1, metavar="B")
    add_device_option(p)
    p.add_argument("--amp", default="auto", choices=AMP_CHOICES, help="mixed precision on CUDA")
    p.add_argument("--num-workers", type=int, default=0, metavar="N", help="data-loading worker processes")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the result JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (also off when stderr is not a terminal)")
    p.add_argument("--export", type=Path, metavar="DIR",
                   help="write predictions as DIR/<domain>/NNNNNN_labelIds.png and _color.png")
    p.set_defaults(func=run_eval)


# ----------------------------------------------------------------------------------------- run info


def _run_config(run: Path | None) -> dict[str, Any]:
    """The run's ``config.yaml`` as a dict ({} when absent or unreadable)."""
    if run is None or not (run / "config.yaml").is_file():
        return {}
    import yaml

    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
    except yaml.YAMLError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _seed(meta: dict[str, str], cfg: dict[str, Any]) -> int | None:
    raw = meta.get("seed")
    if raw is None:
        raw = (cfg.get("train") or {}).get("seed")
    try:
        return None if raw is None else int(json.loads(raw) if isinstance(raw, str) else raw)
    except (ValueError, TypeError):
        return None


def _spec_name(spec: str) -> str:
    return spec.split(":", 1)[0].strip().lower() if ":" in spec else spec.strip()


# ----------------------------------------------------------------------------------------- datasets


def open_eval_datasets(
    specs: list[str], split: str, size: tuple[int, int] | None, domains: list[str] | None
) -> tuple[dict[str, Any], str | None]:
    """Open every ``--data`` spec; return ({domain: dataset}, synthetic source domain or None)."""
    datasets: dict[str, Any] = {}
    source = None
    wanted = set(domains) if domains else None
    for spec in specs:
        if spec.strip().lower() == "synthetic":
            from npdg.data.synthetic import DOMAINS, SOURCE_DOMAIN, SyntheticDataset

            source = SOURCE_DOMAIN
            if wanted:
                unknown = sorted(wanted - set(DOMAINS) - {_spec_name(s) for s in specs if ":" in s})
                if unknown:
                    raise ConfigError(f"unknown domains {unknown}; synthetic domains: {', '.join(DOMAINS)}")
            for name in DOMAINS:
                if wanted is None or name in wanted:
                    kw = {"size": size} if size else {}
                    datasets[name] = SyntheticDataset(name, split=split, **kw)
        elif ":" in spec:
            from npdg.data.real import open_real

            name, root = _spec_name(spec), spec.split(":", 1)[1]
            if not root:
                raise ConfigError(f"--data {spec!r}: give the dataset folder, e.g. {name}:/data/{name}")
            if wanted is None or name in wanted:
                datasets[name] = open_real(name, root, split)
        else:
            raise ConfigError(f"--data {spec!r}: use 'synthetic' or NAME:ROOT (e.g. cityscapes:/data/cityscapes)")
    if not datasets:
        raise ConfigError(f"no dataset left to evaluate (--data {' '.join(specs)}, --domains {' '.join(domains or [])})")
    return datasets, source


# ----------------------------------------------------------------------------------------- output


def format_table(result: EvalResult) -> str:
    """The per-domain table printed by ``eval``."""
    df = result.table()
    width = max(6, *(len(d) for d in df["domain"]))
    lines = [f"{'domain':<{width}}  {'role':<6}  {'mIoU':>6}  {'pixAcc':>6}  {'images':>6}"]
    for row in df.itertuples(index=False):
        lines.append(f"{row.domain:<{width}}  {row.role:<6}  {_pct(row.miou):>6}  {_pct(row.pixel_acc):>6}  {row.num_images:>6}")
    lines.append(f"mean target mIoU ({len(result.targets)} domains): {_pct(result.mean_target_miou)}")
    lines.append(f"protocol: {result.protocol['name']} ({result.protocol['mode']}), resolution: "
                 + ", ".join(f"{d} {r}" for d, r in result.protocol["resolution"].items()))
    return "\n".join(lines)


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.2f}"


def write_json(path: Path, data: dict) -> Path:
    """Write JSON atomically (tmp + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def _progress_bar(desc: str, enabled: bool = True):
    """A tqdm bar and its ``progress(done, total)`` callback; off with ``--no-progress`` or without a TTY
    (so logs of scripted runs hold results, not carriage-return bars)."""
    from tqdm import tqdm

    bar = tqdm(total=0, unit="img", desc=desc, dynamic_ncols=True, leave=False, disable=None if enabled else True)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)

    return bar, update


# ----------------------------------------------------------------------------------------- command


def _protocol(args: argparse.Namespace, has_real: bool):
    protocol = get_protocol(args.protocol)
    if args.mode:
        crop = parse_size(args.crop) if args.crop else None
        stride = parse_size(args.stride) if args.stride else None
        protocol = protocol.with_mode(args.mode, crop, stride)
    elif args.crop or args.stride:
        raise ConfigError("--crop/--stride need --mode slide")
    if args.size and has_real:
        protocol = protocol.with_size(parse_size(args.size))
    return protocol


def run_eval(args: argparse.Namespace) -> int:
    from npdg.models import load_model, read_model_meta, select_device
    from npdg.models.weights import resolve_model_path

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.run is not None and not args.run.is_dir():
        raise DataError(f"run directory not found: {args.run}")
    path = resolve_model_path(args.run if args.run is not None else args.checkpoint)
    meta = read_model_meta(path)
    cfg = _run_config(args.run)
    device = select_device(args.device)
    model = load_model(path, device=device)

    size = parse_size(args.size) if args.size else None
    if size is None and args.run is not None and (cfg.get("data") or {}).get("size"):
        size = parse_size((cfg["data"])["size"])  # evaluate synthetic data at the size trained on
    datasets, source = open_eval_datasets(args.data, args.split, size, args.domains)
    run_source = (cfg.get("data") or {}).get("source")
    if isinstance(run_source, str) and run_source.strip().lower() != "synthetic":
        source = _spec_name(run_source)
    protocol = _protocol(args, has_real=any(":" in s for s in args.data))

    bar, update = _progress_bar(f"eval {path.name}", enabled=not args.no_progress)
    try:
        result = evaluate(
            model, datasets, protocol, args.batch_size, device, progress=update, limit=args.limit,
            export_dir=args.export, source=source, checkpoint=str(path), seed=_seed(meta, cfg),
            amp=args.amp, num_workers=args.num_workers,
        )
    finally:
        bar.close()
    print(format_table(result))
    out = args.json
    if out is None and args.run is not None:
        out = args.run / "eval" / f"{protocol.name}_{args.split}.json"
    if out is not None:
        print(f"wrote {write_json(out, result.to_dict())}")
    if args.export is not None:
        print(f"predictions in {args.export}/<domain>/")
    return 0
