"""Unit page: one filter or attention head across domains — the drill-down of the Sensitivity page.

Widgets → :mod:`npdg.service.explain` (activation maps, atlas, top patches) and
:mod:`npdg.service.sensitivity` (the unit's scores and partners). Model, layer, unit, scene and
probe source live in the URL (``?m=&layer=&unit=&scene=&src=``), so the Sensitivity page links
straight here. The atlas behind the top patches runs as a background job, shared and persisted.
"""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from app import components, figures, heatmap, nav, state
from app import jobs as jobs_ui
from app.inputs import real_dataset_input, your_image
from app.models import model_panel
from npdg.service import explain
from npdg.service import sensitivity as sens
from npdg.service.data import DOMAIN_NAMES, DOMAIN_ROLES, SPLIT_LENGTHS

SOURCES = {"DSP styles": "dsp", "held-out renderings (oracle)": "oracle"}
YOURS = ("Your image", "Real dataset")
TOP_K = 4

st.title("Unit — one filter or head across domains")
st.markdown(
    "A **unit** is what NPDG scores and prunes: a BatchNorm filter (DeepLabV3+) or an attention head "
    "(SegFormer). Here you see one unit on the same scene in **every domain** on one colour scale, the "
    "images where it fires most in each domain, and what the sensitivity probe says about it — its unary "
    "and binary scores, |γ|, its coupling group and the units its style reaction moves with "
    "(docs/method.md §3)."
)

model = model_panel()
if model is None:
    st.info("Pick a model in the sidebar.")
    st.stop()

try:
    layers = explain.unit_layers(model.path)
except Exception as exc:  # a model that cannot be loaded: a message, the rest of the app keeps working
    components.error_box(exc)
    st.stop()
if layers.empty:
    st.warning("This model has no prunable units (no BatchNorm filters or attention heads) to inspect.")
    st.stop()

names = list(layers["layer"])
c1, c2, c3, c4 = st.columns([4, 2, 2, 3])
layer = c1.selectbox("Layer", names, key="layer", bind="query-params", format_func=heatmap.short_layer,
                     help="A unit layer of the model, in model order (BN filters or attention heads).")
row = layers[layers["layer"] == layer].iloc[0]
size, kind = int(row["size"]), str(row["kind"])
state.clamp_state("unit", 0, size - 1)  # a unit of a wider layer: the last one of this layer, not an error
state.clamp_state("scene", 0, SPLIT_LENGTHS["val"] - 1)
unit = c2.number_input(f"Unit (0 … {size - 1})", 0, size - 1, 0, 1, key="unit", bind="query-params",
                       help=f"Which {heatmap.unit_noun(kind, False)} of the layer.")
scene = c3.number_input("Scene (val)", 0, SPLIT_LENGTHS["val"] - 1, 0, 1, key="scene", bind="query-params",
                        help="The val scene shown in every domain (same street, different look).")
src_label = c4.radio("Scores from", list(SOURCES), key="src", bind="query-params", horizontal=True,
                     help="Which sensitivity table the scores come from: DSP styles (what NPDG uses) or the held-out "
                          "renderings (oracle diagnostic).")
unit = int(unit)


# ----------------------------------------------------------------------------------------- scores
def _scores() -> None:
    res, where = sens.find_table(model.path, SOURCES[src_label])  # the Sensitivity page's default probe
    if res is None:
        st.info(f"No {src_label} table for {model.label} yet: compute it on the Sensitivity page; the maps below "
                "need none.")
        return
    info = sens.unit_info(res, layer, unit)
    m = st.columns(6)
    m[0].metric("combined w", f"{info.combined:.3f}", help=f"w = λ·wᵁ + (1 − λ)·wᴮ at the table's λ = {res.meta.get('lam')}.")
    m[1].metric("unary wᵁ", f"{info.w_unary:.3f}", help=f"Raw unary {info.unary:.4f}: share of the unit's variance "
                                                        "explained by style; normalized within the layer.")
    m[2].metric("binary wᴮ", f"{info.w_binary:.3f}", help=f"Raw binary {info.binary:.4f}: mean |correlation| of its "
                                                          "style reaction with the layer's other units; normalized.")
    m[3].metric("|γ|", f"{abs(info.gamma):.3f}", help="|BN weight| (filters) or |head gate| (heads): what sparse "
                                                      "training shrinks and pruning ranks.")
    m[4].metric("rank in layer", f"{info.rank} / {info.layer_size}", help="1 = the layer's most style-sensitive unit.")
    m[5].metric("coupling group", "—" if info.group < 0 else str(info.group),
                help="Units torch-pruning removes together (a residual sum ties channels of several layers).")
    st.caption(f"Scores from the sensitivity table — {where} ({res.meta.get('images', '?')} images, probed at "
               f"{'×'.join(str(v) for v in res.meta.get('size', []))}). Coupling group spans: "
               + ", ".join(f"`{heatmap.short_layer(n)}`" for n in info.group_layers[:8])
               + (" …" if len(info.group_layers) > 8 else ""))
    if not info.has_partners:
        st.caption("This table was written before partners were kept; re-probe on the Sensitivity page to see them.")
    elif not info.partners:
        st.caption("No style-correlated partners (the unit has no style component, or is alone in its layer).")
    else:
        st.markdown("**Strongest style-correlated partners** (|R| of their style reactions; what the binary score "
                    "averages) — open one:")
        cols = st.columns(len(info.partners))
        for col, (j, r) in zip(cols, info.partners):
            col.page_link(nav.page("unit"), label=f"unit {j} · |R| {r:.2f}", icon=":material/link:",
                          query_params=nav.unit_link(model.id, layer, j, scene=str(int(scene)), src=src_label))


