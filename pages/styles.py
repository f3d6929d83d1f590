"""Styles page: which styles does DSP make, and which of them hurt the model?

Widgets → :mod:`npdg.service.styles` → images and CE. Scene, K, seed and α live in the URL.
"""

from __future__ import annotations

import numpy as np
import plotly.express as px
import streamlit as st

from app import components, state
from app.inputs import INPUTS, real_dataset_input
from app.models import model_panel
from npdg.service import compare, data, styles, uploads

st.title("Styles — what DSP imitates, and what hurts the model")
st.markdown(
    "**DSP** (differentiable style perturbation) restyles a source image from a latent code ε: a small "
    "VAE over AdaIN style statistics decodes ε into a colour and texture *style*, and the content stays. "
    "Because the whole path is differentiable, ε can be pushed by **gradient ascent** on the segmentor's "
    "cross-entropy (CE) towards styles the model gets wrong — the hard styles NPDG trains and prunes with."
)

model = model_panel()
dsp_path = styles.DEFAULT_DSP
try:
    info = styles.dsp_info(dsp_path)
except Exception as exc:  # never a traceback in the dashboard
    components.error_box(exc)
    st.stop()

source = st.radio("Input", INPUTS, key="input", bind="query-params", horizontal=True,
                  help="A synthetic val scene (its ground truth is the CE target), an image you upload (PNG/JPEG; "
                       "the model's own prediction on it is the CE target) or an image of a real dataset (likewise).")
upload = None  # the decoded upload at its working size, when the input is "Your image"
c1, c2, c3, c4 = st.columns(4)
if source == INPUTS[0]:
    state.clamp_state("scene", 0, data.SPLIT_LENGTHS["val"] - 1)  # e.g. a train scene index from the Data page
    scene = c1.number_input("Scene (val)", 0, data.SPLIT_LENGTHS["val"] - 1, 0, 1, key="scene", bind="query-params",
                            help="Index of a synthetic val scene; the same index is the same street in every domain.")
elif source == INPUTS[2]:
    scene = 0
    upload, _, where = real_dataset_input(c1, c2, "styles")
    st.caption(f"**{where}**. The CE and the ascent use the model's own prediction on the clean image as the target.")
else:
    scene = 0
    file = c1.file_uploader("Image (PNG/JPEG)", type=list(uploads.IMAGE_TYPES), key="styles_upload",
                            max_upload_size=uploads.MAX_UPLOAD_MB,
                            help=f"Any size or mode (greyscale, RGBA, 16-bit are converted; over "
                                 f"{uploads.MAX_UPLOAD_PIXELS / 1e6:g} MP downscaled). It is run at a working size with "
                                 "the long side ≤ 256 px.")
    if file is None:
        st.info("Upload an image to restyle it — or switch the input back to a synthetic scene.")
        st.stop()
    try:
        decoded = uploads.read_image(file.getvalue(), file.name)
    except Exception as exc:  # not an image, broken file: a message, the page keeps working
        components.error_box(exc)
        st.stop()
    size = uploads.working_size(*decoded.image.shape[:2])
    upload = uploads.fit(decoded.image, size)
    notes = list(decoded.notes) + [f"run at {size[1]}×{size[0]} (from {decoded.original_size[1]}×"
                                   f"{decoded.original_size[0]})"]
    st.caption(f"**{decoded.name}**: " + "; ".join(notes) + ". No label: the CE and the ascent use the model's "
               "own prediction on the clean image as the target.")
k = c2.slider("Styles K", 1, 16, 6, key="k", bind="query-params", help="How many DSP styles to draw for the scene.")
seed = c3.number_input("Seed", 0, 10_000, 0, 1, key="seed", bind="query-params",
                       help="Seed of the latent codes ε ~ N(0, I): the same seed gives the same styles.")
alpha = c4.slider("Content strength α", 0.0, 1.0, float(info.alpha), 0.05, key="alpha", bind="query-params",
                  help="1 = the full DSP style, 0 = the image's own style (AdaIN blending).")
model_path = model.path if model is not None else None
#: What every view restyles: the chosen scene, or the upload at its working size.
INPUT = {"index": int(scene)} if upload is None else {"image": upload, "size": upload.shape[:2]}



def _caption(ce, i: int) -> str:
    return f"style {i}" + ("" if ce is None else f" — CE {float(ce[i]):.2f}")


def _tab_sample() -> None:
    try:
        if model_path is not None:
            grid = styles.ascend_styles(dsp_path, model_path, **INPUT, n_styles=int(k), steps=0,
                                        seed=int(seed), alpha=float(alpha))
        else:
            grid = styles.sample_styles(dsp_path, **INPUT, n_styles=int(k), seed=int(seed), alpha=float(alpha))
    except Exception as exc:
        components.error_box(exc)
    else:
        ce = grid.ce_before[0] if grid.ce_before is not None else None
        show_pred = st.toggle("Overlay the model's prediction", key="pred", bind="query-params",
                              disabled=model_path is None,
                              help="Colour each style by what the selected model predicts on it (class colours of "
                                   "the Data page): where a style breaks the segmentation.")
        shown, first = grid.random[0], grid.inputs[0]
        if show_pred and model_path is not None:
            try:
                preds = compare.ref_predict_images(compare.ModelRef(model_path),
                                                   np.concatenate([grid.inputs[:1], grid.random[0]]))
                first = data.overlay(first, preds[0], opacity=0.55)
                shown = [data.overlay(img, pr, opacity=0.55) for img, pr in zip(grid.random[0], preds[1:])]
            except Exception as exc:
                components.error_box(exc)
        cols = st.columns(min(4, int(k) + 1))
        cols[0].image(first, caption="input (source)" if upload is None else "input (your image)", width="stretch")
        for i in range(int(k)):
            cols[(i + 1) % len(cols)].image(shown[i], caption=_caption(ce, i), width="stretch")
        if ce is not None:
            target = "the true labels" if not grid.pseudo_labels else "its own prediction on the clean image (no label)"
            st.caption(f"CE of {model.label} on each style (its own loss on {target}). Higher = harder.")

