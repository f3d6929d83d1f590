"""The facade the dashboard calls: one cached module per page, plain-Python results.

Pages never reach into the engine directly; they call these modules, which return frozen
dataclasses (numpy arrays read-only) or fresh DataFrames, cache what reruns would recompute, and
never hand out an object that a caller could mutate for everyone:

* :mod:`npdg.service.data` — synthetic scenes in many domains, class shares, overlays;
* :mod:`npdg.service.styles` — DSP styles of a scene or an uploaded image: random, ascended, traversed;
* :mod:`npdg.service.sensitivity` — sensitivity tables: load, probe (DSP or held-out renderings), re-mix λ;
* :mod:`npdg.service.pruning` — plans from a criterion, their cost, soft-masked predictions and mIoU;
* :mod:`npdg.service.compare` — models evaluated on named synthetic domains, per-scene error maps;
* :mod:`npdg.service.explain` — activation atlases of one unit layer;
* :mod:`npdg.service.checkpoints` — your own models: uploaded checkpoints and run folders;
* :mod:`npdg.service.uploads` — your own images and labels.

:class:`NpdgError` is re-exported: the one exception type whose message pages show as it is.

This module holds what they share: ONE engine lock (:data:`ENGINE_LOCK`, re-entrant) that every
function adding hooks to a shared model or using the accelerator takes (:func:`engine`), a busy flag
for the UI (:func:`is_busy`), the device badge (:func:`device_info`), a small LRU cache keyed by
every setting (:class:`LRU`) and the shared, read-only model and DSP loaders. npdg never imports
streamlit; the caches are plain Python.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from npdg.errors import NpdgError

T = TypeVar("T")

#: The one lock around the engine: model forwards, hooks, ascent, probes, evaluation.
ENGINE_LOCK = threading.RLock()
_busy_lock = threading.Lock()
_busy = 0


@contextmanager
def engine() -> Iterator[None]:
    """Hold the engine lock (re-entrant) and mark the engine busy for the duration."""
    global _busy
    with ENGINE_LOCK:
        with _busy_lock:
            _busy += 1
        try:
            yield
        finally:
            with _busy_lock:
                _busy -= 1


def is_busy() -> bool:
    """Whether some thread is inside :func:`engine` right now (for a "working…" badge)."""
    with _busy_lock:
        return _busy > 0


@dataclass(frozen=True)
class DeviceInfo:
    """Where the engine computes: ``kind`` ``cuda`` or ``cpu``, a device string and a badge label."""

    kind: str
    device: str
    name: str
    label: str
    memory_gb: float | None = None


def _no_gpu_driver() -> bool:
    """True when torch cannot see a GPU here, decided without importing torch: no NVIDIA driver
    (``/proc/driver/nvidia``, ``/dev/nvidiactl``, WSL's ``/dev/dxg``) or ``CUDA_VISIBLE_DEVICES``
    hides every device."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return True
    return not any(Path(p).exists() for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg"))


def device_info() -> DeviceInfo:
    """CUDA when available, else the CPU (the services load models there).

    Before torch is imported on a machine without a GPU driver, the CPU is named without its thread
    count: the badge on the first page then costs no torch import, about 2 s of the dashboard's cold
    start on a 2-core CPU (docs/dashboard.md §4). The full answer is cached once torch is loaded."""
    if "torch" not in sys.modules and _no_gpu_driver():
        return DeviceInfo("cpu", "cpu", "CPU", "CPU")
    return _device_info()


@lru_cache(maxsize=1)
def _device_info() -> DeviceInfo:
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        mem = round(props.total_memory / 2**30, 1)
        return DeviceInfo("cuda", "cuda:0", props.name, f"GPU · {props.name} ({mem:g} GiB)", mem)
    threads = torch.get_num_threads()
    return DeviceInfo("cpu", "cpu", "CPU", f"CPU · {threads} thread{'s' if threads != 1 else ''}")


def engine_device():
    """The ``torch.device`` of :func:`device_info`."""
    import torch

    return torch.device(device_info().device)


# ==================================================================================================
# caching helpers
# ==================================================================================================
class LRU:
    """A small thread-safe least-recently-used cache: ``get(key, compute)``.

    The value is computed outside the cache's own lock (callers take :func:`engine` where needed),
    so a cache hit never waits for a running computation. With ``single_flight``, a second caller
    asking for a key that another thread is computing waits for that result instead of computing
    it again (for caches whose ``compute`` takes the engine lock itself and is never called while
    holding it: a waiter holding the lock would deadlock the computing thread).
    """

    def __init__(self, maxsize: int = 64, single_flight: bool = False) -> None:
        self.maxsize = int(maxsize)
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._flights: dict[Hashable, threading.Event] | None = {} if single_flight else None

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def _store(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            flight = None if self._flights is None else self._flights.get(key)
            own = self._flights is not None and flight is None
            if own:
                flight = self._flights[key] = threading.Event()
        if flight is not None and not own:
            flight.wait()
            with self._lock:
                if key in self._data:
                    return self._data[key]
            return self.get(key, compute)  # the other computation failed: try ourselves
        try:
            value = compute()
            self._store(key, value)
            return value
        finally:
            if own:
                with self._lock:
                    self._flights.pop(key, None)
                flight.set()

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)


_CACHES: list[LRU] = []


def lru(maxsize: int = 64, single_flight: bool = False) -> LRU:
    """A new :class:`LRU` that :func:`clear_caches` also empties."""
    cache = LRU(maxsize, single_flight)
    _CACHES.append(cache)
    return cache


def clear_caches() -> None:
    """Forget every cached result, model and DSP (e.g. after files changed on disk)."""
    for cache in _CACHES:
        cache.clear()
    _load_model.cache_clear()
    _load_dsp.cache_clear()


def readonly(a: np.ndarray) -> np.ndarray:
    """``a`` marked read-only (in place) and returned."""
    a.setflags(write=False)
    return a


def check_images(images, what: str = "images") -> np.ndarray:
    """``images`` as a uint8 array ``[N, H, W, 3]`` (one ``[H, W, 3]`` image becomes N = 1);
    ConfigError naming the shape and dtype otherwise."""
    from npdg.errors import ConfigError

    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ConfigError(f"{what} must be uint8 [H, W, 3] or [N, H, W, 3], got {arr.dtype} {list(np.shape(images))}")
    return arr


def image_batch(images):
    """uint8 ``[H, W, 3]`` / ``[N, H, W, 3]`` images (checked) → a new float tensor ``[N, 3, H, W]``
    in [0, 1], the models' input (the arrays may be read-only: they are copied)."""
    import torch

    return torch.from_numpy(np.array(check_images(images))).permute(0, 3, 1, 2).float().div_(255.0)


def array_key(a: np.ndarray) -> tuple:
    """A cache key for an array's content: shape, dtype and a SHA-1 of its bytes."""
    a = np.ascontiguousarray(a)
    return (a.shape, str(a.dtype), hashlib.sha1(a.tobytes()).hexdigest())


def file_key(path: str | Path) -> tuple:
    """A cache key for a file or folder: resolved path plus size and mtime of the file(s) that matter."""
    p = Path(path).resolve()
    parts: list[tuple] = []
    files = [p] if p.is_file() else sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else []
    for f in files:
        st = f.stat()
        parts.append((f.name, st.st_size, st.st_mtime_ns))
    return (str(p), tuple(parts))


# ==================================================================================================
# shared, read-only models
# ==================================================================================================
def _model_files_key(path: str | Path) -> tuple:
    from npdg.models.store import PLAN_FILENAME, resolve_model_path

    f = resolve_model_path(path)
    plan = f.parent / PLAN_FILENAME
    return file_key(f) + (file_key(plan) if plan.is_file() else ())


@lru_cache(maxsize=4)
def _load_model(key: tuple, path: str, device: str):
    import torch

    from npdg.pruning.physical import load_model

    with engine():
        # parameters keep requires_grad: torch-pruning traces coupling groups through autograd.
        # channels-last memory: convolutions run about twice as fast on CPUs (and on GPUs with AMP)
        return load_model(path, device=device).eval().to(memory_format=torch.channels_last)


def shared_model(path: str | Path):
    """The model at ``path`` (file or run folder; pruned runs included), loaded once per file
    version onto :func:`engine_device`, in eval mode.

    Shared by every session: service code uses it only under :func:`engine` and never writes to
    it (soft masks go through ``torch.func.functional_call``). Not for pages.
    """
    from npdg.models.store import resolve_model_path

    return _load_model(_model_files_key(path), str(resolve_model_path(path)), device_info().device)


def model_key(path: str | Path) -> tuple:
    """The cache key of a model file version (use it in result caches)."""
    return _model_files_key(path)


@lru_cache(maxsize=4)
def _load_dsp(key: tuple, path: str, device: str):
    from npdg.dsp.model import DSP

    with engine():
        return DSP.load(path, device=device)


def shared_dsp(path: str | Path):
    """The DSP folder at ``path``, loaded once per version onto :func:`engine_device` (frozen)."""
    return _load_dsp(file_key(path), str(Path(path).resolve()), device_info().device)


__all__ = [
    "DeviceInfo", "ENGINE_LOCK", "LRU", "NpdgError", "array_key", "check_images", "image_batch", "clear_caches", "device_info", "engine", "engine_device",
    "file_key", "is_busy", "lru", "model_key", "readonly", "shared_dsp", "shared_model",
]
