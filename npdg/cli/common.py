"""Helpers shared by the command modules: parser pieces, the one progress bar, and dispatch.

A user error (:class:`npdg.errors.NpdgError`) prints one ``error: ...`` line and exits 2; Ctrl-C
prints ``interrupted`` (with how to resume, where the command can) and exits 130; neither shows a
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from npdg.errors import NpdgError

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


#: ``NPDG_PROGRESS=lines``: progress as plain ``progress DONE/TOTAL`` lines on stderr instead of a bar
#: (how the dashboard follows a command it launched in a separate process).
PROGRESS_ENV = "NPDG_PROGRESS"


def progress_bar(desc: str, unit: str = "it", enabled: bool = True, total: int = 0,
                 initial: int = 0) -> tuple[tqdm, Callable[[int, int], None]]:
    """THE progress bar of the CLI: a tqdm bar on stderr and its ``progress(done, total)`` callback.

    Off with ``--no-progress`` or when stderr is not a terminal (so logs of scripted runs hold
    results, not carriage-return bars); with :data:`PROGRESS_ENV` ``=lines`` one line per step.
    """
    lines = enabled and os.environ.get(PROGRESS_ENV) == "lines"
    bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True, leave=False, file=sys.stderr,
               disable=True if lines or not enabled else None)

    def update(done: int, total: int) -> None:
        if lines:
            print(f"progress {int(done)}/{int(total)}", file=sys.stderr, flush=True)
            return
        if bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)

    return bar, update


def dispatch(args: argparse.Namespace) -> int:
    """Call the parsed command; a user error (NpdgError) prints one line and gives exit code 2."""
    try:
        return int(args.func(args) or 0)
    except NpdgError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file system problem npdg did not foresee: name the path, no traceback
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as exc:
        print(f"error: a file that should hold text does not ({exc.reason})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = getattr(args, "resume_hint", None)
        print("interrupted" + (f"; resume with {hint}" if hint else ""), file=sys.stderr)
        return 130


def run_command(register, name: str, argv: list[str] | None = None) -> int:
    """Parse and run just the sub-command ``name`` that ``register`` adds (tests, standalone use)."""
    parser = argparse.ArgumentParser(prog="python -m npdg")
    register(parser.add_subparsers(dest="command", required=True))
    return dispatch(parser.parse_args([name, *(argv or [])]))


def size_arg(text: str, name: str = "--size") -> tuple[int, int]:
    """An ``HxW`` option: parsed, positive, and at most ``npdg.config.MAX_PIXELS`` pixels."""
    from npdg.config import check_pixels, parse_size

    return check_pixels(name, parse_size(text))


def seed_arg(value: int, name: str = "--seed") -> int:
    """A seed option in [0, 2³¹ − 1] (torch generators refuse larger ones)."""
    from npdg.config import MAX_SEED
    from npdg.errors import ConfigError

    if not 0 <= int(value) <= MAX_SEED:
        raise ConfigError(f"{name} must be in [0, {MAX_SEED}], got {value}")
    return int(value)


#: ``--run zoo:NAME`` (or ``--checkpoint``, ``--ascend-with``) names a shipped zoo model.
ZOO_PREFIX = "zoo:"
ZOO_HELP = "; zoo:NAME for a shipped zoo model (python -m npdg zoo list)"


def model_arg(value: Path | None) -> Path | None:
    """Resolve a model argument: ``zoo:NAME`` → ``assets/zoo/NAME`` (DataError if not shipped), else as given."""
    if value is None or not str(value).startswith(ZOO_PREFIX):
        return value
    from npdg.recipes.zoo import zoo_path

    return zoo_path(str(value)[len(ZOO_PREFIX):])


def is_shipped(path: Path | None) -> bool:
    """Whether ``path`` lies in the shipped zoo (read-only: npdg never writes there after a build)."""
    from npdg.recipes.zoo import ZOO_DIR

    return path is not None and Path(path).resolve().is_relative_to(ZOO_DIR.resolve())
