"""The Styles page under AppTest: DSP styles with the model's CE, ascent with CE per step, traversal,
DSP next to the held-out looks; the model panel lists the shipped zoo."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from npdg.recipes import zoo

APP = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
pytestmark = pytest.mark.skipif(not (zoo.ZOO_DIR / "r18-erm" / "card.json").is_file(), reason="zoo r18-erm not shipped")


def _captions(at: AppTest) -> list[str]:
    return [img.caption for el in at.get("image") for img in el.proto.imgs]


@pytest.fixture()
def page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.switch_page("../pages/styles.py").run()
    assert not at.exception, at.exception
    return at


def _tab(at: AppTest, label: str) -> AppTest:
    """Open a tab (only the open tab is computed and drawn; in the browser a click does this)."""
    at.session_state["tab"] = label
    at.run()
    assert not at.exception, at.exception
    return at


def test_sample_shows_k_styles_with_ce_and_the_model_panel(page):
    assert page.title[0].value.startswith("Styles")
    assert page.selectbox(key="m").value == "zoo:r18-erm"
    caps = _captions(page)
    assert sum(c.startswith("style ") and "CE" in c for c in caps) == 6  # default K
    assert not any(c.startswith("held-out: ") or c.startswith("ε[0]") for c in caps)  # closed tabs cost nothing
    assert sum(c.startswith("held-out: ") for c in _captions(_tab(page, "DSP vs held-out"))) == 6  # the held-out row
    assert sum(c.startswith("ε[0]") for c in _captions(_tab(page, "Traverse"))) == 7  # traversal −3…3
    _tab(page, "Sample")
    page.slider(key="k").set_value(3).run()
    assert sum(c.startswith("style ") and "CE" in c for c in _captions(page)) == 3
    assert page.slider(key="k").value == 3  # URL binding itself is checked in the browser (tests/e2e)
    assert not page.error and not page.exception


def test_ascend_raises_ce_and_plots_it(page):
    _tab(page, "Ascend")
    page.slider(key="k").set_value(2).run()
    page.slider(key="steps").set_value(2).run()
    page.button[0].click().run()
    assert not page.exception and not page.error
    caps = [c for c in _captions(page) if c.startswith("CE ")]
    assert len(caps) == 4  # 2 random + 2 ascended
    before = [float(c.split()[1]) for c in caps[:2]]
    after = [float(c.split()[1]) for c in caps[2:]]
    assert sum(after) > sum(before)  # ascent finds styles the model gets more wrong


# -------------------------------------------------------------------------------------------------
# your own image
# -------------------------------------------------------------------------------------------------
def _image_bytes(mode: str = "RGB", size=(300, 200), fmt: str = "PNG") -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], 4 if mode == "RGBA" else 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGBA" if mode == "RGBA" else "RGB")
    if mode == "L":
        img = img.convert("L")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_an_uploaded_image_is_restyled_with_its_own_prediction_as_target(page):
    page.radio(key="input").set_value("Your image").run()
    assert not page.exception
    assert any("Upload an image" in i.value for i in page.info)
    page.file_uploader(key="styles_upload").upload("street.png", _image_bytes("RGBA"), "image/png").run()
    assert not page.exception and not page.error, [e.value for e in page.error]
    caps = " ".join(c.value for c in page.caption)
    assert "street.png" in caps and "composited on white" in caps and "run at 256×160" in caps
    assert "own prediction" in caps
    imgs = [img for el in page.get("image") for img in el.proto.imgs]
    assert any(c.caption == "input (your image)" for c in imgs)
    assert sum(c.caption.startswith("style ") and "CE" in c.caption for c in imgs) == 6
    page.toggle(key="pred").set_value(True).run()  # prediction overlay on each style
    assert not page.exception and not page.error
    assert any("no renderings in the held-out domains" in i.value for i in _tab(page, "DSP vs held-out").info)


@pytest.mark.parametrize("payload, name", [(b"GIF89a not really", "x.png"), (b"\x89PNG\r\n\x1a\n broken", "y.png")])
def test_a_bad_upload_is_a_message_and_the_page_survives(page, payload, name):
    page.radio(key="input").set_value("Your image").run()
    page.file_uploader(key="styles_upload").upload(name, payload, "image/png").run()
    assert not page.exception
    assert len(page.error) == 1 and name in page.error[0].value
    page.radio(key="input").set_value("Synthetic scene").run()  # back to a scene: everything works again
    assert not page.exception and not page.error


def test_prediction_overlay_on_scene_styles(page):
    page.slider(key="k").set_value(2).run()
    page.toggle(key="pred").set_value(True).run()
    assert not page.exception and not page.error
