"""The model panel in the sidebar: pick a shipped zoo model, a local run, or your own model (``?m=``).

Pages call :func:`model_panel` once; it returns the chosen model's id, folder and card summary (or
None when nothing can be loaded, with a message in the sidebar instead of a traceback). Ids:
``zoo:NAME``, ``run:PATH`` (runs/ and any run folder you point at) and ``up:HASH`` (a checkpoint you
uploaded, stored under its content hash by :mod:`npdg.service.checkpoints`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from app.components import error_box
from npdg.service import NpdgError, checkpoints, zoo

#: The model every page starts from on a fresh clone.
DEFAULT_MODEL = "zoo:r18-erm"


@dataclass(frozen=True)
class ModelChoice:
    """The model a page works on: ``id`` (``zoo:NAME`` or ``run:PATH``), its folder and a one-line summary."""

    id: str
    path: Path
    label: str
    summary: str


RUN_FOLDERS = "_run_folders"  # session state: run folders this session pointed at


def _pointed_runs() -> list[Path]:
    """Run folders of this session, and a ``?m=run:PATH`` link's folder if it checks out."""
    folders = [Path(p) for p in st.session_state.get(RUN_FOLDERS, [])]
    linked = st.query_params.get("m", "")
    if linked.startswith("run:"):
        with contextlib.suppress(NpdgError):  # a bad link: the selectbox falls back to the default
            folders.append(checkpoints.run_folder(linked[4:]))
    return folders


def model_options() -> dict[str, tuple[str, str]]:
    """id → (label, summary) of every loadable model: shipped zoo entries, local runs, run folders
    this session pointed at, uploaded checkpoints (problems reading the zoo go to the sidebar)."""
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
    for folder in _pointed_runs():
        out.setdefault(f"run:{folder}", (f"{folder.name} (folder)", f"run folder {folder}"))
    for m in checkpoints.stored_models():
        out[m.id] = (f"{m.name} (upload)", f"your upload: {m.spec}{', physically pruned' if m.pruned else ''} "
                                          f"({m.size_bytes / 1e6:.1f} MB, stored as {m.id})")
    return out


def model_path(model_id: str) -> Path:
    """The folder of a model id (``zoo:NAME``, ``run:PATH`` or ``up:HASH``)."""
    kind, _, rest = model_id.partition(":")
    if kind == "zoo":
        return zoo.zoo_model_path(rest)
    if kind == "up":
        return checkpoints.stored_path(model_id)
    return Path(rest)


def your_model() -> str | None:
    """The "your own model" expander: upload a checkpoint (+ plan) or point at a run folder; returns
    the new model's id once it is stored and checked (errors are shown, nothing is stored)."""
    box = st.sidebar.expander("Use your own model")
    file = box.file_uploader(
        "Checkpoint (.safetensors)", type=["safetensors", "pt", "pth", "ckpt", "bin", "pkl"], key="ckpt_upload",
        max_upload_size=checkpoints.MAX_CHECKPOINT_MB,
        help="An npdg model file (what `npdg train` writes as model.safetensors). Pickled checkpoints "
             "(.pt, .pth, .ckpt, .pkl) are refused: they can run code. Stored under its content hash in the "
             "dashboard cache, least recently used evicted first.")
    plan = box.file_uploader("Its pruning_plan.json (physically pruned models)", type=["json"], key="plan_upload",
                             max_upload_size=5, help="Only for a model `npdg prune` pruned physically.")
    folder = box.text_input("…or a run folder", key="run_folder_input", placeholder="/path/to/runs/my-run",
                            help="A folder holding model.safetensors (and pruning_plan.json if pruned).")
    new = None
    if file is not None:
        try:
            stored = checkpoints.store_checkpoint(file.getvalue(), file.name, plan.getvalue() if plan else None,
                                                  plan.name if plan else "pruning_plan.json")
            box.success(f"{stored.name}: {stored.spec}{', pruned' if stored.pruned else ''} — stored as `{stored.id}`.")
            new = stored.id
        except NpdgError as exc:
            with box:
                error_box(exc)
    if folder:
        try:
            path = checkpoints.run_folder(folder)
            known = st.session_state.setdefault(RUN_FOLDERS, [])
            if str(path) not in known:
                known.append(str(path))
            new = f"run:{path}"
        except NpdgError as exc:
            with box:
                error_box(exc)
    return new


