"""Your own image (and its label) as a page's input — one widget set for the Compare and Explain pages."""

from __future__ import annotations

import streamlit as st

from app.components import error_box
from npdg.service import uploads

KIND_LABELS = {"train": "train ids", "cityscapes": "Cityscapes ids", "color": "Cityscapes colours"}
#: What a page runs on — the same options on every page that has the widget (key ``input``).
INPUTS = ("Synthetic scene", "Your image", "Real dataset")


def real_dataset_input(spec_col, pick_col, key: str, stop: bool = True):
    """The "Real dataset" input: a dataset from the sidebar, a split and an image → (image, label,
    where); with none configured, a hint, then the page stops (``stop``) or None is returned."""
    infos = dataset_panel()
    if not infos:
        st.info("No real dataset yet: add one in the sidebar (*Real datasets*, `NAME:ROOT`) or start the app with "
                "`make app ARGS=\"--datasets cityscapes:/data/cityscapes\"`.")
        return _halt(stop)
    return dataset_image(infos, spec_col, pick_col, key, stop)


def _halt(stop: bool) -> None:
    if stop:
        st.stop()


def your_image(image_col, label_col, key: str, stop: bool = True):
    """An uploaded image at its working size (long side ≤ 256 px, multiples of 32) and its optional
    label (train ids, the image's size; docs/dashboard.md §2). Bad files give a message and no file
    yet a hint; then the page stops (``stop``) or None is returned."""
    file = image_col.file_uploader("Image (PNG/JPEG)", type=list(uploads.IMAGE_TYPES), key=f"{key}_upload",
                                   max_upload_size=uploads.MAX_UPLOAD_MB,
                                   help="Any size or mode; run with the long side ≤ 256 px.")
    label_file = label_col.file_uploader("Its label (PNG, optional)", type=["png"], key=f"{key}_label",
                                         max_upload_size=uploads.MAX_UPLOAD_MB,
                                         help="The ground truth of this image, same size. Without one: predictions only.")
    kind = label_col.radio("The label holds", list(uploads.LABEL_KINDS), key=f"{key}_label_kind", horizontal=True,
                           format_func=KIND_LABELS.get,
                           help="\n".join(f"- **{k}**: {v}" for k, v in uploads.LABEL_KINDS.items()))
    if file is None:
        st.info("Upload an image — or switch back to a synthetic scene.")
        return _halt(stop)
    try:
        decoded = uploads.read_image(file.getvalue(), file.name)
        image = uploads.fit(decoded.image, uploads.working_size(*decoded.image.shape[:2]))
        label = None if label_file is None else uploads.read_label(
            label_file.getvalue(), label_file.name, decoded.image.shape[:2], kind, also=decoded.original_size)
    except Exception as exc:
        error_box(exc)
        return _halt(stop)
    if label is not None:
        label = uploads.fit_label(label, image.shape[:2])
    st.caption(f"**{decoded.name}**: " + "; ".join([*decoded.notes, f"run at {image.shape[1]}×{image.shape[0]}"])
               + (". No label: predictions only, no errors or metrics." if label is None else
                  f". Label **{label_file.name}** ({KIND_LABELS[kind]}), brought to the working size nearest-neighbour: "
                  "errors and IoU are measured there."))
    return image, label


DATASETS_STATE = "_datasets"  # session state: dataset specs added in the sidebar


def dataset_panel() -> list:
    """The sidebar's real datasets: those the dashboard started with (``--datasets`` / ``$NPDG_DATASETS``)
    and those added here (``NAME:ROOT``); returns the usable ones (:class:`npdg.service.datasets.DatasetInfo`),
    with a message for each that is not."""
    from npdg.service import datasets

    box = st.sidebar.expander("Real datasets")
    added = box.text_input("Add a dataset (NAME:ROOT)", key="dataset_input", placeholder="cityscapes:/data/cityscapes",
                           help="gta5, synthia, cityscapes, bdd100k or mapillary, in its original layout (README: "
                                "Real datasets). Start with `make app ARGS=\"--datasets NAME:ROOT\"` to have it always.")
    specs = [*datasets.configured(), *st.session_state.get(DATASETS_STATE, [])]
    usable = []
    for spec in dict.fromkeys([*specs, *([added.strip()] if added and added.strip() else [])]):
        try:
            info = datasets.dataset_info(spec)
        except Exception as exc:
            with box:
                error_box(exc)
            continue
        usable.append(info)
        if spec == (added or "").strip() and spec not in specs:
            st.session_state.setdefault(DATASETS_STATE, []).append(spec)
    if usable:
        box.caption(" · ".join(f"**{i.name}**: " + ", ".join(f"{s} {n}" for s, n in i.splits.items()) for i in usable))
    elif not added:
        box.caption("None configured: the embedded benchmark only.")
    return usable


def dataset_choice(infos: list, spec_col, pick_col, key: str):
    """Which image of which real dataset: (DatasetInfo, split, index) from three widgets."""
    from app import state

    by_label = {i.label: i for i in infos}
    chosen = spec_col.selectbox("Dataset", list(by_label), key=f"{key}_dataset", help="A dataset from the sidebar.")
    info = by_label[chosen]
    s1, s2 = pick_col.columns(2)
    split = s1.selectbox("Split", list(info.splits), key=f"{key}_dsplit")
    n = info.splits[split]
    state.clamp_state(f"{key}_dindex", 0, n - 1)
    index = s2.number_input(f"Image (0 … {n - 1})", 0, n - 1, 0, 1, key=f"{key}_dindex")
    return info, split, int(index)


def dataset_image(infos: list, spec_col, pick_col, key: str, stop: bool = True):
    """One image of a real dataset at the working size with its label, and where it is from (a bad
    file: a message, then the page stops or None is returned)."""
    from npdg.service import datasets

    info, split, index = dataset_choice(infos, spec_col, pick_col, key)
    try:
        image, label, stem = datasets.sample(info.spec, split, index)
    except Exception as exc:
        error_box(exc)
        return _halt(stop)
    return image, label, f"{info.name} {split} #{index} ({stem}), run at {image.shape[1]}×{image.shape[0]}"
