"""Command-line interface: ``python -m npdg <command> ...``.

Each feature module contributes its sub-commands through a ``register(subparsers)`` function that
adds parsers whose ``func`` attribute is called with the parsed namespace and returns an exit code.
Errors caused by the user's input (:class:`npdg.errors.NpdgError`) print one clear line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

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


# --------------------------------------------------------------------------------------------------
# helpers shared by the command modules
# --------------------------------------------------------------------------------------------------
#: ``--device`` help of the commands whose default is ``auto``.
DEVICE_HELP = "auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps"


def add_command(subparsers: argparse._SubParsersAction, name: str, help: str, doc: str) -> argparse.ArgumentParser:
    """Add sub-command ``name``; its description is the first paragraph of ``doc`` (the module docstring)."""
    return subparsers.add_parser(
        name,
        help=help,
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_device_option(parser: argparse.ArgumentParser, default: str = "auto", help: str = DEVICE_HELP) -> None:
    """``--device`` (resolved later by ``npdg.models.select_device``)."""
    parser.add_argument("--device", default=default, help=help)


def add_model_source_options(
    parser: argparse.ArgumentParser,
    run_help: str,
    checkpoint_help: str = "an npdg model file (.safetensors)",
    checkpoint_first: bool = False,
) -> None:
    """The required, mutually exclusive ``--run DIR`` / ``--checkpoint FILE`` model source."""
    which = parser.add_mutually_exclusive_group(required=True)
    options = [
        ("--run", dict(type=Path, metavar="DIR", help=run_help)),
        ("--checkpoint", dict(type=Path, metavar="FILE", help=checkpoint_help)),
    ]
    for flag, kwargs in reversed(options) if checkpoint_first else options:
        which.add_argument(flag, **kwargs)


def run_command(register, name: str, argv: list[str] | None = None) -> int:
    """Parse and run just the sub-command ``name`` that ``register`` adds (tests, standalone use)."""
    parser = argparse.ArgumentParser(prog="python -m npdg")
    register(parser.add_subparsers(dest="command", required=True))
    return dispatch(parser.parse_args([name, *(argv or [])]))


def dispatch(args: argparse.Namespace) -> int:
    """Call the parsed command; a user error (NpdgError) prints one line and gives exit code 2."""
    try:
        return int(args.func(args) or 0)
    except NpdgError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return dispatch(parser.parse_args(argv))
