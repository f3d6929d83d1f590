"""Long dashboard work in background threads, shared between browser sessions and persisted.

A page asks for a result by its settings (:func:`submit`); the first request starts ONE worker
thread, and every later request with the same settings — from this or another browser session —
gets the same job back and waits for it instead of computing again. A finished result is written
(atomically) to the dashboard's git-ignored cache folder (:func:`cache_dir`) under a key made of
every setting, so it survives a restart; zoo assets are never written to.

Pages poll :func:`status` (a frozen :class:`JobStatus`: state, progress, elapsed seconds, error)
and read :func:`result` when it is done, so widgets keep working while a job runs. The compute
function gets a ``progress(done, total, partial=None)`` callback — ``partial``, when given, is what
it has so far, for pages that fill a figure in progressively (:func:`partial`) — and takes
:func:`npdg.service.engine` itself where it touches a shared model.

A request made in a ``lane`` (e.g. one browser session's what-if) supersedes that lane's earlier
request: a job every asker of which has moved on raises :class:`Superseded` at its next
:func:`wanted` check (before it takes the engine), so a slider dragged over five positions computes
the one it stopped at, not all five in turn (docs/dashboard.md §4).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import pandas as pd

from npdg.runs import atomic_write

T = TypeVar("T")
ProgressFn = Callable[[int, int], None]
#: Environment variable that moves the cache folder (default: ``.cache/dashboard`` in the repository).
CACHE_ENV = "NPDG_CACHE"
_REPO = Path(__file__).resolve().parents[2]
STATES = ("running", "done", "failed", "superseded")


class Superseded(Exception):
    """Raised by a job's compute function when :func:`wanted` says nobody waits for it any more."""


def cache_dir() -> Path:
    """The folder where finished results are persisted (``$NPDG_CACHE`` or ``<repo>/.cache/dashboard``)."""
    return Path(os.environ.get(CACHE_ENV) or _REPO / ".cache" / "dashboard")


@dataclass(frozen=True)
class Store(Generic[T]):
    """How one kind of result is persisted: a file ``suffix`` and ``save(obj, path)`` / ``load(path)``."""

    name: str
    suffix: str
    save: Callable[[T, Path], Any]
    load: Callable[[Path], T]

    def path(self, key: str) -> Path:
        return cache_dir() / self.name / f"{key}{self.suffix}"


def _save_frame(frame: pd.DataFrame, path: Path) -> None:
    atomic_write(path, lambda fh: frame.to_csv(fh, index=False), binary=False)


#: A tidy DataFrame persisted as CSV.
FRAME_STORE = Store("frames", ".csv", _save_frame, lambda p: pd.read_csv(p))


def job_key(parts: Hashable) -> str:
    """A short stable key for a tuple of settings (SHA-1 of its ``repr``)."""
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:20]


@dataclass
class _Job:
    key: str
    label: str
    state: str = "running"
    done: int = 0
    total: int = 0
    result: Any = None
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    from_disk: bool = False
    partial: Any = None  # what the worker has so far (optional; see ``progress``)
    cancellable: bool = True  # every asker asked in a lane (see :func:`wanted`)
    event: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class JobStatus:
    """What a page shows about a job: ``state`` (running, done, failed), progress, seconds, error."""

    key: str
    label: str
    state: str
    done: int
    total: int
    elapsed: float
    error: str | None
    from_disk: bool

    @property
    def fraction(self) -> float:
        """Progress in [0, 1] (0 while the total is unknown)."""
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0


_JOBS: dict[str, _Job] = {}
_LANES: dict[Hashable, str] = {}  # lane → the key of its latest request (most recently asked last)
#: Lanes remembered at most (one per browser session and page): the least recently used is dropped.
MAX_LANES = 1024
_LOCK = threading.Lock()


def _status(job: _Job) -> JobStatus:
    end = job.finished if job.finished is not None else time.monotonic()
    return JobStatus(job.key, job.label, job.state, job.done, job.total, end - job.started, job.error, job.from_disk)


def _run(job: _Job, compute: Callable[[ProgressFn], Any], store: Store | None) -> None:
    def progress(done: int, total: int, partial: Any = None) -> None:
        job.done, job.total = int(done), int(total)
        if partial is not None:
            job.partial = partial

    try:
        value = compute(progress)
        if store is not None:
            store.save(value, store.path(job.key))
            _write_settings(store, job)
        job.result, job.state = value, "done"
    except Superseded:  # nobody waits for it: forgotten, so a later request starts it again
        job.state = "superseded"
        with _LOCK:
            if _JOBS.get(job.key) is job:
                del _JOBS[job.key]
    except Exception as exc:  # shown in the page; never kills the server
        job.error, job.state = f"{type(exc).__name__}: {exc}", "failed"
    finally:
        job.finished = time.monotonic()
        job.event.set()