try:
    _scores()
except Exception as exc:
    components.error_box(exc)


# ------------------------------------------------------------------------------------------- maps
st.subheader(f"{heatmap.short_layer(layer)} · unit {unit} on val scene {int(scene)} in every domain")
try:
    view = explain.unit_view(model.path, layer, unit, scene=int(scene), domains=DOMAIN_NAMES)
except Exception as exc:
    components.error_box(exc)
    view = None
if view is not None:
    cols = st.columns(len(view.domains))
    for col, d, img in zip(cols, view.domains, view.images):
        col.image(img, caption=f"{d} ({DOMAIN_ROLES[d]})", width="stretch", output_format="JPEG")
    titles = [f"{d}: max {p:.2f}" for d, p in zip(view.domains, view.peaks)]
    fig = figures.map_grid(view.maps, titles, zmin=view.vmin, zmax=view.vmax, colorscale=heatmap.PLOTLY_SCALE,
                           colorbar_title="act.")
    st.plotly_chart(fig, width="stretch", key="unit_maps")
    noun = "BN output" if view.kind == "filter" else "norm of the head's output over head_dim, per token"
    st.caption(f"Activation ({noun}) on the layer's {view.maps.shape[1]}×{view.maps.shape[2]} grid, one colour scale "
               f"[{view.vmin:.2f}, {view.vmax:.2f}] for all domains: a unit whose map changes with the look but not "
               "with the content is style-sensitive.")


def _own_image() -> None:
    """The unit on your image or an image of a real dataset, on the domains' colour scale."""
    own = st.radio("Image", YOURS, key="unit_own", horizontal=True,
                   help="Your own image (PNG/JPEG, any size) or an image of a real dataset from the sidebar.")
    o1, o2 = st.columns(2)
    picked = your_image(o1, o2, "unit", stop=False) if own == YOURS[0] else real_dataset_input(o1, o2, "unit", stop=False)
    if picked is None:
        return  # a hint or a message is shown; the rest of the page goes on
    image, where = picked[0], ("your image" if own == YOURS[0] else picked[2])
    try:
        amap = explain.image_unit_map(model.path, layer, unit, image)
    except Exception as exc:
        components.error_box(exc)
        return
    lo, hi = (view.vmin, view.vmax) if view is not None else (float(amap.min()), float(amap.max()))
    left, right = st.columns(2)
    left.image(image, caption=where, width="stretch", output_format="JPEG")
    fig = figures.map_grid(amap[None], [f"{where}: max {float(amap.max()):.2f}"], zmin=lo, zmax=max(hi, float(amap.max())),
                           colorscale=heatmap.PLOTLY_SCALE, wrap=1, row_height=260, colorbar_title="act.")
    right.plotly_chart(fig, width="stretch", key="unit_own_map")
    st.caption("The same tap and the same colour scale as the domains above (widened if your image goes beyond it).")



# ---------------------------------------------------------------------------------------- patches
st.subheader("Where it fires most, per domain")
st.caption(f"From the activation atlas of this layer: val scenes 0 … {explain.ATLAS_SCENES - 1} in each of the "
           f"{len(DOMAIN_NAMES)} domains; for each domain the {TOP_K} images with the unit's highest spatial maximum, "
           "cropped around it. Computed once per layer in the background and kept in the dashboard cache.")
try:
    status = explain.atlas_job(model.path, layer, domains=DOMAIN_NAMES)
except Exception as exc:
    components.error_box(exc)
    status = None
if jobs_ui.follow(status, "Activation atlas", retry_key="atlas_retry"):
    atlas = explain.atlas_result(status)
    patches = explain.top_patches(atlas, unit, k=TOP_K)
    profile = explain.unit_profile(atlas, unit)
    left, right = st.columns([3, 2])
    with left:
        by_domain: dict[str, list] = {}
        for p in patches:
            by_domain.setdefault(p.domain, []).append(p)
        for d, ps in by_domain.items():
            cols = st.columns([1.3] + [1] * TOP_K)
            cols[0].markdown(f"**{d}**  \n{DOMAIN_ROLES[d]}")
            for col, p in zip(cols[1:], ps):
                col.image(p.crop, caption=f"scene {p.scene} · {p.value:.2f}", width="stretch", output_format="JPEG")
    with right:
        fig = px.bar(profile, x="domain", y="mean_max", error_y=profile["max_max"] - profile["mean_max"],
                     error_y_minus=profile["mean_max"] - profile["min_max"],
                     color=profile["domain"].map(DOMAIN_ROLES), height=360,
                     labels={"mean_max": "spatial max (mean over scenes)", "color": "role"})
        fig.update_layout(margin=dict(l=0, r=0, t=40, b=0), title="How strongly it fires, per domain")
        st.plotly_chart(fig, width="stretch", key="unit_profile")
        st.caption("Bars: mean over the atlas scenes of the unit's spatial maximum; whiskers: min … max.")

with st.expander("This unit on your own image or a real dataset's"):
    _own_image()

components.teaching_notes(
    "- **Maps in every domain**: the same street rendered in each look. A *content* unit lights up the same "
    "places everywhere; a *style* unit changes its overall level or pattern with the look — the kind NPDG "
    "scores as sensitive and prunes.\n"
    "- **Top patches**: what makes the unit fire, per domain (the idea of OpenAI Microscope / NetDissect).\n"
    "- **Partners**: units whose style reaction is correlated with this one; a unit with many strong partners "
    "is redundant under style shift (high binary score).\n"
    "- **Coupling group**: channels that must be removed together, e.g. across a residual sum."
)
