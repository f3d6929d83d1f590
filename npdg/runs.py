"""Run directories, atomic checkpoints, RNG capture and the list of runs.

A run directory holds everything one training run produced::

    runs/<name>/
      config.yaml              fully resolved configuration (reproduces the run)
      metrics.jsonl            one JSON object per log line: iter, loss, lr, images_per_s, time
      checkpoints/last.pt      model, optimizer, GradScaler, RNG states, data position, iteration
      checkpoints/iter_XXXXXX.pt   optional snapshots (train.keep_checkpoints)
      model.safetensors        plain weights (npdg.models.save_model), for evaluation and the dashboard
      eval/*.json              evaluation results (final.json at the end of training)

Checkpoints are written atomically (temporary file in the same folder, fsync, ``os.replace``), so a
crash or a full disk during a write leaves the previous checkpoint intact. They contain only tensors and
plain Python containers and load with ``torch.load(..., weights_only=True)``: no pickled code runs when
a checkpoint is opened.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import random
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from npdg.errors import ConfigError, NpdgError, StorageError

if TYPE_CHECKING:  # torch is imported by the functions that use it: config and run-folder code stays torch-free
    import torch

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
WEIGHTS_FILE = "model.safetensors"
EVAL_DIR = "eval"


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINT_DIR

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / LAST_CHECKPOINT

    @property
    def weights(self) -> Path:
        return self.root / WEIGHTS_FILE

    @property
    def eval(self) -> Path:
        return self.root / EVAL_DIR

    def iter_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"iter_{step:06d}.pt"


#: Marker file npdg writes into every folder it creates as a run: only marked folders are ever deleted.
MARKER_FILE = ".npdg-run"
#: Files and folders npdg writes inside a run folder (glob patterns relative to the root). A marked
#: folder holding anything else is never deleted by ``--overwrite``: the foreign files are listed.
OWN_PATTERNS: tuple[str, ...] = (
    MARKER_FILE, CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE, "pruning_plan.json", "cost*.json", "prune.json",
    "dsp.safetensors", "dsp.json", f"{CHECKPOINT_DIR}/*.pt", f"{EVAL_DIR}/*.json", "sensitivity/*",
    "samples/*.png", ".*.tmp", "*/.*.tmp",
)
#: Sub-folders that are npdg runs of their own (checked with the same rules, marker included).
OWN_TREES: tuple[str, ...] = ("sparse",)


def _is_marked(root: Path) -> bool:
    return (root / MARKER_FILE).is_file()


def foreign_files(root: str | Path) -> list[Path]:
    """Files under ``root`` that npdg did not write (matching neither :data:`OWN_PATTERNS` nor
    :data:`OWN_TREES`), relative to ``root``, sorted."""
    root = Path(root)
    out = []
    for name in OWN_TREES:  # a nested run (prune's OUT/sparse) is ours only if it is a marked run itself
        sub = root / name
        if sub.is_dir() and not sub.is_symlink():
            if not _is_marked(sub):
                out += [p.relative_to(root) for p in sorted(sub.rglob("*")) if not p.is_dir()]
            else:
                out += [Path(name) / f for f in foreign_files(sub)]
    for p in sorted(root.rglob("*")):
        if p.is_dir() and not p.is_symlink():
            continue
        rel = p.relative_to(root)
        if rel.parts[0] in OWN_TREES and len(rel.parts) > 1:
            continue
        # a pattern names a file at its own depth: "config.yaml" is RUN/config.yaml, never RUN/notes/config.yaml
        if not any(len(rel.parts) == len(Path(pat).parts) and fnmatch.fnmatchcase(rel.as_posix(), pat) for pat in OWN_PATTERNS):
            out.append(rel)
    return sorted(out)


def remove_run_dir(root: str | Path) -> None:
    """Delete a run folder npdg made, and nothing else.

    Refused (ConfigError) for a folder without the npdg marker, or one that holds files npdg did not
    write (they are listed), so ``--overwrite`` can never destroy user data. Symlinks are not followed.
    """
    root = Path(root)
    if root.is_symlink():
        raise ConfigError(f"{root} is a symbolic link; npdg only replaces run folders it made itself")
    if not _is_marked(root):
        raise ConfigError(
            f"{root} exists and is not a run folder npdg made (no {MARKER_FILE} marker); "
            "refusing to delete it — choose another output folder or remove it yourself"
        )
    foreign = foreign_files(root)
    if foreign:
        shown = ", ".join(str(f) for f in foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ConfigError(f"{root} holds files npdg did not write ({shown}); refusing to delete it — move them first")
    shutil.rmtree(root)


def mark_run_dir(root: str | Path, kind: str) -> None:
    """Write the npdg marker (``kind``: train, dsp, prune) into a folder npdg has just created."""
    root = Path(root)
    if not (root / MARKER_FILE).is_file():
        atomic_write_text(json.dumps({"kind": kind, "npdg": 1}) + "\n", root / MARKER_FILE)


def prepare_run_dir(path: str | Path, resume: bool = False, overwrite: bool = False, kind: str = "train",
                    subdirs: tuple[str, ...] = (CHECKPOINT_DIR, EVAL_DIR)) -> RunDir:
    """Create (or reopen) a run directory.

    An existing non-empty directory is refused unless ``resume`` (continue from its last checkpoint)
    or ``overwrite`` (delete it first — only if npdg made it, see :func:`remove_run_dir`) is given, so
    a second run never mixes its metrics and checkpoints into the first one's. Stale temporary files
    of interrupted writes in the run are removed (:func:`clean_stale_temps`).
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite cannot be used together")
    run = RunDir(Path(path))
    if run.root.exists() and not run.root.is_dir():
        raise ConfigError(f"{run.root} exists and is not a folder")
    exists = run.root.exists() and any(run.root.iterdir())
    if resume:
        if not run.last_checkpoint.is_file():
            raise ConfigError(f"cannot resume: no checkpoint at {run.last_checkpoint}")
    elif exists:
        if not overwrite:
            raise ConfigError(
                f"run directory {run.root} already exists; pass --resume to continue it or --overwrite to replace it"
            )
        remove_run_dir(run.root)
    try:
        run.root.mkdir(parents=True, exist_ok=True)
        mark_run_dir(run.root, kind)  # first, so a folder killed while being set up is still recognised as ours
        for d in (run.root / s for s in subdirs):
            d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(exc.errno, f"cannot create the run folder {run.root}: {exc.strerror or exc}; choose a writable place") from None
    clean_stale_temps(run.root)
    return run


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's live process
        return True
    return True


