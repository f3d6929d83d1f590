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
from pathlib import Path

from npdg.cli.common import (
    ZOO_HELP,
    add_command,
    add_device_option,
    add_model_source_options,
    is_shipped,
    model_arg,
    progress_bar,
    size_arg,
)
from npdg.config import load_run_config, parse_size
from npdg.errors import ConfigError, DataError
from npdg.evaluate import AMP_CHOICES, MODES, PROTOCOLS, EvalResult, evaluate, get_protocol


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "eval", "evaluate a model: mIoU per domain and the mean over held-out targets", __doc__)
    add_model_source_options(p, run_help="a run directory (uses DIR/model.safetensors)" + ZOO_HELP)
    p.add_argument("--data", action="append", required=True, metavar="SPEC",
                   help="'synthetic' (the embedded benchmark), a synthetic domain, or NAME:ROOT[@SPLIT_FILE] for a "
                        "real dataset, e.g. cityscapes:/data/cityscapes or gta5:/data/gta5@val.txt (a split file "
                        "lists image stems; GTA5 and SYNTHIA have no official val split); repeat for several")
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
    p.add_argument("--amp", default="auto", choices=AMP_CHOICES, help="mixed precision: auto = bf16 or fp16 on CUDA, off on CPU; bf16 also on a CPU with AMX or AVX512-BF16")
    p.add_argument("--num-workers", type=int, default=0, metavar="N", help="data-loading worker processes")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the result JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (also off when stderr is not a terminal)")
    p.add_argument("--export", type=Path, metavar="DIR",
                   help="write predictions as DIR/<domain>/NNNNNN_labelIds.png and _color.png")
    p.set_defaults(func=run_eval)


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
        protocol = protocol.with_size(size_arg(args.size))
    return protocol


def run_eval(args: argparse.Namespace) -> int:
    from npdg.data.specs import open_named, parse_spec
    from npdg.models import read_model_meta, select_device
    from npdg.models.store import resolve_model_path
    from npdg.pruning.physical import load_model
    from npdg.runs import atomic_write_json

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise ConfigError(f"--num-workers must be >= 0, got {args.num_workers}")
    args.run, args.checkpoint = model_arg(args.run), model_arg(args.checkpoint)
    if args.run is not None and not args.run.is_dir():
        raise DataError(f"run directory not found: {args.run}")
    if args.export is not None and args.export.exists() and not args.export.is_dir():
        raise ConfigError(f"--export {args.export} is a file; give a folder for the predictions")
    if args.json is not None and args.json.is_dir():
        raise ConfigError(f"--json {args.json} is a folder; give a file name such as {args.json / 'eval.json'}")
    path = resolve_model_path(args.run if args.run is not None else args.checkpoint)
    meta = read_model_meta(path)
    cfg = load_run_config(args.run) if args.run is not None else None
    protocol = _protocol(args, has_real=any(parse_spec(s).is_real for s in args.data if s.strip().lower() != "synthetic"))
    device = select_device(args.device)
    model = load_model(path, device=device)

    size = size_arg(args.size) if args.size else (cfg.data.size if cfg is not None else None)
    datasets, source = open_named(args.data, args.split, size, args.domains)
    if cfg is not None and parse_spec(cfg.data.source).is_real:
        source = parse_spec(cfg.data.source).name
    seed = _seed(meta, cfg)

    bar, update = progress_bar(f"eval {path.name}", unit="img", enabled=not args.no_progress)
    try:
        result = evaluate(
            model, datasets, protocol, args.batch_size, device, progress=update, limit=args.limit,
            export_dir=args.export, source=source, checkpoint=str(path), seed=seed,
            amp=args.amp, num_workers=args.num_workers,
        )
    finally:
        bar.close()
    print(format_table(result))
    out = args.json
    if out is None and args.run is not None and not is_shipped(args.run):  # never write into the shipped zoo
        out = args.run / "eval" / f"{protocol.name}_{args.split}.json"
    if out is not None:
        print(f"wrote {atomic_write_json(result.to_dict(), out)}")
    if args.export is not None:
        print(f"predictions in {args.export}/<domain>/")
    return 0


def _seed(meta: dict[str, str], cfg) -> int | None:
    """The seed the model was trained with: its file's metadata, else its run config."""
    raw = meta.get("seed")
    try:
        if raw is not None:
            return int(raw)
    except ValueError:
        pass
    return cfg.train.seed if cfg is not None else None
