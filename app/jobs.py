"""Following a background job (:mod:`npdg.service.jobs`) from a page without blocking it.

:func:`follow` shows a finished job as done, a failed one as an error with a retry button, and a
running one as ``st.status`` + progress inside a fragment that polls every half second — the rest
of the page (and every other widget) stays usable, and when the job finishes the whole page reruns
once to show the result. Another browser session asking for the same job follows the same worker.
:func:`follow` with ``brief=True`` is the same for a job a widget starts and that takes about a second (the Prune
page's what-if): one progress line polled five times a second; :func:`lane` names this browser
session's lane, so its newer request supersedes its older one (:func:`npdg.service.jobs.submit`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import streamlit as st

from npdg.service import jobs

POLL_SECONDS = 0.5
#: How often :func:`follow` with ``brief=True`` looks (a what-if takes ~0.3–1.5 s on a 2-core CPU).
BRIEF_POLL_SECONDS = 0.2


@st.fragment(run_every=POLL_SECONDS)
def _poll(key: str, what: str, unit: str, draw_partial: Callable[[Any], None] | None) -> None:
    status = jobs.status(key)
    if status is None or status.state != "running":
        st.rerun(scope="app")
    with st.status(f"{what} — {status.label}", state="running", expanded=True):
        total = f"{status.done}/{status.total} {unit}" if status.total else "starting"
        st.progress(status.fraction, text=f"{total} · {status.elapsed:.1f} s (other widgets keep working; "
                                          "other sessions asking for the same result wait for this one)")
    found = jobs.partial(key) if draw_partial is not None else None
    if found is not None:
        draw_partial(found)


def follow(status: jobs.JobStatus | None, what: str, retry_key: str | None = None, *, unit: str = "steps",
           draw_partial: Callable[[Any], None] | None = None, brief: bool = False) -> bool:
    """Render ``status``; True when its result is ready. A failed job shows its error and, with a
    ``retry_key``, a retry button that forgets it, so the next run submits it again (without one,
    the next rerun does). While it runs, ``draw_partial(partial)`` draws what the worker has so far
    (inside the polling fragment). ``brief``: a short job a widget started (the Prune page's
    what-if) — one progress line polled every :data:`BRIEF_POLL_SECONDS` instead of a status box."""
    if status is None:
        return False
    if status.state == "done":
        return True
    if status.state == "failed":
        st.error(f"{what} failed: {status.error}")
        if retry_key is not None and st.button("Retry", key=retry_key, help="Forget the failed job and start it again."):
            jobs.forget(status.key)
            st.rerun()
        return False
    if brief:
        _poll_brief(status.key, what, unit)
    else:
        _poll(status.key, what, unit, draw_partial)
    return False


def lane(name: str) -> tuple[str, str]:
    """This browser session's lane ``name`` for :func:`npdg.service.jobs.submit`."""
    return name, st.session_state.setdefault("_npdg_lane", uuid.uuid4().hex)


@st.fragment(run_every=BRIEF_POLL_SECONDS)
def _poll_brief(key: str, what: str, unit: str) -> None:
    status = jobs.status(key)
    if status is None or status.state != "running":
        st.rerun(scope="app")
    done = f"{status.done}/{status.total} {unit}" if status.total else "starting"
    st.progress(status.fraction, text=f"{what}: {done} · {status.elapsed:.1f} s (the widgets keep working)")