def clean_stale_temps(root: str | Path) -> list[Path]:
    """Remove npdg's temporary files of interrupted atomic writes under ``root`` (``.NAME.PID.*.tmp``)
    whose writing process is gone; temps of a live writer (another DDP rank) are kept."""
    removed = []
    for p in Path(root).rglob(".*.tmp"):
        parts = p.name.split(".")  # "", NAME (may hold dots), PID, random, "tmp"
        pid = int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else None
        if pid is None or (pid != os.getpid() and not _pid_alive(pid)):
            try:
                p.unlink()
                removed.append(p)
            except OSError:  # pragma: no cover
                pass
    return removed


# --------------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


#: Permissions of every file npdg writes: what ``open(path, "w")`` would give under this umask.
FILE_MODE = _file_mode()


def atomic_write(path: str | Path, write: Callable[[Any], None], binary: bool = True) -> Path:
    """Write ``path`` atomically: ``write(fh)`` into a temporary file beside it (``.NAME.PID.XXXX.tmp``),
    fsync, ``os.replace``, fsync the folder. On any failure (disk full, interrupted) the temporary file
    is removed and ``path`` keeps its previous content; OSErrors become a ConfigError naming the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600 files; a written file gets the usual permissions
    except OSError as exc:
        raise StorageError(exc.errno, f"cannot write {path}: {exc.strerror or exc}; check the folder exists and is writable") from None
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            hint = "free some disk space" if exc.errno == 28 else "check permissions and free space"
            raise StorageError(exc.errno, f"cannot write {path}: {exc.strerror or exc}; {hint}") from None
        raise
    _fsync_dir(path.parent)
    return path


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically (:func:`atomic_write`)."""
    import torch

    atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write a text file atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(text), binary=False)


def atomic_write_bytes(data: bytes, path: str | Path) -> Path:
    """Write bytes atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(obj: Any, path: str | Path) -> Path:
    """Write indented JSON atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda fh: fh.write(json.dumps(obj, indent=2) + "\n"), binary=False)


