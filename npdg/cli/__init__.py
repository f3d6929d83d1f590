"""Command-line interface: ``python -m npdg <command> ...``.

One module per command group (:mod:`.data`, :mod:`.dsp`, :mod:`.train` with ``runs``, :mod:`.eval`,
:mod:`.sensitivity`, :mod:`.prune`, :mod:`.cost`, :mod:`.zoo`); each parses, calls one engine or recipe
function, and prints. Each contributes its sub-commands through ``register(subparsers)``, adding
parsers whose ``func`` attribute is called with the parsed namespace and returns an exit code.
Errors caused by the user's input (:class:`npdg.errors.NpdgError`) print one clear line and exit 2
(:func:`npdg.cli.common.dispatch`).
"""

from __future__ import annotations

import argparse
import sys

from npdg import __version__
from npdg.cli import cost, data, dsp, eval, prune, sensitivity, train, zoo
from npdg.cli.common import dispatch

#: Command modules, in the order their commands are listed in --help.
COMMAND_MODULES = (data, dsp, train, eval, sensitivity, prune, cost, zoo)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one ``error:`` line (exit 2), like npdg's own errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m npdg",
        description="NPDG: find the filters that break under domain shift, prune them, generalize better.",
    )
    parser.add_argument("--version", action="version", version=f"npdg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m npdg ARGV``; returns the exit code (usage errors exit 2 through argparse)."""
    return dispatch(build_parser().parse_args(argv))
