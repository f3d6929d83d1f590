"""``python -m npdg cost``: FLOPs, parameters, checkpoint size and measured latency of a model.

Examples::

    python -m npdg cost --checkpoint runs/erm/model.safetensors --size 512x1024 --json cost.json
    python -m npdg cost --run runs/pruned --size 256x512 --batches 1 --repeats 5

Pruned run directories work too (their ``pruning_plan.json`` is replayed when the model is loaded).
The JSON holds ``gflops``, ``gmacs_tp`` (torch-pruning's cross-check), ``params``,
``checkpoint_bytes``, ``latency_ms`` (``batch1``, ``batch8``, ...), ``device`` and ``size``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from npdg.cli.common import ZOO_HELP, add_command, add_device_option, add_model_source_options, model_arg, run_command
from npdg.config import MAX_BATCH, check_pixels, parse_size
from npdg.errors import ConfigError


def _batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip() != "")
    except ValueError:
        raise ConfigError(f"--batches must be comma-separated integers, e.g. 1,8; got {text!r}") from None
    if any(v < 1 or v > MAX_BATCH for v in values):
        raise ConfigError(f"--batches must be in [1, {MAX_BATCH}], got {text!r}")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "cost", "FLOPs, parameters and measured latency of a model", __doc__)
    add_model_source_options(p, run_help="a run directory (DIR/model.safetensors)" + ZOO_HELP, checkpoint_first=True)
    p.add_argument("--size", default="512x1024", metavar="HxW", help="input size (default 512x1024; at most 4096x4096 pixels)")
    p.add_argument("--batches", default="1,8", metavar="B,B", help="batch sizes to time (default 1,8; empty: no timing)")
    p.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed warm-up forwards (default 3)")
    p.add_argument("--repeats", type=int, default=10, metavar="N", help="timed forwards, median reported (default 10)")
    add_device_option(p, default="cpu", help="cpu (default), cuda, cuda:N, mps, auto")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the report as JSON here")
    p.set_defaults(func=run_cost)


def run_cost(args: argparse.Namespace) -> int:
    import torch

    from npdg.cost import cost_report
    from npdg.models import select_device
    from npdg.models.store import resolve_model_path
    from npdg.pruning.physical import load_model
    from npdg.runs import atomic_write_json

    size = check_pixels("--size", parse_size(args.size))
    if args.warmup < 0 or args.repeats < 1:
        raise ConfigError(f"--warmup must be >= 0 and --repeats >= 1, got {args.warmup}, {args.repeats}")
    path = resolve_model_path(model_arg(args.checkpoint) or model_arg(args.run))
    model = load_model(path, device=select_device(args.device))
    try:
        report = cost_report(model, size, batches=_batches(args.batches), warmup=args.warmup, repeats=args.repeats,
                             checkpoint=path)
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "alloc" not in str(exc).lower():
            raise
        raise ConfigError(f"out of memory measuring {size[0]}x{size[1]}: lower --size or --batches") from None
    lat = ", ".join(f"{k} {v:.1f} ms" for k, v in report.latency_ms.items()) or "not timed"
    print(f"{path}: {report.gflops:.3f} GFLOPs ({report.gmacs_tp:.3f} GMACs by torch-pruning), "
          f"{report.params / 1e6:.3f} M params, {report.checkpoint_bytes / 1e6:.2f} MB at {size[0]}x{size[1]} on {report.device}; {lat}")
    if args.json is not None:
        atomic_write_json(report.to_dict(), args.json)
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run just this command (tests, or before it is registered in :mod:`npdg.cli`)."""
    return run_command(register, "cost", argv)
