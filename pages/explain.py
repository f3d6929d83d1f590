"""Explain page: why does a model predict a class in a region — pixel attribution A vs B, and the
decision broken down onto the units of one layer, checked against their style sensitivity.

Widgets → :mod:`npdg.service.explain` (captum through :mod:`npdg.attribution`; a plan from the
Prune page is soft-masked, the shared model is never modified). Target: the pixels predicted as a
class, its false positives or negatives, or a box drawn on the image. Grad-CAM and the per-unit
view run on every change; integrated gradients, Noise Tunnel and feature ablation run behind a
button with progress. Models, input, target, method, parameters and layer live in the URL.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from app import components, figures, heatmap, state
from app import jobs as jobs_ui
from app.before_after import data_url
from app.inputs import INPUTS, real_dataset_input, your_image
from app.models import pair_panel
from npdg.service import compare, explain
from npdg.service import sensitivity as sens
from npdg.service.data import CLASS_NAMES, DOMAIN_NAMES, SPLIT_LENGTHS, scene_views

BOX_KEY = "ex_box"
SCATTER_KEY = "ex_scatter"
TOP_UNITS = 24

st.title("Explain — why does a model predict this here?")
st.markdown(
    "Pick a **region** — the pixels a model calls *car*, its false positives or false negatives of a class, or "
    "a box you draw — and see which **pixels** drive the class's logit there (captum), for model A and model B "
    "side by side. Below, the same decision is broken down onto the **units of one layer**: does an error on a "
    "held-out domain run through the style-sensitive units that NPDG prunes?"
)

refs = pair_panel(help_a="The first model explained.", help_b="The second model; `plan:` = the Prune page's plan, "
                                                              "soft-masked (the shared model is never modified).")
if refs is None:
    st.stop()
ref_a, ref_b = refs

# ------------------------------------------------------------------------------------------ input
d1, d2, d3 = st.columns([2, 2, 3])
source = d1.radio("Input", INPUTS, key="input", bind="query-params", horizontal=True,
                  help="A synthetic val scene in one domain (with its label), your own image, or an image of a real "
                       "dataset (with its label).")
if source == INPUTS[0]:
    state.clamp_state("scene", 0, SPLIT_LENGTHS["val"] - 1)
    scene = d2.number_input("Scene (val)", 0, SPLIT_LENGTHS["val"] - 1, 0, 1, key="scene", bind="query-params")
    domain = d3.selectbox("Domain", list(DOMAIN_NAMES), index=list(DOMAIN_NAMES).index("fog"), key="dom",
                          bind="query-params", help="The look of the scene; held-out domains show the errors the shift causes.")
    view = scene_views("val", int(scene), (domain,), compare.DEFAULT_SIZE)[0]
    image, label, where = view.image, view.label, f"val scene {int(scene)}, {domain}"
elif source == INPUTS[1]:
    image, label = your_image(d2, d3, "explain")
    where = "your image"
else:
    image, label, where = real_dataset_input(d2, d3, "explain")

# ----------------------------------------------------------------------------------------- target
# bound widgets put their *shown* value in the URL: plain words, no format_func (?target=false+negatives&method=ig)
REGIONS = {"class": "class", "false positives": "fp", "false negatives": "fn", "box": "box"}
t1, t2, t3 = st.columns([3, 2, 3])
region_label = t1.radio("Region", list(REGIONS), index=2, key="target", bind="query-params", horizontal=True,
                        help="\n".join(f"- **{w}**: {explain.TARGET_KINDS[k]}" for w, k in REGIONS.items()))
kind = REGIONS[region_label]
cls = t2.selectbox("Class", list(CLASS_NAMES), index=CLASS_NAMES.index("car"), key="class", bind="query-params",
                   help="Whose logit is explained (averaged over the region).")
METHODS = explain.methods()
method = t3.selectbox("Method", list(METHODS), key="method", bind="query-params",
                      help="\n".join(f"- **{m.name}** — {m.label}: {m.summary}" for m in METHODS.values()))
spec = METHODS[method]
t3.caption(f"{spec.label}: {spec.summary}")
params = {}
if spec.params:
    cols = st.columns(len(spec.params))
    for col, p in zip(cols, spec.params):
        key = f"{method}_{p.name}"
        if p.kind == "int":
            state.clamp_state(key, int(p.lo), int(p.hi))
            params[p.name] = col.number_input(p.label, int(p.lo), int(p.hi), int(p.default), int(p.step), key=key,
                                              bind="query-params", help=p.help or None)
        else:
            state.clamp_state(key, float(p.lo), float(p.hi))
            params[p.name] = col.number_input(p.label, float(p.lo), float(p.hi), float(p.default), float(p.step),
                                              key=key, bind="query-params", help=p.help or None)

try:
    layers = explain.unit_layers(ref_a.path)
except Exception as exc:
    components.error_box(exc)
    st.stop()
names = list(layers["layer"])
default_layer = explain.default_layer(layers)
layer = st.selectbox("Layer (Grad-CAM and the per-unit view)", names, index=names.index(default_layer), key="layer",
                     bind="query-params", format_func=heatmap.short_layer,
                     help="A unit layer of model A: BN filters, or an attention layer's heads (Grad-CAM and the unit view work on both).")


def _box() -> tuple[int, int, int, int] | None:
    """The last box drawn on the image (plotly box select returns pixel coordinates)."""
    event = st.session_state.get(BOX_KEY) or {}
    boxes = (event.get("selection") or {}).get("box") or []
    if not boxes or not isinstance(boxes[-1], dict):
        return None
    b = boxes[-1]
    try:
        xs, ys = [float(v) for v in b["x"]], [float(v) for v in b["y"]]
    except (KeyError, TypeError, ValueError):
        return None
    if not all(np.isfinite(xs + ys)):
        return None
    return int(min(xs)), int(min(ys)), int(np.ceil(max(xs))), int(np.ceil(max(ys)))


target = explain.Target(kind, CLASS_NAMES.index(cls), _box() if kind == "box" else None)

# ---------------------------------------------------------------------------------- image and box
left, right = st.columns([2, 3])
with left:
    st.markdown(f"**{where}** — drag a box on it (box select) to explain a region of your choice")
    fig = go.Figure(go.Image(source=data_url(image)))
    fig.update_layout(height=250, margin=dict(l=0, r=0, t=0, b=0), dragmode="select",
                      xaxis=dict(showticklabels=False), yaxis=dict(showticklabels=False))
    st.plotly_chart(fig, width="stretch", key=BOX_KEY, on_select="rerun", selection_mode="box")
    if kind == "box":
        st.caption("Box: " + (f"x {target.box[0]}–{target.box[2]}, y {target.box[1]}–{target.box[3]} px"
                              if target.box else "none yet — drag one on the image."))


def _problem(exc: Exception) -> None:
    """An empty region is an answer (this model predicts no such pixel), not a failure: say so plainly."""
    if isinstance(exc, explain.RegionError):
        st.info(str(exc))
    else:
        components.error_box(exc)


def _pixels(ref: compare.ModelRef):
    """(attribution or None, job status or None): instant methods now, slow ones from their job."""
    args = (ref, image, label, target, method, params, layer)
    explain.region(ref, image, label, target)  # an empty region is said before any job starts
    if spec.instant:
        return explain.pixel_attribution(*args), None
    status = explain.pixel_job(*args, lookup_only=True)
    return explain.job_result(status), status


with right:
    results, problems = {}, {}
    statuses = {}
    for name, ref in (("A", ref_a), ("B", ref_b)):
        try:
            results[name], statuses[name] = _pixels(ref)
        except Exception as exc:
            problems[name] = exc
    if not spec.instant:
        missing = [n for n in ("A", "B") if n not in problems and statuses.get(n) is None]
        if missing and st.button(f"Run {spec.label} for A and B", type="primary", key="explain_go",
                                 help="Runs in the background with progress; other widgets keep working."):
            for n, ref in (("A", ref_a), ("B", ref_b)):
                if n in missing:
                    try:
                        statuses[n] = explain.pixel_job(ref, image, label, target, method, params, layer)
                    except Exception as exc:
                        problems[n] = exc
        for n in ("A", "B"):
            if statuses.get(n) is not None and statuses[n].state != "done":
                jobs_ui.follow(statuses[n], f"{spec.label} ({n})", retry_key=f"explain_retry_{n}")
    shown = {n: r for n, r in results.items() if r is not None}
    scale = explain.attribution_scale(*(r.attribution for r in shown.values())) if shown else 1.0
    cols = st.columns(2)
    for col, (name, ref) in zip(cols, (("A", ref_a), ("B", ref_b))):
        with col:
            st.markdown(f"**{name}: {ref.label}**")
            if name in problems:
                _problem(problems[name])
            elif name in shown:
                r = shown[name]
                st.image(explain.attribution_overlay(image, r.attribution, r.region, scale=scale), width="stretch",
                         output_format="JPEG")
                st.caption(f"{spec.label}: red supports {cls}, blue opposes it; yellow outline = the region "
                           f"({int(r.region.sum())} px); {r.seconds:.2f} s.")
            elif spec.instant:
                st.caption("—")
            else:
                st.caption(f"Press **Run {spec.label}** to compute it.")
    if len(shown) == 2:
        st.caption("A and B share one colour scale (the larger 99th percentile of |attribution|).")

# ------------------------------------------------------------------------------------ per-unit view
st.subheader(f"The decision, unit by unit — {heatmap.short_layer(layer)}")
which = st.radio("Units of", ["A", "B"], key="uw", bind="query-params", horizontal=True,
                 help="Whose units: model A's or model B's (the layer must exist in that model).")
ref = ref_a if which == "A" else ref_b
model_id = st.session_state.get(which.lower(), "")
try:
    table, where_from = sens.find_table(ref.path, "dsp")
    units = explain.unit_table(ref, image, label, target, layer, table)
except Exception as exc:
    _problem(exc)
    st.stop()
units = units.assign(abs_contribution=units["contribution"].abs())
top = units.sort_values("abs_contribution", ascending=False).head(TOP_UNITS)
has_w = bool(units["combined"].notna().any())
u1, u2 = st.columns(2)
with u1:
    fig = figures.colored_bars([f"{u}" + (" ✂" if p else "") for u, p in zip(top["unit"], top["pruned"])],
                               top["contribution"], cmin=0, cmax=1, colorscale=heatmap.PLOTLY_SCALE,
                               title=f"Top {len(top)} units by |contribution| (colour: style sensitivity w)",
                               x_title="unit (✂ = pruned by the plan)", y_title="contribution",
                               hover={"w": np.round(top["combined"].to_numpy(), 3), "share": np.round(top["share"], 3)},
                               colorbar=has_w)
    if has_w:  # colour by w, not by the bar's height
        fig.update_traces(marker_color=top["combined"].fillna(0).tolist())
    fig.update_xaxes(type="category")  # unit numbers are names here, in the order of |contribution|
    st.plotly_chart(fig, width="stretch", key="ex_bars")
with u2:
    if has_w:
        x_pad = float(units["contribution"].abs().max() or 1.0) * 1.1
        sc = figures.unit_scatter(units["contribution"], units["combined"], units["combined"], units["unit"], layer,
                                  colorscale=heatmap.PLOTLY_SCALE, title="Contribution vs style sensitivity",
                                  x_title="contribution to the target", y_title="combined sensitivity w",
                                  extra={"unary": units["unary"], "binary": units["binary"]}, x_range=(-x_pad, x_pad))
        st.plotly_chart(sc, width="stretch", key=SCATTER_KEY, on_select="rerun", selection_mode=("points", "box", "lasso"))
    else:
        st.info(f"No sensitivity table for {ref.label} ({where_from}): probe one on the Sensitivity page to colour "
                "the units by their style sensitivity.")
if has_w:
    total = float(units["contribution"].abs().sum()) or 1.0
    sensitive = units["combined"] >= units["combined"].quantile(0.75)
    share = float(units.loc[sensitive, "contribution"].abs().sum()) / total
    st.caption(f"Gradient × activation, summed over the image: how much the target falls when a unit is masked "
               f"(docs/method.md §8). The most style-sensitive quarter of the layer's units carries "
               f"**{100 * share:.0f} %** of |contribution| (25 % if sensitivity did not matter). "
               f"Sensitivity: {where_from}.")
components.unit_links(model_id, layer, components.selected_units(SCATTER_KEY, layer),
                      "Pick points in the scatter (click, box or lasso) to open those units in the drill-down.")

components.teaching_notes(
    "- **Region and class**: the explained number is the class's mean logit inside the region. On a held-out "
    "domain, pick the *false negatives* of a class to ask 'what made the model miss it here?'.\n"
    "- **Grad-CAM** shows where the chosen layer's evidence lies (coarse); **integrated gradients** and "
    "**Noise Tunnel** give pixel-level maps; **feature ablation** blacks out predicted segments one by one.\n"
    "- **Unit by unit**: gradient × activation estimates how much masking each unit would change the target — "
    "the same change pruning makes. If errors on held-out looks run through high-w units, removing those "
    "units (NPDG) is the right medicine."
)
