"""A before/after split view of two images (``st.components.v2``, inline HTML/CSS/JS — no CDN, works
offline): image A is clipped at the slider's position over image B; the position is sent back to
Python when the slider is released, so it survives reruns."""

from __future__ import annotations

import base64
import io

import numpy as np
import streamlit as st

_CSS = """
.ba-frame { position: relative; display: inline-block; width: 100%; line-height: 0; user-select: none; }
.ba-frame img { width: 100%; height: auto; image-rendering: pixelated; }
.ba-frame .ba-a { position: absolute; left: 0; top: 0; }
.ba-line { position: absolute; top: 0; bottom: 0; width: 2px; background: #ff2d55; transform: translateX(-1px); }
.ba-tag { position: absolute; top: 6px; padding: 2px 8px; font: 12px sans-serif; line-height: 18px;
          background: rgba(0, 0, 0, 0.6); color: #fff; border-radius: 8px; }
.ba-la { left: 6px; } .ba-lb { right: 6px; }
.ba-range { width: 100%; margin-top: 6px; accent-color: #ff2d55; }
"""

_JS = """
export default function (component) {
  const { data, parentElement, setStateValue } = component;
  let root = parentElement.querySelector('.ba-root');
  if (!root) {
    root = document.createElement('div');
    root.className = 'ba-root';
    parentElement.appendChild(root);
  }
  root.innerHTML = '<div class="ba-frame"><img class="ba-b" alt="B"/><img class="ba-a" alt="A"/>' +
    '<div class="ba-line"></div><span class="ba-tag ba-la"></span><span class="ba-tag ba-lb"></span></div>' +
    '<input class="ba-range" type="range" min="0" max="100" step="1" aria-label="before/after split"/>';
  const a = root.querySelector('.ba-a'), b = root.querySelector('.ba-b');
  const line = root.querySelector('.ba-line'), range = root.querySelector('.ba-range');
  a.src = data.a; b.src = data.b;
  root.querySelector('.ba-la').textContent = data.label_a;
  root.querySelector('.ba-lb').textContent = data.label_b;
  const apply = (v) => { a.style.clipPath = 'inset(0 ' + (100 - v) + '% 0 0)'; line.style.left = v + '%'; };
  range.value = data.pos;
  apply(data.pos);
  range.addEventListener('input', (e) => apply(Number(e.target.value)));
  range.addEventListener('change', (e) => setStateValue('pos', Number(e.target.value)));
}
"""

_COMPONENT = st.components.v2.component("npdg_before_after", css=_CSS, js=_JS)


def data_url(image: np.ndarray) -> str:
    """A uint8 ``[H, W, 3]`` image as a ``data:image/jpeg;base64,...`` URL (JPEG at quality 92: about
    20× faster to encode than PNG, which a rerun of every toggle feels)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="JPEG", quality=92)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def before_after(a: np.ndarray, b: np.ndarray, label_a: str, label_b: str, *, key: str, pos: int = 50) -> int:
    """Render the split view (A left of the line, B right of it); returns the last released position
    (0–100)."""
    if a.shape != b.shape:
        raise ValueError(f"the two images differ in size: {a.shape} vs {b.shape}")
    # labels are set with textContent in the browser: never parsed as HTML
    data = {"a": data_url(a), "b": data_url(b), "label_a": str(label_a), "label_b": str(label_b),
            "pos": int(st.session_state.get(f"_{key}_pos", pos))}
    result = _COMPONENT(data=data, key=key, on_pos_change=lambda: None)
    value = getattr(result, "pos", None)
    if isinstance(value, int | float) and 0 <= value <= 100:
        st.session_state[f"_{key}_pos"] = int(value)
    return int(st.session_state.get(f"_{key}_pos", pos))