# --------------------------------------------------------------------------------------------------
# checkpoints: the one writer and reader of both training loops (segmentor and DSP)
# --------------------------------------------------------------------------------------------------
CHECKPOINT_FORMAT = 1


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write a training checkpoint atomically (tensors and plain containers only: weights_only-loadable)."""
    atomic_save({"format": CHECKPOINT_FORMAT, **state}, path)
    return Path(path)


PICKLE_REFUSED = (
    "this file contains pickled Python objects, which npdg never loads (they can run code); convert it to "
    "tensors only — torch.save(model.state_dict(), PATH) in the program that made it, or "
    "safetensors.torch.save_file(state_dict, PATH.safetensors)"
)


class PickleRefused(NpdgError):
    """A torch file carried pickled Python objects (not only tensors) and was not loaded."""


def torch_load(path: str | Path, map_location: str | torch.device = "cpu", what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` with one clear NpdgError for every failure.

    A pickle that carries Python objects raises :class:`PickleRefused` ("refused to load PATH: this
    file contains pickled Python objects ...", never torch's boilerplate or "Unsupported operand
    149"); anything else unreadable says it is not a valid PyTorch file.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise NpdgError(f"{what} not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing them
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        with open(path, "rb") as fh:
            head = fh.read(2)
        low = str(exc).lower()
        # a raw pickle stream (protocol 2+), or a torch zip file whose pickle names blocked globals
        if head[:1] == b"\x80" or (head == b"PK" and ("unsupported global" in low or "unsupported operand" in low)):
            raise PickleRefused(f"refused to load {path}: {PICKLE_REFUSED}") from None
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NpdgError(f"cannot read {what} {path}: not a valid PyTorch file ({first})") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    required: dict[str, type | tuple[type, ...]] | None = None) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check its format before any field is read.

    ``required`` maps keys to the types their values must have; a file that is not an npdg
    checkpoint (a bare tensor, a dict without the keys, a wrong-typed field, a pickle) raises a clear
    NpdgError instead of a KeyError later.
    """
    path = Path(path)
    try:
        ckpt = torch_load(path, map_location, what="checkpoint")
    except PickleRefused:
        raise NpdgError(f"cannot read checkpoint {path}: refused: {PICKLE_REFUSED}") from None
    if not isinstance(ckpt, dict):
        raise NpdgError(f"{path} is not an npdg checkpoint (it holds a {type(ckpt).__name__}, not a dict)")
    for key, types_ in (required or {}).items():
        if key not in ckpt:
            raise NpdgError(f"{path} is not an npdg checkpoint of this kind: no '{key}' entry")
        value = ckpt[key]
        if not isinstance(value, types_) or (isinstance(value, bool) and types_ is int):
            raise NpdgError(f"{path} is not a valid npdg checkpoint: '{key}' is a {type(value).__name__}")
    return ckpt


def append_metrics(run: RunDir, record: dict[str, Any]) -> None:
    """Append one JSON line to ``metrics.jsonl``."""
    try:
        with open(run.metrics, "a") as fh:
            fh.write(json.dumps(record) + "\n")
    except OSError as exc:
        raise StorageError(exc.errno, f"cannot write {run.metrics}: {exc.strerror or exc}; check free space and permissions") from None


def read_metrics(path: str | Path) -> pd.DataFrame:
    """``metrics.jsonl`` as a DataFrame (empty if missing); malformed trailing lines are skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return pd.DataFrame(rows)


def truncate_metrics(run: RunDir, step: int) -> None:
    """Drop metric lines logged after ``step`` (they belong to iterations a resume will redo)."""
    if not run.metrics.is_file():
        return
    keep = []
    for line in run.metrics.read_text().splitlines():
        try:
            if int(json.loads(line).get("iter", 0)) <= step:
                keep.append(line)
        except (json.JSONDecodeError, ValueError, TypeError):
            continue
    atomic_write_text("".join(line + "\n" for line in keep), run.metrics)


# --------------------------------------------------------------------------------------------------
# RNG states as tensors (weights_only-loadable)
# --------------------------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """Torch CPU/CUDA, numpy and Python ``random`` states, as tensors and plain lists."""
    import torch

    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss": py_gauss,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    import torch

    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]), float(n["cached_gaussian"]))
    )
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# --------------------------------------------------------------------------------------------------
# listing runs
# --------------------------------------------------------------------------------------------------
RUN_COLUMNS = ["name", "mode", "arch", "encoder", "iters_done", "iters", "last_loss", "source_miou", "target_miou", "path"]


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, yaml.YAMLError):
        return {}


def _last_metric(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    last: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in rec:
            last = rec
    return last


def _eval_summary(run_root: Path) -> tuple[float | None, float | None]:
    """(source mIoU, mean target mIoU) from ``eval/final.json``, if the run was evaluated."""
    path = run_root / EVAL_DIR / "final.json"
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None, None
    summary = data.get("summary", {}) if isinstance(data, dict) else {}
    return summary.get("source_miou"), summary.get("mean_target_miou")


def list_runs(root: str | Path = "runs") -> pd.DataFrame:
    """One row per run directory under ``root`` (those with a ``config.yaml``), newest name first.

    Columns: name, mode, arch, encoder, iters_done, iters (configured), last_loss, source_miou,
    target_miou (mean over targets), path. Missing values are NaN/None (e.g. a run not evaluated yet).
    """
    root = Path(root)
    rows = []
    if root.is_dir():
        for d in sorted(p for p in root.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file()):
            cfg = _read_yaml(d / CONFIG_FILE)
            model, train = cfg.get("model", {}) or {}, cfg.get("train", {}) or {}
            last = _last_metric(d / METRICS_FILE)
            src, tgt = _eval_summary(d)
            rows.append(
                {
                    "name": d.name,
                    "mode": train.get("mode"),
                    "arch": model.get("arch"),
                    "encoder": model.get("encoder"),
                    "iters_done": int(last["iter"]) if "iter" in last else 0,
                    "iters": train.get("iters"),
                    "last_loss": last.get("loss"),
                    "source_miou": src,
                    "target_miou": tgt,
                    "path": str(d),
                }
            )
    return pd.DataFrame(rows, columns=RUN_COLUMNS)
