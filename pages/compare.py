"""Compare page: two models side by side on one scene in many domains — where does each one err?

Widgets → :mod:`npdg.service.compare` (a :class:`ModelRef` is a model, or a model with the Prune
page's plan soft-masked). Per domain: image | ground truth | A | B | errors A | errors B; a
before/after split view, synchronized zoom, per-class IoU A vs B with Δ and the mIoU over domains.
Scene, domains, models, class, opacity and view are bound to the URL.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from app import components, state
from app.before_after import before_after, data_url
from app.inputs import INPUTS, real_dataset_input, your_image
from app.models import pair_panel
from npdg.service import compare, data
from npdg.service.data import CLASS_NAMES, DOMAIN_NAMES, DOMAIN_ROLES, SPLIT_LENGTHS

ALL = "all classes (right / wrong)"

st.title("Compare — two models, one scene, every domain")
st.markdown(
    "Pick two models — any zoo model, a local run, or the plan you set up on the **Prune** page (soft-masked) — "
    "and see where each one is right and wrong on the same street in every look. Errors are coloured "
    "**green = correct / true positive**, **red = wrong / false positive**, **blue = false negative** for a "
    "chosen class."
)

refs = pair_panel(help_a="Shown left of the split and in the 'A' columns.",
                  help_b="Shown right of the split and in the 'B' columns. `plan:` = the Prune page's plan, soft-masked.")
if refs is None:
    st.stop()
ref_a, ref_b = refs


d1, d2, d3 = st.columns([2, 2, 5])
source = d1.radio("Input", INPUTS, key="input", bind="query-params", horizontal=True,
                  help="A synthetic val scene in several domains (with labels), an image you upload (with its label "
                       "if you have one), or an image of a real dataset (with its label).")
upload = None
if source == INPUTS[0]:
    state.clamp_state("scene", 0, SPLIT_LENGTHS["val"] - 1)
    scene = d2.number_input("Scene (val)", 0, SPLIT_LENGTHS["val"] - 1, 0, 1, key="scene", bind="query-params",
                            help="The same index is the same street in every domain.")
    domains = d3.multiselect("Domains", list(DOMAIN_NAMES), default=list(DOMAIN_NAMES), key="doms", bind="query-params",
                             help="Rows of the grid: " + ", ".join(f"{d} ({DOMAIN_ROLES[d]})" for d in DOMAIN_NAMES)
                                  + ". Plain names, so a link reads ?doms=source&doms=fog.")
else:
    scene, domains = 0, []
    if source == INPUTS[1]:
        upload, upload_label = your_image(d2, d3, "compare")
    else:
        upload, upload_label, where = real_dataset_input(d2, d3, "compare")
        st.caption(where)

def _class_from_click() -> None:
    """A *new* click on a bar of the per-class chart picks its class (before the selectbox exists)."""
    event = st.session_state.get("cmp_classes") or {}
    points = (event.get("selection") or {}).get("points") or []
    clicked = points[0].get("x") if points and isinstance(points[0], dict) else None
    if clicked == st.session_state.get("_cmp_last_click"):
        return
    st.session_state["_cmp_last_click"] = clicked
    if clicked in CLASS_NAMES:
        st.session_state["cls"] = clicked


_class_from_click()
e1, e2, e3 = st.columns([3, 2, 2])
cls_label = e1.selectbox("Errors of", [ALL, *CLASS_NAMES], key="cls", bind="query-params",
                         help="All classes: right (green) vs wrong (red). One class: its TP green, FP red, FN blue. "
                              "A click on a bar of the per-class chart picks it too.")
opacity = e2.slider("Opacity", 0.0, 1.0, 0.6, 0.05, key="op", bind="query-params",
                    help="How strongly predictions and errors are blended over the image.")
view = e3.radio("Split view", ["A vs B", "image vs A"], key="sv", bind="query-params", horizontal=True,
                help="What the before/after slider compares.")
class_id = None if cls_label == ALL else CLASS_NAMES.index(cls_label)
shown_classes = st.multiselect("Classes shown in the overlays", list(CLASS_NAMES), default=list(CLASS_NAMES), key="show",
                               bind="query-params", help="Ground truth and predictions colour only these classes; "
                                                         "the others show the image.")
show_ids = [CLASS_NAMES.index(c) for c in shown_classes]


def _overlay(image, labels):
    return data.overlay(image, labels, opacity, classes=show_ids)



# ------------------------------------------------------------------------------------- your image
if upload is not None:
    try:
        pa, pb = (compare.upload_prediction(r, upload, upload_label, class_id) for r in (ref_a, ref_b))
    except Exception as exc:
        components.error_box(exc)
        st.stop()
    ov_a, ov_b = _overlay(upload, pa.pred), _overlay(upload, pb.pred)
    if upload_label is None:
        cols = st.columns(3)
        cols[0].image(upload, caption="your image", width="stretch", output_format="JPEG")
        cols[1].image(ov_a, caption=f"A: {ref_a.label}", width="stretch", output_format="JPEG")
        cols[2].image(ov_b, caption=f"B: {ref_b.label}", width="stretch", output_format="JPEG")
    else:
        pictures = compare.grid_row(pa, pb, opacity, show_ids)
        for titles, picture in zip(compare.GRID_PARTS, pictures):
            st.image(picture, caption=" | ".join(titles), width="stretch", output_format="JPEG")
        st.markdown(f"**mIoU on your image** (classes in label or prediction): A {100 * pa.miou:.1f} · "
                    f"B {100 * pb.miou:.1f}")
    before_after(ov_a if view == "A vs B" else upload, ov_b if view == "A vs B" else ov_a,
                 "A" if view == "A vs B" else "image", "B" if view == "A vs B" else "A", key="ba_upload")
    st.caption(f"The two predictions differ on {100 * float((pa.pred != pb.pred).mean()):.1f} % of the pixels.")
    st.stop()

if not domains:
    st.info("Pick at least one domain.")
    st.stop()


# ------------------------------------------------------------------------------------------- grid
try:
    preds_a = compare.ref_scene_predictions(ref_a, index=int(scene), domains=domains, class_id=class_id)
    preds_b = compare.ref_scene_predictions(ref_b, index=int(scene), domains=domains, class_id=class_id)
    rows = compare.grid_rows(ref_a, ref_b, index=int(scene), domains=domains, class_id=class_id, opacity=opacity,
                             classes=show_ids)
except Exception as exc:  # e.g. a plan for another architecture
    components.error_box(exc)
    st.stop()

st.subheader(f"Val scene {int(scene)} in {len(domains)} domain{'s' if len(domains) != 1 else ''}")
WIDTHS = [1.1, 8, 4]  # the two pictures of a row: 4 tiles and 2 tiles, 4 px apart
head = st.columns(WIDTHS)
for col, titles in zip(head[1:], compare.GRID_PARTS):  # titles spread over the tiles of each picture
    col.html(f'<div style="display:flex;column-gap:{100 * 4 / (len(titles) * 256 + 4 * (len(titles) - 1)):.2f}%;'
             'font-weight:600">' + "".join(f'<div style="flex:1;text-align:center">{t}</div>' for t in titles) + "</div>")
for pa, pb, pictures in zip(preds_a, preds_b, rows):
    row = st.columns(WIDTHS, vertical_alignment="center")
    row[0].markdown(f"**{pa.domain}**  \n{pa.role}  \nA {100 * pa.miou:.1f} · B {100 * pb.miou:.1f}")
    for col, picture in zip(row[1:], pictures):
        col.image(picture, width="stretch", output_format="JPEG")
st.caption("Per-row numbers: the scene's own mIoU (classes present in label or prediction) — for orientation; the "
           "table below scores whole domains. A = " + ref_a.label + ", B = " + ref_b.label + ".")

# ------------------------------------------------------------------------------ split view and zoom
left, right = st.columns([1, 1])
with left:
    dom = st.selectbox("Domain of the split view and the zoom", domains, key="zd", bind="query-params",
                       help="Which row the before/after slider and the synchronized zoom show.")
    i = list(domains).index(dom)
    pa, pb = preds_a[i], preds_b[i]
    ov_a, ov_b = _overlay(pa.image, pa.pred), _overlay(pb.image, pb.pred)
    if view == "A vs B":
        before_after(ov_a, ov_b, "A", "B", key="ba_scene")
    else:
        before_after(pa.image, ov_a, "image", "A", key="ba_scene")
    st.caption("Drag the slider: left of the red line is the first image, right of it the second.")
with right:
    # one figure, two image axes that share their ranges; the images go as JPEG data URLs (a
    # go.Image with z= would send every pixel as a JSON number); built as plain dicts — plotly's
    # make_subplots / update_* validation cost more than the rest of this page together
    axis = dict(showticklabels=False, showgrid=False, zeroline=False)
    zoom = go.Figure(
        data=[dict(type="image", source=data_url(compare.error_overlay(p.image, p.error, opacity)),
                   xaxis=f"x{k or ''}", yaxis=f"y{k or ''}") for k, p in ((0, pa), (2, pb))],
        layout=dict(height=260, margin=dict(l=0, r=0, t=30, b=0), dragmode="zoom",
                    xaxis=dict(domain=[0, 0.49], **axis), xaxis2=dict(domain=[0.51, 1], anchor="y2", matches="x", **axis),
                    yaxis=dict(autorange="reversed", **axis),
                    yaxis2=dict(anchor="x2", matches="y", autorange="reversed", **axis),
                    annotations=[dict(text=t, x=x, y=1.0, xref="paper", yref="paper", yanchor="bottom",
                                      showarrow=False) for t, x in (("errors A", 0.245), ("errors B", 0.755))]),
        skip_invalid=False)
    st.plotly_chart(zoom, width="stretch", key="cmp_zoom")
    st.caption("Synchronized zoom: drag a box on either view, both follow; double-click to reset.")


# ---------------------------------------------------------------------------------- class IoU, mIoU
n_eval = st.select_slider("Scenes per domain for the scores", [2, 4, 8], 4, key="ne", bind="query-params",
                          help="The first N val scenes of each domain; one confusion matrix per domain.")
try:
    (ta, ca), (tb, cb) = (compare.ref_scores(r, domains=domains, n_images=int(n_eval)) for r in (ref_a, ref_b))
except Exception as exc:
    components.error_box(exc)
    st.stop()
table = ta[["domain", "role", "averaged"]].assign(**{"A mIoU": 100 * ta["miou"], "B mIoU": 100 * tb["miou"]})
table["Δ (B − A)"] = table["B mIoU"] - table["A mIoU"]
held = table[table["averaged"]]
s1, s2 = st.columns([2, 3])
with s1:
    st.markdown(f"**mIoU over domains** ({int(n_eval)} val scenes each)")
    st.dataframe(table, hide_index=True, width="stretch", key="cmp_table",
                 column_config={c: st.column_config.NumberColumn(format="%.1f") for c in ("A mIoU", "B mIoU", "Δ (B − A)")})
    if len(held):
        st.caption(f"Held-out mean: A {held['A mIoU'].mean():.1f}, B {held['B mIoU'].mean():.1f} "
                   f"(Δ {held['Δ (B − A)'].mean():+.1f}) — style domains only, not the source, not suburb.")
with s2:
    cdom = st.selectbox("Per-class IoU on", ["held-out mean", *domains], key="cd", bind="query-params",
                        help="A domain, or the mean over the held-out style domains.")
    pick = ca.assign(B=cb["iou"].to_numpy())
    if cdom == "held-out mean":
        keep = set(table.loc[table["averaged"], "domain"])
        pick = pick[pick["domain"].isin(keep)].groupby(["class", "train_id"], as_index=False, sort=False)[["iou", "B"]].mean()
    else:
        pick = pick[pick["domain"] == cdom]
    pick = pick.dropna(subset=["iou", "B"], how="all").sort_values("train_id")
    delta = 100 * (pick["B"] - pick["iou"])
    fig = go.Figure(
        data=[dict(type="bar", x=pick["class"], y=100 * pick["iou"], name="A", marker_color="#9aa5b1"),
              dict(type="bar", x=pick["class"], y=100 * pick["B"], name="B", marker_color="#d62728",
                   text=[f"{d:+.0f}" if np.isfinite(d) else "" for d in delta], textposition="outside")],
        layout=dict(barmode="group", height=330, margin=dict(l=0, r=0, t=30, b=0), yaxis_title="IoU (%)",
                    title=f"Per-class IoU, A vs B (labels: Δ) — {cdom}", clickmode="event+select"))
    st.plotly_chart(fig, width="stretch", key="cmp_classes", on_select="rerun", selection_mode="points")

components.teaching_notes(
    "- **Same street, other looks**: the labels are identical in every row; only the style changes, so every "
    "new red pixel in a held-out row is an error caused by the domain shift.\n"
    "- **A vs B**: typical use — a source-only model (A) against a DSP-trained or NPDG-pruned one (B): does B fix "
    "the errors the shift causes, and where does pruning cost accuracy?\n"
    "- **Per-class IoU**: click a bar to colour that class's TP / FP / FN in the grid."
)
