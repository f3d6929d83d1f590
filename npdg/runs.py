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

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from npdg.errors import ConfigError, NpdgError

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


def prepare_run_dir(path: str | Path, resume: bool = False, overwrite: bool = False) -> RunDir:
    """Create (or reopen) a run directory.

    An existing non-empty directory is refused unless ``resume`` (continue from its last checkpoint)
    or ``overwrite`` (delete it first) is given, so a second run never mixes its metrics and
    checkpoints into the first one's.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite cannot be used together")
    run = RunDir(Path(path))
    exists = run.root.exists() and any(run.root.iterdir())
    if resume:
        if not run.last_checkpoint.is_file():
            raise ConfigError(f"cannot resume: no checkpoint at {run.last_checkpoint}")
    elif exists:
        if not overwrite:
            raise ConfigError(
                f"run directory {run.root} already exists; pass --resume to continue it or --overwrite to replace it"
            )
        shutil.rmtree(run.root)
    for d in (run.root, run.checkpoints, run.eval):
        d.mkdir(parents=True, exist_ok=True)
    return run


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


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync it, then ``os.replace``.

    If anything fails (disk full, interrupted) the temporary file is removed and ``path`` still holds
    its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write a text file atomically (same scheme as :func:`atomic_save`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; unreadable files raise a clear NpdgError."""
    path = Path(path)
    if not path.is_file():
        raise NpdgError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not a usable checkpoint
        raise NpdgError(f"cannot read checkpoint {path}: {exc}") from None


def append_metrics(run: RunDir, record: dict[str, Any]) -> None:
    """Append one JSON line to ``metrics.jsonl``."""
    with open(run.metrics, "a") as fh:
        fh.write(json.dumps(record) + "\n")


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
