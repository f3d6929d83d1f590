"""``python -m npdg train ...`` and ``python -m npdg runs list ...``.

Single process::

    python -m npdg train --config configs/demo/deeplabv3plus_r18.yaml --set train.iters=500

Several GPUs / nodes (the engine reads torchrun's environment)::

    torchrun --nproc_per_node=4 -m npdg train --config configs/paper/gta5_r50.yaml --out runs/gta5_r50
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from npdg.cli.common import progress_bar
from npdg.errors import ConfigError

DEFAULT_RUNS_ROOT = "runs"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``runs`` sub-commands."""
    p = subparsers.add_parser(
        "train",
        help="train a segmentor from a YAML config (single process or under torchrun)",
        description="Train a segmentation model from a YAML config into a run directory, then evaluate it "
        "on the configured target domains (eval/final.json). Under torchrun the run uses every process "
        "(DDP); only rank 0 writes files.",
    )
    p.add_argument("--config", type=Path, default=None,
                   help="YAML run config (e.g. configs/demo/deeplabv3plus_r18.yaml); optional with --resume, "
                   "which then reads the run's own config.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value with a dotted key, e.g. --set train.iters=500 "
                   "--set data.size=128x256 (repeatable)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"run directory (default: {DEFAULT_RUNS_ROOT}/<config file name>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in --out from checkpoints/last.pt (model, optimizer, RNG, data position)")
    mode.add_argument("--overwrite", action="store_true",
                      help="replace an existing run folder (only one npdg made and holding only npdg files)")
    p.add_argument("--device", default="auto",
                   help="where to train: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation on the target domains")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    p.set_defaults(func=run_train)

    runs = subparsers.add_parser("runs", help="inspect run directories", description="Inspect run directories.")
    runs_sub = runs.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    lst = runs_sub.add_parser("list", help="one line per run: mode, model, iterations, loss, mIoU",
                              description="List the runs under a folder with their mode, model, iterations "
                              "done, last loss and source / mean-target mIoU (if evaluated).")
    lst.add_argument("--root", type=Path, default=Path(DEFAULT_RUNS_ROOT), help=f"folder holding run directories (default {DEFAULT_RUNS_ROOT})")
    lst.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    lst.set_defaults(func=run_runs_list)


def _resolve_config(args: argparse.Namespace):
    from npdg.config import load_config
    from npdg.recipes.modes import check_config

    if args.config is None:
        if not args.resume:
            raise ConfigError("--config is required (or --resume --out RUN_DIR to continue a run with its own config)")
        if args.out is None:
            raise ConfigError("--resume without --config needs --out RUN_DIR")
        return check_config(load_config(args.out / "config.yaml", args.overrides))
    return check_config(load_config(args.config, args.overrides))


def run_train(args: argparse.Namespace) -> int:
    """Entry point of ``python -m npdg train``."""
    from npdg.recipes.train import train
    from npdg.train import dist_from_env

    cfg = _resolve_config(args)
    out = args.out if args.out is not None else Path(DEFAULT_RUNS_ROOT) / args.config.stem
    args.resume_hint = f"python -m npdg train --out {out} --resume"
    is_main = dist_from_env().is_main
    if is_main:
        h, w = cfg.crop
        print(f"run directory: {out}")
        print(f"mode {cfg.train.mode} | {cfg.model.arch} {cfg.model.encoder} | source {cfg.data.source} | "
              f"{cfg.train.iters} iters, batch {cfg.train.batch_size}, crop {h}x{w}, {cfg.train.optimizer} lr {cfg.train.lr}")
    bar, update = progress_bar("train", enabled=is_main and not args.no_progress and sys.stderr.isatty(),
                               total=cfg.train.iters)

    def progress(step: int, total: int, metrics: dict) -> None:
        if bar.disable:
            if is_main and metrics and metrics.get("iter") == step:
                print(f"iter {step}/{total} loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} "
                      f"{metrics['images_per_s']:.1f} img/s", flush=True)
            return
        update(step, total)
        if metrics:
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                            img_s=f"{metrics['images_per_s']:.1f}", refresh=False)

    try:
        result = train(cfg, out, resume=args.resume, overwrite=args.overwrite, device=args.device,
                       progress=progress, evaluate_at_end=not args.no_eval, log=print)
    finally:
        bar.close()
    if is_main:
        print(f"done: {result.iters_done} iterations in {result.seconds:.1f} s, last loss {result.last_loss}")
        if result.final_eval is not None:
            _print_eval(result.final_eval)
            print(f"evaluation written to {out / 'eval' / 'final.json'}")
    return 0


def _print_eval(final: dict) -> None:
    for name, res in final.get("results", {}).items():
        miou = res.get("miou")
        print(f"  {name:<12} mIoU {100 * miou:5.1f}" if miou is not None else f"  {name:<12} mIoU -")
    mean = final.get("summary", {}).get("mean_target_miou")
    if mean is not None:
        print(f"  {'mean target':<12} mIoU {100 * mean:5.1f}")


def run_runs_list(args: argparse.Namespace) -> int:
    """Entry point of ``python -m npdg runs list``."""
    from npdg.runs import list_runs

    df = list_runs(args.root)
    if args.json:
        print(df.to_json(orient="records", indent=2))
    elif df.empty:
        print(f"no runs under {args.root}")
    else:
        print(df.drop(columns=["path"]).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0
