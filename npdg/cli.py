"""Command-line interface: ``python -m npdg <command> ...``.

Each feature module contributes its sub-commands through a ``register(subparsers)`` function that
adds parsers whose ``func`` attribute is called with the parsed namespace and returns an exit code.
Errors caused by the user's input (:class:`npdg.errors.NpdgError`) print one clear line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from npdg import __version__
from npdg.errors import NpdgError

#: Modules that provide ``register(subparsers)``, in the order their commands are listed in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "npdg.data.cli",
    "npdg.dsp.cli",
    "npdg.train_cli",
    "npdg.evaluate_cli",
    "npdg.sensitivity_cli",
    "npdg.pruning.cli",
    "npdg.cost_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m npdg",
        description="NPDG: find the filters that break under domain shift, prune them, generalize better.",
    )
    parser.add_argument("--version", action="version", version=f"npdg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NpdgError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
