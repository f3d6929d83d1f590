"""Data page: one scene, many domains — what domain shift looks like.

Widgets → :mod:`npdg.service.data` → images. Split, scene, resolution, view, domains and opacity are
bound to the URL (``?split=&scene=&res=&view=&domains=&opacity=``); :mod:`app.state` keeps links in
the older formats working.
"""

from __future__ import annotations

import numpy as np
import plotly.express as px
import streamlit as st

from app import components, state
from app.inputs import dataset_choice, dataset_panel, your_image
from npdg.service import data as service
from npdg.service import datasets as real
from npdg.service.data import CLASS_NAMES, DEFAULT_DOMAINS, DOMAIN_NAMES, DOMAIN_ROLES, SPLIT_LENGTHS

SIZES = {"128×256 (fast)": (128, 256), "256×512 (default)": (256, 512), "512×1024 (sharp)": (512, 1024)}
VIEWS = ("Overlay", "Image", "Labels")

st.title("Data — one scene, many domains")
st.markdown(
    "A segmentation model learns from one **source** domain and is then used where images *look* "
    "different: another city, weather, camera or a game engine. The layout of the street — the "
    "labels — is the same, only the **style** changes, yet accuracy drops. This is *domain shift*. "
    "The embedded benchmark renders every scene in several domains from the same seed, so each "
    "column below has **identical labels** and differs in appearance only."
)

SOURCES = ("Embedded benchmark", "Real dataset", "Your image")
origin = st.radio("Images from", SOURCES, key="data_src", bind="query-params", horizontal=True,
                  help="The embedded benchmark renders each scene in many domains; a real dataset (added in the sidebar "
                       "or with `make app ARGS=\"--datasets NAME:ROOT\"`) has one look per image; your own image, with "
                       "its label if you have one.")
if origin == SOURCES[2]:
    y1, y2, y3 = st.columns([2, 2, 2])
    image, label = your_image(y1, y2, "data")
    own_opacity = y3.slider("Label opacity", 0.0, 1.0, 0.5, 0.05, key="data_own_opacity", disabled=label is None)
    left, right = st.columns(2)
    left.image(image, caption="your image (working size)", width="stretch", output_format="JPEG")
    if label is None:
        right.info("No label: upload its label PNG to see the classes (metrics need a label too).")
    else:
        right.image(service.overlay(image, label, opacity=own_opacity), caption="with its label", width="stretch",
                    output_format="JPEG")
        st.subheader("Classes in your image")
        components.class_chips(sorted({int(t) for t in np.unique(label) if t < len(CLASS_NAMES)}))
    st.stop()
if origin == SOURCES[1]:
    infos = dataset_panel()
    if not infos:
        st.info("No real dataset yet: add one in the sidebar (*Real datasets*, `NAME:ROOT`, e.g. "
                "`cityscapes:/data/cityscapes`) or start with `make app ARGS=\"--datasets NAME:ROOT\"`.")
        st.stop()
    r1, r2, r3 = st.columns([2, 2, 2])
    info, split_r, start = dataset_choice(infos, r1, r2, "data")
    real_opacity = r3.slider("Label opacity", 0.0, 1.0, 0.5, 0.05, key="data_real_opacity")
    st.caption(f"Real datasets have no same-scene renderings: six consecutive images of {info.name} {split_r} "
               f"from #{start}, each with its own label.")
    cols = st.columns(3)
    present_r: set[int] = set()
    for k, i in enumerate(range(start, min(start + 6, info.splits[split_r]))):
        try:
            img, lab, stem = real.sample(info.spec, split_r, i)
        except Exception as exc:
            cols[k % 3].error(f"#{i}: {exc}")
            continue
        if not present_r:
            present_r = {int(t) for t in np.unique(lab) if t < len(CLASS_NAMES)}
        cols[k % 3].image(service.overlay(img, lab, opacity=real_opacity), caption=f"#{i} {stem}", width="stretch",
                          output_format="JPEG")
    st.subheader("Classes in the first image")
    components.class_chips(sorted(present_r))
    st.stop()

domain_names = list(DOMAIN_NAMES)
default_domains = list(DEFAULT_DOMAINS)
splits = list(SPLIT_LENGTHS)

# links made before the URL binding (comma lists, a resolution index, out-of-range numbers) keep working
state.seed("scene", state.clamped_int(0, max(SPLIT_LENGTHS.values()) - 1, 0))
state.seed("res", state.option_by_index(list(SIZES)))
state.seed("domains", state.choices_list(domain_names))
state.seed("opacity", state.clamped_float(0.0, 1.0, 0.5))

