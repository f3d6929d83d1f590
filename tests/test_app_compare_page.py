"""The Compare page under AppTest: two zoo models on one scene in every domain (image | GT | A | B |
errors A | errors B), class and opacity toggles, the before/after component's payload, synchronized
zoom, per-class IoU with a click that picks the class, the mIoU table, the Prune page's plan as model
B, your own image without a label, and bad input as messages."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from apptest_helpers import charts, open_page
from PIL import Image
from streamlit.testing.v1 import AppTest

from npdg.recipes import zoo
from npdg.service.data import DOMAIN_NAMES

APP = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
pytestmark = pytest.mark.skipif(not all((zoo.ZOO_DIR / n / "model.safetensors").is_file() for n in ("r18-erm", "r18-npdg")),
                                reason="zoo r18-erm / r18-npdg not shipped")


def _open(page: str = "../pages/compare.py", **query) -> AppTest:
    return open_page(page, **query)


def _images(at: AppTest) -> int:
    return sum(len(el.proto.imgs) for el in at.get("image"))


_charts = charts


@pytest.fixture(scope="module")
def page() -> AppTest:
    return _open()


def test_grid_scores_and_split_view(page):
    at = page
    assert at.title[0].value.startswith("Compare")
    assert at.selectbox(key="a").value == "zoo:r18-erm" and at.selectbox(key="b").value == "zoo:r18-npdg"
    assert not at.error
    assert _images(at) == 2 * len(DOMAIN_NAMES)  # per domain: image | GT | A | B, and errors A | errors B
    table = at.dataframe[0].value
    assert list(table["domain"]) == list(DOMAIN_NAMES) and {"A mIoU", "B mIoU", "Δ (B − A)"} <= set(table.columns)
    np.testing.assert_allclose(table["Δ (B − A)"], table["B mIoU"] - table["A mIoU"])
    split = [e for e in at.main if type(e).__name__ == "UnknownElement" and "before_after" in str(e.proto)[:2000]]
    assert split, "the before/after component is on the page"
    titles = [c["layout"].get("title", {}).get("text", "") for c in _charts(at)]
    assert any(t.startswith("Per-class IoU") for t in titles)
    zoom = next(c for c in _charts(at) if len(c["data"]) == 2 and c["data"][0]["type"] == "image")
    assert zoom["layout"]["xaxis2"]["matches"] == "x" and zoom["layout"]["yaxis2"]["matches"] == "y"


def test_class_toggle_and_bar_click_pick_the_error_class(page):
    at = page
    at.selectbox(key="cls").set_value("car").run()
    assert not at.exception and not at.error
    at.session_state["cmp_classes"] = {"selection": {"points": [{"x": "road", "y": 50.0, "curve_number": 0}],
                                                     "point_indices": [0], "box": [], "lasso": []}}
    at.run()
    assert not at.exception
    assert at.selectbox(key="cls").value == "road"
    at.slider(key="op").set_value(0.2).run()
    at.selectbox(key="cls").set_value("all classes (right / wrong)").run()
    assert not at.exception


def test_fewer_domains_and_another_scene(page):
    at = page
    at.multiselect(key="doms").set_value(["source", "fog"]).run()
    assert _images(at) == 4 and len(at.dataframe[0].value) == 2
    at.number_input(key="scene").set_value(5).run()
    assert not at.exception and not at.error
    at.multiselect(key="doms").set_value([]).run()
    assert any("at least one domain" in i.value for i in at.info)
    at.multiselect(key="doms").set_value(list(DOMAIN_NAMES)).run()


def test_the_prune_pages_plan_is_model_b():
    at = _open("../pages/prune.py", rate="0.3")
    at.switch_page("../pages/compare.py").run()
    assert not at.exception
    plans = [o for o in at.selectbox(key="b").options if o.startswith("plan:")]
    assert plans == ["plan:zoo:r18-npdg-sparse|npdg|0.30"]
    at.selectbox(key="b").set_value(plans[0]).run()
    assert not at.exception and not at.error
    assert _images(at) == 2 * len(DOMAIN_NAMES)


def _png(mode: str) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (300, 200), 120 if mode == "L" else (90, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def test_your_own_image_without_a_label():
    at = _open()
    at.radio(key="input").set_value("Your image").run()
    at.file_uploader(key="compare_upload").upload("grey.png", _png("L"), "image/png").run()
    assert not at.exception and not at.error
    assert _images(at) == 3  # image | A | B — no label, no errors, no metrics
    assert not at.dataframe
    assert any("greyscale" in c.value and "No label" in c.value for c in at.caption)
    at.file_uploader(key="compare_upload").upload("notes.png", b"plain text, not an image", "image/png").run()
    assert not at.exception and len(at.error) == 1 and "notes.png" in at.error[0].value


def test_your_own_image_with_its_label_and_a_label_that_does_not_fit():
    at = _open()
    at.radio(key="input").set_value("Your image").run()
    at.file_uploader(key="compare_upload").upload("street.png", _png("RGB"), "image/png").run()
    label = np.full((200, 300), 2, np.uint8)  # building everywhere (train ids)
    label[150:] = 0
    buf = io.BytesIO()
    Image.fromarray(label).save(buf, format="PNG")
    at.file_uploader(key="compare_label").upload("street_label.png", buf.getvalue(), "image/png").run()
    assert not at.exception and not at.error
    assert _images(at) == 2  # image | label | A | B, and errors A | errors B
    assert any("mIoU on your image" in m.value for m in at.markdown)
    assert any("street_label.png" in c.value and "nearest-neighbour" in c.value for c in at.caption)
    small = io.BytesIO()
    Image.fromarray(label[:100]).save(small, format="PNG")
    at.file_uploader(key="compare_label").upload("other.png", small.getvalue(), "image/png").run()
    assert not at.exception and len(at.error) == 1 and "300×100" in at.error[0].value


def test_an_uploaded_checkpoint_becomes_model_b_and_a_pickle_is_refused(dashboard_cache):
    import torch

    at = _open()
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    at.sidebar.file_uploader(key="ckpt_upload").upload("model.pt", buf.getvalue(), "application/octet-stream").run()
    assert not at.exception and len(at.error) == 1 and "pickle" in at.error[0].value
    assert at.selectbox(key="b").value == "zoo:r18-npdg"
    data = (zoo.ZOO_DIR / "r18-dsp" / "model.safetensors").read_bytes()
    at.sidebar.file_uploader(key="ckpt_upload").upload("mine.safetensors", data, "application/octet-stream").run()
    assert not at.exception and not at.error
    assert at.selectbox(key="b").value.startswith("up:") and _images(at) == 2 * len(DOMAIN_NAMES)
    assert any("stored as" in s.value for s in at.sidebar.success)
