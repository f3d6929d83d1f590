"""Dashboard entry point: ``streamlit run app/main.py`` (or ``make app``).

Sets up the page, puts the repository root on ``sys.path`` (so pages can import ``app`` and
``npdg`` from a plain checkout) and declares the navigation. Each page is a short script in
``pages/`` that wires widgets to :mod:`npdg.service` (one module per page) and renders.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import components, state  # noqa: E402
from app import nav as nav_pages  # noqa: E402
from npdg.service import datasets  # noqa: E402


def _arguments() -> None:
    """``streamlit run app/main.py -- --datasets NAME:ROOT [...]`` (``make app ARGS=...``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="app/main.py", add_help=False)
    parser.add_argument("--datasets", nargs="*", default=[], metavar="NAME:ROOT")
    known, _ = parser.parse_known_args(sys.argv[1:])
    datasets.add_configured(known.datasets)


_arguments()
state.guard_int_inputs()  # ?scene=inf must not crash a page (see app/state.py)

st.set_page_config(page_title="npdg — NPDG dashboard", page_icon="🪨", layout="wide")

PAGES = nav_pages.navigation_pages()

nav = st.navigation(PAGES)
with st.sidebar:
    st.caption(
        "**npdg** — NPDG (Luo, Liu & Yang, IJCV 2024): find the filters that break under domain "
        "shift, prune them, and generalize better with a cheaper model."
    )
    components.device_badge()
nav.run()