def model_panel(default: str | None = None) -> ModelChoice | None:
    """Render the panel; return the chosen model (None, with a message, when there is none).
    ``default``: this page's starting model when the URL names none (else :data:`DEFAULT_MODEL`)."""
    slot = st.sidebar.container()  # the selectbox goes above the "your own model" expander
    new = your_model()
    if new is not None and st.session_state.get("_last_own_model") != new:
        st.session_state["_last_own_model"] = new
        st.session_state["m"] = new  # a new upload or folder becomes the page's model once
    options = model_options()
    if not options:
        slot.info("No model yet: build the zoo (`make zoo`) or train one (`python -m npdg train ...`).")
        return None
    ids = list(options)
    if st.session_state.get("m") not in (None, *ids):
        del st.session_state["m"]  # e.g. an upload evicted meanwhile: back to the default
    wanted = [m for m in (default, DEFAULT_MODEL) if m is not None and m in options]
    default = wanted[0] if wanted else ids[0]
    choice = slot.selectbox(
        "Model", ids, index=ids.index(default), key="m", bind="query-params",
        help="A shipped zoo model (`zoo:NAME`, assets/zoo, see assets/README.md), a run under runs/ or a folder you "
             "pointed at (`run:PATH`), or a checkpoint you uploaded (`up:HASH`). The id is what the URL holds "
             "(`?m=zoo:r18-dsp`).",
    )
    label, summary = options[choice]
    slot.caption(summary)
    try:
        path = model_path(choice)
    except NpdgError as exc:
        with slot:
            error_box(exc)
        return None
    return ModelChoice(choice, path, label, summary)


PLAN_STATE = "_prune_plan"  # the Prune page leaves (model id, settings) here


def pair_panel(default_a: str = "zoo:r18-erm", default_b: tuple[str, ...] = ("zoo:r18-npdg", "zoo:r18-dsp"),
               help_a: str = "", help_b: str = ""):
    """Models A and B side by side (``?a=&b=``): any model of :func:`model_options`, or the Prune
    page's plan soft-masked on its model (``plan:…``). A checkpoint or folder given in the sidebar
    becomes B once. Returns (ref A, ref B) as :class:`npdg.service.compare.ModelRef` — or None,
    with a message, when there is no model or a plan does not fit."""
    from npdg.service import compare, pruning

    own = your_model()
    if own is not None and st.session_state.get("_pair_last_own") != own:
        st.session_state["_pair_last_own"] = own
        st.session_state["b"] = own
    options = model_options()
    planned = st.session_state.get(PLAN_STATE)
    if planned is not None:
        base, settings = planned
        pid = "plan:{}|{}|{:.2f}".format(base, settings["criterion"], settings["rate"])
        options[pid] = (f"{base} pruned ({settings['criterion']}, r = {settings['rate']:.2f})",
                        "the Prune page's plan, soft-masked")
    if not options:
        st.info("No model yet: build the zoo (`make zoo`) or train one.")
        return None
    ids = list(options)

    def index(*wanted: str) -> int:
        return next((ids.index(w) for w in wanted if w in ids), 0)

    c1, c2 = st.columns(2)
    a_id = c1.selectbox("Model A", ids, index=index(default_a), key="a", bind="query-params",
                        help=help_a or "The first model.")
    b_id = c2.selectbox("Model B", ids, index=index(*default_b), key="b", bind="query-params",
                        help=help_b or "The second model. `plan:` = the Prune page's plan, soft-masked.")

    def ref(model_id: str):
        if model_id.startswith("plan:"):
            base, settings = planned
            plan = pruning.select_plan(model_path(base), **settings)
            return compare.ModelRef(model_path(base), plan, options[model_id][0])
        return compare.ModelRef(model_path(model_id), None, model_id)

    try:
        return ref(a_id), ref(b_id)
    except Exception as exc:  # an evicted upload, a plan for another architecture
        error_box(exc)
        return None