c1, c2, c3, c4 = st.columns([1, 1, 1.3, 1.2])
split = c1.selectbox(
    "Split", splits, index=splits.index("val"), key="split", bind="query-params",
    help="train / val / test use disjoint seeds: no scene is shared between them.",
)
n_scenes = SPLIT_LENGTHS[split]
state.clamp_state("scene", 0, n_scenes - 1)  # a scene of a longer split: the last one of this split
scene = c2.number_input(
    "Scene", min_value=0, max_value=n_scenes - 1, value=0, step=1, key="scene", bind="query-params",
    help="Scene index within the split; the same index is the same street in every domain.",
)
size_label = c3.selectbox(
    "Resolution", list(SIZES), index=0, key="res", bind="query-params",
    help="Scenes are resolution-independent: a larger size renders the same street sharper.",
)
view = c4.radio("Show", VIEWS, index=0, horizontal=True, key="view", bind="query-params",
                help="The image with its labels blended on top, the image alone, or the label colours alone.")

domains = st.multiselect(
    "Domains", domain_names, default=default_domains, key="domains", bind="query-params",
    help="source = the training domain; heldout = never seen in training; content shift = different "
    "layout statistics with the source look (the case NPDG does not target). Roles: "
    + ", ".join(f"{d} = {DOMAIN_ROLES[d].replace('_', ' ')}" for d in domain_names) + ".",
)
if not domains:
    st.info("Pick at least one domain to render.")
    st.stop()

size = SIZES[size_label]
try:
    views = service.scene_views(split, int(scene), tuple(domains), size)
except Exception as exc:  # never a traceback in the dashboard
    components.error_box(exc)
    st.stop()

present = sorted({int(t) for v in views for t in np.unique(v.label) if t < len(CLASS_NAMES)})
o1, o2 = st.columns([1, 3])
opacity = o1.slider(
    "Label opacity", 0.0, 1.0, 0.5, 0.05, key="opacity", bind="query-params",
    disabled=view != "Overlay", help="0 shows the image, 1 the label colours.",
)
shown = o2.multiselect(
    "Classes to overlay", present, default=present, key=f"data_classes_{split}_{scene}",
    format_func=lambda t: CLASS_NAMES[t], disabled=view != "Overlay",
    help="Toggle classes to see where each one is; pixels of hidden classes show the image.",
)

ncols = min(3, len(views))
cols = st.columns(ncols)
for k, v in enumerate(views):
    if view == "Overlay":
        picture = service.overlay(v.image, v.label, opacity=opacity, classes=shown)
    elif view == "Labels":
        picture = service.overlay(v.image, v.label, opacity=1.0)
    else:
        picture = v.image
    cols[k % ncols].image(picture, caption=f"{v.domain} — {v.role.replace('_', ' ')}: {v.description}", width="stretch", output_format="PNG")

st.subheader("Classes in this scene")
components.class_chips(present)

left, right = st.columns(2)
with left:
    shares = service.class_shares(views[0].label)
    fig = px.bar(
        shares, x="share", y="class", orientation="h", color="class",
        color_discrete_map=dict(zip(shares["class"], shares["color"])), height=360,
    )
    fig.update_layout(showlegend=False, margin=dict(l=0, r=0, t=30, b=0), title="Label pixel share (same in every appearance domain)")
    fig.update_xaxes(tickformat=".0%")
    st.plotly_chart(fig, width="stretch", key="data_shares")
with right:
    st.markdown("**Appearance statistics** — the style moves, the labels do not (except under content shift).")
    st.dataframe(
        service.appearance_stats(views), hide_index=True, width="stretch",
        column_config={"same labels": st.column_config.ProgressColumn("same labels", min_value=0.0, max_value=1.0, format="percent")},
    )

components.teaching_notes(
    "- **Source**: the only domain a model is trained on (like GTA5 game frames in the paper).\n"
    "- **Held-out** domains (photo-like, night, fog, rain, overcast, toon) are never seen in training, "
    "by DSP or by its style bank; they play the role of Cityscapes, BDD100K and Mapillary.\n"
    "- **Content shift** (`suburb`) changes the *layout* — wider roads, fewer buildings — with the "
    "source look. NPDG targets *style* shift; this domain shows the limit the paper states.\n"
    "- Boundaries between classes come only from appearance (colour, texture), never from drawn outlines, "
    "so a model must learn what surfaces look like — and that is what breaks when the style changes."
)
