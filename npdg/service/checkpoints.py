"""Your own models on the dashboard: uploaded checkpoints and run folders (docs/dashboard.md).

:func:`store_checkpoint` takes the bytes of an npdg model file (``.safetensors`` as ``npdg train``
writes it, fp32 or fp16) and optionally its ``pruning_plan.json``; it refuses pickles and anything
that is not an npdg model, *loads* the model once on the CPU (strict: every tensor name and shape
must fit the architecture the file names, a plan must fit it too), and only then stores it under its
content hash in the git-ignored dashboard cache (``$NPDG_CACHE/models/<sha256[:16]>/``), written
into a temporary folder and renamed into place. The stored models together stay under a size cap
(:data:`CAP_ENV`, default :data:`DEFAULT_CAP_MB`): the least recently used go first, and only folders
carrying npdg's :data:`MARKER` are ever deleted. Model ids are ``up:<hash>`` and survive a restart.

:func:`run_folder` checks a folder the user points at (``run:PATH`` in the URL): a directory with a
readable npdg ``model.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from npdg.errors import ConfigError, DataError, NpdgError
from npdg.models.store import MODEL_FILENAME, PLAN_FILENAME
from npdg.runs import PICKLE_REFUSED

#: Largest checkpoint the uploader takes (MB); .streamlit/config.toml's maxUploadSize matches it.
MAX_CHECKPOINT_MB = 200
#: Environment variable with the cap (MB) on all stored uploads together.
CAP_ENV = "NPDG_UPLOAD_CAP_MB"
DEFAULT_CAP_MB = 1000
#: The file that marks a folder as npdg's own upload (the only folders eviction may delete).
MARKER = ".npdg-upload"
ID_PREFIX = "up:"
_DIGEST = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class StoredModel:
    """One uploaded model: its id (``up:<hash>``), folder, the name it was uploaded as, what it is."""

    id: str
    path: Path
    name: str
    spec: str  # "deeplabv3plus/resnet18, 19 classes"
    pruned: bool
    size_bytes: int
    stored_at: float


def uploads_root() -> Path:
    """``$NPDG_CACHE/models`` (the dashboard cache's folder for uploaded models)."""
    from npdg.service.jobs import cache_dir

    return cache_dir() / "models"


def cap_bytes() -> int:
    """The size cap on stored uploads from :data:`CAP_ENV` (MB), validated."""
    raw = os.environ.get(CAP_ENV, str(DEFAULT_CAP_MB))
    try:
        mb = float(raw)
    except ValueError:
        raise ConfigError(f"{CAP_ENV} must be a number of MB, got {raw!r}") from None
    if not (mb > 0 and mb < 1e7):
        raise ConfigError(f"{CAP_ENV} must be a positive number of MB, got {raw!r}")
    return int(mb * 1e6)


def _refuse_non_safetensors(data: bytes, name: str) -> None:
    """Pickles and zip checkpoints are refused by their first bytes, whatever their name says."""
    if data[:1] == b"\x80" or name.lower().endswith((".pkl", ".pickle")):
        raise DataError(f"{name} is a pickle: {PICKLE_REFUSED}")
    if data[:2] == b"PK" or name.lower().endswith((".pt", ".pth", ".ckpt", ".bin")):
        raise DataError(f"{name} is a PyTorch (pickle-based) checkpoint; npdg loads only .safetensors model files "
                        f"— {PICKLE_REFUSED}")
    if len(data) < 8:
        raise DataError(f"{name} is not a safetensors file (only {len(data)} bytes)")
    header = int.from_bytes(data[:8], "little")
    if not (2 <= header <= min(len(data) - 8, 100_000_000)) or data[8:9] != b"{":
        raise DataError(f"{name} is not a safetensors file (no safetensors header)")


def _validate(folder: Path) -> tuple[str, bool]:
    """Load the stored model once (strict); (spec text, pruned?) or DataError with the reason."""
    from npdg.models.store import read_model_meta, spec_from_meta
    from npdg.pruning.physical import load_model

    try:
        meta = read_model_meta(folder)
        spec = spec_from_meta(meta, folder / MODEL_FILENAME)
        load_model(folder, device="cpu")
    except NpdgError as exc:
        raise DataError(str(exc).replace(str(folder / MODEL_FILENAME), "the checkpoint").replace(str(folder), "the upload")) from None
    except Exception as exc:  # a file safetensors reads but torch cannot use
        raise DataError(f"the checkpoint does not load: {type(exc).__name__}: {exc}") from None
    return f"{spec.arch}/{spec.encoder}, {spec.num_classes} classes", (folder / PLAN_FILENAME).is_file()


def store_checkpoint(data: bytes, name: str, plan: bytes | None = None, plan_name: str = PLAN_FILENAME) -> StoredModel:
    """Check, load once and store an uploaded model (and its plan); the same bytes give the same id.

    Raises :class:`DataError` with the reason for a pickle, a file that is not an npdg model, weights
    that do not fit the architecture, or a plan that is not valid JSON or does not fit; nothing is
    stored then.
    """
    if len(data) > MAX_CHECKPOINT_MB * 1_000_000:
        raise DataError(f"{name} is {len(data) / 1e6:.0f} MB; the limit is {MAX_CHECKPOINT_MB} MB")
    _refuse_non_safetensors(data, name)
    if plan is not None:
        try:
            json.loads(plan.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"{plan_name} is not a JSON pruning plan ({exc})") from None
    digest = hashlib.sha256(data + b"\0plan\0" + (plan or b"")).hexdigest()[:16]
    root = uploads_root()
    folder = root / digest
    if (folder / MARKER).is_file():
        os.utime(folder / MARKER)  # used again: the last to be evicted
        return _stored(folder)
    tmp = root / f".{digest}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    try:
        tmp.mkdir(parents=True)
        (tmp / MODEL_FILENAME).write_bytes(data)
        if plan is not None:
            (tmp / PLAN_FILENAME).write_bytes(plan)
        spec, pruned = _validate(tmp)
        info = {"name": Path(name).name, "spec": spec, "pruned": pruned, "bytes": len(data) + len(plan or b""),
                "stored_at": time.time()}
        (tmp / MARKER).write_text(json.dumps(info))
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / MARKER).is_file():  # another session stored the same bytes meanwhile: keep theirs
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    evict(keep=digest)
    return _stored(folder)


