"""Small rendering pieces shared by pages (Streamlit-only; no engine logic here)."""

from __future__ import annotations

from collections.abc import Iterable

import streamlit as st

from npdg.service import device_info, is_busy
from npdg.service.data import CLASS_NAMES, class_color


def class_chips(train_ids: Iterable[int]) -> None:
    """A colour legend as inline chips: a swatch in the class colour and the class name."""
    chips = []
    for t in train_ids:
        r, g, b = class_color(t)
        text = "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"
        chips.append(
            f"<span style='background:rgb({r},{g},{b});color:{text};padding:2px 8px;"
            f"border-radius:10px;margin:2px;display:inline-block;font-size:0.85em'>{t} {CLASS_NAMES[t]}</span>"
        )
    st.markdown(" ".join(chips), unsafe_allow_html=True)


def device_badge() -> None:
    """Where the engine computes (GPU or CPU), and whether it is busy with another request."""
    info = device_info()
    busy = " · busy" if is_busy() else ""
    st.caption(f"{':material/bolt:' if info.kind == 'cuda' else ':material/computer:'} {info.label}{busy}")


def error_box(exc: Exception) -> None:
    """Show a user-facing error (never a traceback)."""
    st.error(f"{type(exc).__name__}: {exc}")


def lazy_tabs(tabs: dict, key: str = "tab") -> str:
    """Tabs bound to the URL (``?tab=``) of which only the open one is computed and drawn: a click on
    another tab reruns the page (``on_change="rerun"``). ``tabs`` maps each label to a function
    that renders its content; returns the open label."""
    labels = list(tabs)
    containers = st.tabs(labels, key=key, bind="query-params", on_change="rerun")
    active = st.session_state.get(key) or labels[0]
    for label, container in zip(labels, containers):
        with container:
            if label == active:
                tabs[label]()
    return active


def teaching_notes(text: str) -> None:
    """The page's "What am I looking at?" expander (markdown), the same on every page."""
    with st.expander("What am I looking at? (teaching notes)"):
        st.markdown(text)


#: At most this many drill-down links under a selection.
MAX_LINKS = 8


def selected_units(key: str, layer: str) -> list[int]:
    """Units picked (click, box or lasso) in the plotly scatter ``key`` while it showed ``layer``
    (points carry ``customdata = [unit, layer, ...]``, see :func:`app.figures.unit_scatter`)."""
    event = st.session_state.get(key) or {}
    points = (event.get("selection") or {}).get("points") or []
    units = []
    for pt in points:
        data = pt.get("customdata") if isinstance(pt, dict) else None
        if isinstance(data, list | tuple) and len(data) >= 2 and str(data[1]) == layer:
            units.append(int(data[0]))
    return sorted(set(units))


def unit_links(model_id: str, layer: str, units: list[int], hint: str, **extra: str) -> None:
    """Links to the Unit page for ``units`` of ``layer`` (at most :data:`MAX_LINKS`), or ``hint``."""
    from app import nav

    if not units:
        st.caption(hint)
        return
    shown = units[:MAX_LINKS]
    more = f", first {MAX_LINKS} linked" if len(units) > MAX_LINKS else ""
    st.markdown(f"**Selected units** ({len(units)}{more}) — open one in the drill-down (its maps in every domain, "
                "top patches, partners):")
    cols = st.columns(min(len(shown), 8))
    for i, u in enumerate(shown):
        cols[i % len(cols)].page_link(nav.page("unit"), label=f"unit {u}", icon=":material/biotech:",
                                      query_params=nav.unit_link(model_id, layer, u, **extra))
