"""``python -m npdg prune``: sparse-train, select, physically prune and fine-tune a trained run.

Examples::

    python -m npdg prune --run runs/erm --rate 0.3 --criterion npdg --sparse-iters 500 \\
        --finetune-iters 500 --out runs/npdg_r30
    python -m npdg prune --run runs/slim --threshold 0.1 --criterion slimming --out runs/slim_t01
    python -m npdg prune --run runs/erm --criterion l1norm --rate 0.3 --out runs/l1_r30

The output directory is a run directory (model.safetensors + pruning_plan.json + cost.json +
prune.json + config.yaml) that ``eval --run``, ``cost --run`` and ``sensitivity --run`` accept.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from npdg.cli.common import ZOO_HELP, add_command, add_device_option, model_arg, progress_bar, run_command
from npdg.config import DEFAULT_RATE, UNIT_CHOICES, PruneConfig, parse_size
from npdg.recipes.modes import cli_criteria

#: Every flag's default is the prune section's own (npdg.config.PruneConfig), written in one place.
D = PruneConfig()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "prune", "prune a trained model (npdg, slimming, l1norm, random) and fine-tune it", __doc__)
    p.add_argument("--run", type=Path, required=True, metavar="DIR", help="the trained run directory to prune" + ZOO_HELP)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="the new run directory")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--rate", type=float, metavar="R", help=f"prune this fraction of the units (default {DEFAULT_RATE})")
    how.add_argument("--threshold", type=float, metavar="T",
                     help="prune units with score < T, capped at --max-rate (a larger T prunes exactly --max-rate)")
    p.add_argument("--max-rate", type=float, default=D.rate, metavar="R",
                   help=f"cap of threshold mode (default {DEFAULT_RATE})")
    p.add_argument("--criterion", default=D.criterion, choices=cli_criteria(), help="pruning criterion (npdg.recipes.modes)")
    p.add_argument("--sparse-iters", type=int, default=D.sparse_iters, metavar="N",
                   help="sparse-training iterations for npdg/slimming (0: use γ as they are)")
    p.add_argument("--finetune-iters", type=int, default=D.finetune_iters, metavar="N", help="fine-tuning iterations after pruning")
    p.add_argument("--dsp", default=D.dsp, metavar="DIR", help="DSP directory (default: assets/dsp_tiny if present; 'none' for plain CE)")
    p.add_argument("--lambda-s", type=float, metavar="L", help="sparsity weight (default: the run config's)")
    p.add_argument("--lam", type=float, metavar="λ",
                   help="unary/binary mix of the sensitivity weights, in [0, 1] (default: the run config's sparsity.lam)")
    p.add_argument("--refresh", type=int, metavar="N",
                   help="times the npdg sparse training recomputes the sensitivity weights (default: the run config's)")
    p.add_argument("--probe-images", type=int, metavar="N",
                   help="source images of each sensitivity probe of the sparse training (default: the run config's)")
    p.add_argument("--lr", type=float, metavar="LR", help="fine-tuning learning rate (default: the run config's)")
    p.add_argument("--round-to", type=int, default=D.round_to, metavar="N", help="kept channels per group: multiple of N, at least N")
    p.add_argument("--max-layer-ratio", type=float, default=D.max_layer_ratio, metavar="F", help="at most this fraction of a group is pruned")
    p.add_argument("--cost-size", default="{}x{}".format(*D.cost_size), metavar="HxW", help="input size for the cost report")
    p.add_argument("--cost-repeats", type=int, default=D.cost_repeats, metavar="N", help="timed forwards per latency (median)")
    p.add_argument("--seed", type=int, default=D.seed, help="seed of the random criterion")
    p.add_argument("--units", choices=UNIT_CHOICES, default=D.units,
                   help="which units may be pruned: all (default), filters (BN channels) or heads (MiT attention)")
    add_device_option(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out folder (only one npdg made, never one holding the source run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_prune)


def prune_config(args: argparse.Namespace) -> PruneConfig:
    """The ``prune`` config section the flags describe (ranges are checked by the pipeline)."""
    threshold = args.threshold
    rate = args.max_rate if threshold is not None else (DEFAULT_RATE if args.rate is None else args.rate)
    dsp = None if str(args.dsp).lower() == "none" else str(args.dsp)
    return PruneConfig(
        criterion=args.criterion, rate=rate, threshold=threshold, sparse_iters=args.sparse_iters,
        finetune_iters=args.finetune_iters, lambda_s=args.lambda_s, lam=args.lam,
        refresh=args.refresh, probe_images=args.probe_images, lr=args.lr, round_to=args.round_to,
        max_layer_ratio=args.max_layer_ratio, cost_size=parse_size(args.cost_size), cost_repeats=args.cost_repeats,
        seed=args.seed, units=args.units, dsp=dsp,
    )


def run_prune(args: argparse.Namespace) -> int:
    from npdg.recipes.prune import prune_run

    bar, update = progress_bar("prune", enabled=not args.no_progress)
    try:
        result = prune_run(model_arg(args.run), args.out, prune_config(args), device=args.device, overwrite=args.overwrite,
                           progress=lambda step, total, metrics=None: update(step, total))
    finally:
        bar.close()
    r = result.cost["ratio"]
    print(f"done: {result.out_dir} (GFLOPs ×{r['gflops']:.3f}, params ×{r['params']:.3f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run just this command (tests, or before it is registered in :mod:`npdg.cli`)."""
    return run_command(register, "prune", argv)
