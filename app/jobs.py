"""Following a background job (:mod:`npdg.service.jobs`) from a page without blocking it.

:func:`follow` shows a finished job as done, a failed one as an error with a retry button, and a
running one as ``st.status`` + progress inside a fragment that polls every half second — the rest
of the page (and every other widget) stays usable, and when the job finishes the whole page reruns
once to show the result. Another browser session asking for the same job follows the same worker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from npdg.service import jobs

POLL_SECONDS = 0.5


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


def follow(status: jobs.JobStatus | None, what: str, retry_key: str, *, unit: str = "steps",
           draw_partial: Callable[[Any], None] | None = None) -> bool:
    """Render ``status``; True when its result is ready. A failed job shows its error and a retry
    button (``retry_key``) that forgets it, so the next run submits it again. While it runs,
    ``draw_partial(partial)`` draws what the worker has so far (inside the polling fragment)."""
    if status is None:
        return False
    if status.state == "done":
        return True
    if status.state == "failed":
        st.error(f"{what} failed: {status.error}")
        if st.button("Retry", key=retry_key, help="Forget the failed job and start it again."):
            jobs.forget(status.key)
            st.rerun()
        return False
    _poll(status.key, what, unit, draw_partial)
    return False
