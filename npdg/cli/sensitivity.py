"""``python -m npdg sensitivity``: probe which units of a trained model react to style.

Example::

    python -m npdg sensitivity --run runs/erm --dsp runs/dsp --images 16 --styles 4 --lambda 0.4 \\
        --out runs/erm/sensitivity.csv

Takes ``--images`` source images (spread evenly over the run's source training split), restyles
each with ``--styles`` DSP styles, runs the model once per probe batch with streaming hooks and
writes the per-unit table (layer, unit, kind, unary, binary, w_unary, w_binary, combined, gamma,
group) as CSV or Parquet, chosen by the extension of ``--out``. Prints the most style-sensitive
layers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from npdg.cli.common import ZOO_HELP, add_command, add_device_option, model_arg, progress_bar, seed_arg, size_arg
from npdg.config import DEFAULT_LAMBDA, UNARY_MODES, check_unit_interval
from npdg.errors import ConfigError, DataError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``sensitivity`` sub-command."""
    p = add_command(subparsers, "sensitivity", "per-unit style sensitivity (unary, binary, combined) of a trained model", __doc__)
    p.add_argument("--run", type=Path, required=True, metavar="DIR", help="run directory (model.safetensors + config.yaml)" + ZOO_HELP)
    p.add_argument("--dsp", type=Path, required=True, metavar="DIR", help="trained DSP folder (dsp.json + dsp.safetensors)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="output table: .csv or .parquet")
    p.add_argument("--images", type=int, default=16, metavar="N", help="source images to probe (default 16)")
    p.add_argument("--styles", type=int, default=4, metavar="K", help="DSP styles per image (default 4, >= 2)")
    p.add_argument("--lambda", dest="lam", type=float, default=DEFAULT_LAMBDA, metavar="L",
                   help=f"weight of the unary score in the combined weight (default {DEFAULT_LAMBDA}; 1 = unary only)")
    p.add_argument("--unary", choices=UNARY_MODES, default="share",
                   help="unary statistic: share of variance explained by style (default) or raw within-style variance")
    p.add_argument("--batch-size", type=int, default=4, metavar="B", help="source images per forward (× K styles)")
    p.add_argument("--size", metavar="HxW", help="probe image size (default: the run's data.size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the DSP styles")
    add_device_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_sensitivity)


def _check_args(args: argparse.Namespace) -> None:
    args.run = model_arg(args.run)
    if args.out.suffix.lower() not in (".csv", ".parquet"):
        raise ConfigError(f"--out must end in .csv or .parquet, got {args.out}")
    if args.images < 1:
        raise ConfigError(f"--images must be >= 1, got {args.images}")
    if args.styles < 2:
        raise ConfigError(f"--styles must be >= 2 (the probe measures variance over styles), got {args.styles}")
    check_unit_interval("--lambda", args.lam)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not (args.run / "config.yaml").is_file():
        raise DataError(f"{args.run} is not a run directory (no config.yaml)")


def run_sensitivity(args: argparse.Namespace) -> int:
    """Entry point of ``python -m npdg sensitivity``."""
    from npdg.config import load_run_config
    from npdg.data.specs import open_dataset, spread_images
    from npdg.dsp.model import DSP
    from npdg.models import select_device
    from npdg.pruning.physical import load_model
    from npdg.sensitivity import probe

    _check_args(args)
    device = select_device(args.device)
    cfg = load_run_config(args.run)
    size = size_arg(args.size) if args.size else cfg.data.size
    seed_arg(args.seed)
    model = load_model(args.run, device=device)
    dsp = DSP.load(args.dsp, device=device)
    images = spread_images(open_dataset(cfg.data.source, cfg.data.train_split, size, cfg.data.length), args.images)
    bar, update = progress_bar("probe", unit="batch", enabled=not args.no_progress)
    try:
        result = probe(model, images, dsp, n_styles=args.styles, lam=args.lam, unary=args.unary,
                       batch_size=args.batch_size, progress=update, seed=args.seed)
    finally:
        bar.close()
    result.save(args.out)
    t = result.table
    print(f"probed {len(t)} units in {t['layer'].nunique()} layers ({len(images)} images × {args.styles} styles, "
          f"λ={args.lam}, unary={args.unary})")
    top = result.layers.sort_values("combined_mean", ascending=False).head(5)
    for row in top.itertuples():
        print(f"  {row.layer:<40} {row.kind:<6} {row.size:>4} units  mean w {row.combined_mean:.3f}  "
              f"unary {row.unary_mean:.3g}")
    print(f"table written to {args.out}")
    return 0
