"""Your own image (and its label) as a page's input — one widget set for the Compare and Explain pages."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app.components import error_box
from npdg.service import uploads

KIND_LABELS = {"train": "train ids", "cityscapes": "Cityscapes ids", "color": "Cityscapes colours"}


def your_image(image_col, label_col, key: str) -> tuple[np.ndarray, np.ndarray | None]:
    """An uploaded image at its working size (long side ≤ 256 px, multiples of 32) and its optional
    label (train ids, the image's size; docs/dashboard.md §2). Bad files give a message and stop the
    page; no file yet gives a hint and stops it."""
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
        st.stop()
    try:
        decoded = uploads.read_image(file.getvalue(), file.name)
        image = uploads.fit(decoded.image, uploads.working_size(*decoded.image.shape[:2]))
        label = None if label_file is None else uploads.read_label(
            label_file.getvalue(), label_file.name, decoded.image.shape[:2], kind, also=decoded.original_size)
    except Exception as exc:
        error_box(exc)
        st.stop()
    if label is not None:
        label = uploads.fit_label(label, image.shape[:2])
    st.caption(f"**{decoded.name}**: " + "; ".join([*decoded.notes, f"run at {image.shape[1]}×{image.shape[0]}"])
               + (". No label: predictions only, no errors or metrics." if label is None else
                  f". Label **{label_file.name}** ({KIND_LABELS[kind]}), brought to the working size nearest-neighbour: "
                  "errors and IoU are measured there."))
    return image, label