def _stored(folder: Path) -> StoredModel:
    info = json.loads((folder / MARKER).read_text())
    return StoredModel(ID_PREFIX + folder.name, folder, str(info.get("name", folder.name)), str(info.get("spec", "")),
                       bool(info.get("pruned", False)), int(info.get("bytes", 0)), (folder / MARKER).stat().st_mtime)


def stored_models() -> list[StoredModel]:
    """Every stored upload, most recently used first (folders without npdg's marker are ignored)."""
    root = uploads_root()
    if not root.is_dir():
        return []
    out = []
    for folder in root.iterdir():
        if _DIGEST.match(folder.name) and (folder / MARKER).is_file():
            try:
                out.append(_stored(folder))
            except (OSError, ValueError):
                continue
    return sorted(out, key=lambda m: m.stored_at, reverse=True)


def stored_path(model_id: str) -> Path:
    """The folder of ``up:<hash>``; DataError for a malformed or unknown id."""
    digest = model_id[len(ID_PREFIX):] if model_id.startswith(ID_PREFIX) else model_id
    if not _DIGEST.match(digest):
        raise DataError(f"{model_id!r} is not an uploaded-model id (up: and 16 hex digits)")
    folder = uploads_root() / digest
    if not (folder / MARKER).is_file():
        raise DataError(f"no uploaded model {model_id!r} here (evicted, or uploaded on another machine): upload it again")
    return folder


def evict(keep: str | None = None) -> list[str]:
    """Delete the least recently used uploads until the rest fit the cap; returns the deleted ids."""
    cap = cap_bytes()
    models = stored_models()
    total = sum(m.size_bytes for m in models)
    gone = []
    for m in reversed(models):  # oldest first
        if total <= cap:
            break
        if m.path.name == keep or not (m.path / MARKER).is_file():
            continue
        shutil.rmtree(m.path, ignore_errors=True)
        total -= m.size_bytes
        gone.append(m.id)
    return gone


def run_folder(path: str | Path) -> Path:
    """A folder the user points at, checked: a directory with a readable npdg ``model.safetensors``."""
    from npdg.models.store import read_model_meta

    text = str(path).strip()
    if not text:
        raise DataError("give the path of a run folder (the folder that holds model.safetensors)")
    folder = Path(text).expanduser()
    if folder.is_file() and folder.name == MODEL_FILENAME:
        folder = folder.parent
    if not folder.is_dir():
        raise DataError(f"{text}: no such folder")
    if not (folder / MODEL_FILENAME).is_file():
        raise DataError(f"{text}: no {MODEL_FILENAME} in this folder (is it an npdg run?)")
    read_model_meta(folder)
    return folder.resolve()


__all__ = ["CAP_ENV", "DEFAULT_CAP_MB", "ID_PREFIX", "MARKER", "MAX_CHECKPOINT_MB", "StoredModel", "cap_bytes", "evict",
           "run_folder", "store_checkpoint", "stored_models", "stored_path", "uploads_root"]