def _tab_ascend() -> None:
    a1, a2, a3 = st.columns(3)
    steps = a1.slider("Ascent steps", 1, 5, 3, key="steps", bind="query-params",
                      help="Gradient-ascent steps on ε against the selected model.")
    step_size = a2.select_slider("Step size", [0.1, 0.25, 0.5, 1.0], 0.25, key="step", bind="query-params",
                                 help="Normalized step ε ← ε + s·g/‖g‖ (docs/method.md §1.5).")
    rule = a3.radio("Rule", ["normalized", "asm"], key="rule", bind="query-params", horizontal=True,
                    help="normalized: per-sample unit gradient (ours); asm: ASM's (20 / loss)·g.")
    if model_path is None:
        st.info("Pick a model in the sidebar: ascent needs a segmentor to push against.")
    elif st.button("Ascend", type="primary", help="Runs the ascent (a few seconds on a CPU)."):
        with st.status("Ascending ε…", expanded=False) as status:
            bar = st.progress(0.0)
            try:
                grid = styles.ascend_styles(dsp_path, model_path, **INPUT, n_styles=int(k), steps=int(steps),
                                            step_size=float(step_size), rule=rule, seed=int(seed), alpha=float(alpha),
                                            progress=lambda d, t: bar.progress(d / max(t, 1)))
            except Exception as exc:
                status.update(label="failed", state="error")
                components.error_box(exc)
                grid = None
            else:
                status.update(label="done", state="complete")
        if grid is not None:
            st.markdown("**Random ε** (top) vs **ε after ascent** (bottom), with the model's CE.")
            cols = st.columns(int(k))
            for i in range(int(k)):
                cols[i].image(grid.random[0, i], caption=f"CE {float(grid.ce_before[0, i]):.2f}", width="stretch")
            cols = st.columns(int(k))
            for i in range(int(k)):
                cols[i].image(grid.ascended[0, i], caption=f"CE {float(grid.ce_after[0, i]):.2f}", width="stretch")
            table = grid.ce_table()
            fig = px.line(table, x="step", y="ce", color=table["style"].astype(str), markers=True,
                          labels={"ce": "cross-entropy", "color": "style"}, height=320)
            fig.update_layout(margin=dict(l=0, r=0, t=30, b=0), title="CE per ascent step")
            st.plotly_chart(fig, width="stretch", key="styles_ce_steps")

def _tab_traverse() -> None:
    dim = st.number_input("Latent dimension", 0, info.latent_dim - 1, 0, 1, key="dim", bind="query-params",
                          help="ε = 0 except this coordinate, which takes −3 … 3 in 7 steps.")
    try:
        tr = styles.traverse(dsp_path, dim=int(dim), model_path=model_path, **INPUT, alpha=float(alpha))
    except Exception as exc:
        components.error_box(exc)
    else:
        cols = st.columns(len(tr.values))
        for i, v in enumerate(tr.values):
            cap = f"ε[{int(dim)}] = {v:+.0f}" + ("" if tr.ce is None else f" — CE {float(tr.ce[i]):.2f}")
            cols[i].image(tr.images[i], caption=cap, width="stretch")

def _heldout() -> None:
    if upload is not None:
        st.info("Your image has no renderings in the held-out domains: pick a synthetic scene to compare DSP "
                "styles with them.")
        return
    st.markdown("The same scene in the **held-out** looks (never seen by training or DSP) above, and "
                "DSP styles below: what DSP imitates (colour casts, contrast) and what it misses "
                "(fog's depth haze, rain streaks, lit windows at night).")
    try:
        views = data.scene_views("val", int(scene), tuple(data.HELDOUT_DOMAINS), styles.DEFAULT_SIZE)
        grid = styles.sample_styles(dsp_path, index=int(scene), n_styles=len(views), seed=int(seed), alpha=float(alpha),
                                    size=styles.DEFAULT_SIZE)
    except Exception as exc:
        components.error_box(exc)
        return
    cols = st.columns(len(views))
    for i, v in enumerate(views):
        cols[i].image(v.image, caption=f"held-out: {v.domain}", width="stretch")
    cols = st.columns(len(views))
    for i in range(len(views)):
        cols[i].image(grid.random[0, i], caption=f"DSP style {i}", width="stretch")


components.lazy_tabs({"Sample": _tab_sample, "Ascend": _tab_ascend, "Traverse": _tab_traverse,
                      "DSP vs held-out": _heldout})  # only the open tab is computed and drawn

components.teaching_notes(
    "- **Sample**: K random codes ε ~ N(0, I) restyle the same scene; the caption is the selected "
    "model's cross-entropy on it — styles with a high CE are the ones it has not learnt to handle.\n"
    "- **Ascend**: the same codes pushed by gradient ascent on that CE. The line chart shows CE rising "
    "step by step: DSP *searches* for harmful styles (docs/method.md §1.5).\n"
    "- **Traverse**: one latent coordinate swept from −3 to 3 — what a single dimension of the style "
    "space controls.\n"
    "- **DSP vs held-out**: DSP never sees the held-out domains; comparing them shows which kinds of "
    "shift it can stand in for."
)