def _write_settings(store: Store, job: _Job) -> None:
    """A small ``<key>.json`` next to a persisted result saying what it is (for humans and cleanup)."""
    from npdg.runs import atomic_write_text

    atomic_write_text(json.dumps({"label": job.label, "key": job.key, "written_by": "npdg dashboard"}) + "\n",
                      store.path(job.key).with_suffix(".job.json"))


def _from_disk(key: str, label: str, store: Store | None) -> _Job | None:
    if store is None or not store.path(key).is_file():
        return None
    try:
        value = store.load(store.path(key))
    except Exception:  # an unreadable cache file is recomputed (and replaced atomically)
        return None
    job = _Job(key, label, state="done", done=1, total=1, result=value, from_disk=True)
    job.finished = job.started
    job.event.set()
    return job


def submit(parts: Hashable, compute: Callable[[ProgressFn], T], *, label: str, store: Store | None = None,
           lane: Hashable | None = None) -> JobStatus:
    """The job for settings ``parts``: the running or finished one if any session already asked,
    else the persisted result, else a new worker thread running ``compute(progress)``. A failed or
    superseded job is started again by a new submit. ``lane``: this request supersedes the lane's
    earlier one (:func:`wanted`); without a lane the job is never superseded."""
    key = job_key(parts)
    with _LOCK:
        if lane is not None:
            _LANES.pop(lane, None)
            _LANES[lane] = key
            while len(_LANES) > MAX_LANES:
                del _LANES[next(iter(_LANES))]
        job = _JOBS.get(key)
        if job is not None and job.state not in ("failed", "superseded"):
            job.cancellable = job.cancellable and lane is not None
            return _status(job)
        job = _from_disk(key, label, store)
        if job is None:
            job = _Job(key, label, cancellable=lane is not None)
            threading.Thread(target=_run, args=(job, compute, store), name=f"npdg-job-{key}", daemon=True).start()
        _JOBS[key] = job
        return _status(job)


def wanted(key: str) -> bool:
    """Whether anyone still waits for job ``key``: it was asked for without a lane, or it is some
    lane's latest request. A compute function checks this before its expensive part and raises
    :class:`Superseded` when it is False."""
    with _LOCK:
        job = _JOBS.get(key)
        return job is None or not job.cancellable or key in _LANES.values()


def preset(parts: Hashable, value: Any, *, label: str) -> JobStatus:
    """Register an already finished result for ``parts`` (e.g. one shipped with a zoo model), so
    :func:`submit`, :func:`lookup` and :func:`result` hand it out like a computed one."""
    key = job_key(parts)
    with _LOCK:
        job = _JOBS.get(key)
        if job is None or job.state != "done":
            job = _Job(key, label, state="done", done=1, total=1, result=value, from_disk=True)
            job.finished = job.started
            job.event.set()
            _JOBS[key] = job
        return _status(job)


def lookup(parts: Hashable, store: Store | None = None, label: str = "") -> JobStatus | None:
    """The job for ``parts`` if one was submitted or its result persisted; never starts one."""
    key = job_key(parts)
    with _LOCK:
        job = _JOBS.get(key)
        if job is None:
            job = _from_disk(key, label, store)
            if job is not None:
                _JOBS[key] = job
        return None if job is None else _status(job)


def status(key: str) -> JobStatus | None:
    """The current status of job ``key`` (None if unknown)."""
    with _LOCK:
        job = _JOBS.get(key)
    return None if job is None else _status(job)


def result(key: str) -> Any:
    """The result of a finished job (callers copy before changing it); None while running or failed."""
    with _LOCK:
        job = _JOBS.get(key)
    return job.result if job is not None and job.state == "done" else None


def partial(key: str) -> Any:
    """What a running job's worker reported so far (``progress(done, total, partial)``), or None —
    pages draw it while the job fills in (callers copy before changing it)."""
    with _LOCK:
        job = _JOBS.get(key)
    return None if job is None else job.partial


def wait(key: str, timeout: float | None = None) -> JobStatus | None:
    """Block until job ``key`` finishes (or ``timeout`` seconds pass); its status."""
    with _LOCK:
        job = _JOBS.get(key)
    if job is None:
        return None
    job.event.wait(timeout)
    return _status(job)


def wait_all(timeout: float | None = None) -> None:
    """Block until every job submitted so far has finished (tests and benchmarks)."""
    with _LOCK:
        jobs = list(_JOBS.values())
    deadline = None if timeout is None else time.monotonic() + timeout
    for job in jobs:
        job.event.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))


def forget(key: str | None = None) -> None:
    """Drop job ``key`` (or every finished job) from memory; persisted files stay."""
    with _LOCK:
        if key is not None:
            _JOBS.pop(key, None)
        else:
            for k in [k for k, j in _JOBS.items() if j.state != "running"]:
                del _JOBS[k]


__all__ = ["CACHE_ENV", "FRAME_STORE", "JobStatus", "STATES", "Store", "Superseded", "cache_dir", "forget", "job_key",
           "lookup", "partial", "preset", "result", "status", "submit", "wait", "wait_all", "wanted"]
