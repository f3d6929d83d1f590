"""The model panel in the sidebar: pick a shipped zoo model or a local run (``?m=`` in the URL).

Pages call :func:`model_panel` once; it returns the chosen model's id, folder and card summary (or
None when nothing can be loaded, with a message in the sidebar instead of a traceback).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from npdg.service import zoo

#: The model every page starts from on a fresh clone.
DEFAULT_MODEL = "zoo:r18-erm"


@dataclass(frozen=True)
class ModelChoice:
    """The model a page works on: ``id`` (``zoo:NAME`` or ``run:PATH``), its folder and a one-line summary."""

    id: str
    path: Path
    label: str
    summary: str


def model_options() -> dict[str, tuple[str, str]]:
    """id → (label, summary) of every loadable model: shipped zoo entries first, then local runs
    (problems reading the zoo are shown in the sidebar)."""
    out: dict[str, tuple[str, str]] = {}
    listing = zoo.zoo_models()
    for r in listing.table.itertuples():
        if getattr(r, "shipped", False):
            summary = f"{r.what}. Source {100 * r.source:.1f}, held-out {100 * r.heldout:.1f} mIoU (card)."
            out[f"zoo:{r.name}"] = (f"{r.name} (zoo)", summary)
    for problem in listing.problems:
        st.sidebar.warning(problem)
    runs = zoo.local_runs()
    for r in runs.itertuples():
        out[f"run:{r.path}"] = (f"{r.name} (runs/)", f"local run: {r.mode} {r.arch}/{r.encoder}")
    return out


def model_path(model_id: str) -> Path:
    """The folder of a model id (``zoo:NAME`` or ``run:PATH``)."""
    kind, _, rest = model_id.partition(":")
    return zoo.zoo_model_path(rest) if kind == "zoo" else Path(rest)


def model_panel(default: str | None = None) -> ModelChoice | None:
    """Render the panel; return the chosen model (None, with a message, when there is none).
    ``default``: this page's starting model when the URL names none (else :data:`DEFAULT_MODEL`)."""
    options = model_options()
    if not options:
        st.sidebar.info("No model yet: build the zoo (`make zoo`) or train one (`python -m npdg train ...`).")
        return None
    ids = list(options)
    wanted = [m for m in (default, DEFAULT_MODEL) if m is not None and m in options]
    default = wanted[0] if wanted else ids[0]
    choice = st.sidebar.selectbox(
        "Model", ids, index=ids.index(default), key="m", bind="query-params",
        help="A shipped zoo model (`zoo:NAME`, assets/zoo, see assets/README.md) or a run under runs/ with a "
             "model.safetensors (`run:PATH`). The id is what the URL holds (`?m=zoo:r18-dsp`).",
    )
    label, summary = options[choice]
    st.sidebar.caption(summary)
    return ModelChoice(choice, model_path(choice), label, summary)
