"""Real datasets in the dashboard under AppTest: added in the sidebar or from the environment, browsed on
the Data page, predicted and scored on the Compare page; a bad root is a message, not a traceback."""

from __future__ import annotations

import pytest
from apptest_helpers import open_page
from fixtures_real import write_cityscapes

from npdg.recipes import zoo
from npdg.service import datasets


@pytest.fixture()
def cityscapes(tmp_path):
    write_cityscapes(tmp_path / "cs", size=(64, 128))
    return f"cityscapes:{tmp_path / 'cs'}"


def _images(at) -> int:
    return sum(len(el.proto.imgs) for el in at.get("image"))


def test_the_data_page_browses_a_dataset_added_in_the_sidebar(cityscapes, tmp_path):
    at = open_page(None, data_src="Real dataset")
    assert not at.exception and any("No real dataset yet" in i.value for i in at.info)
    at.sidebar.text_input(key="dataset_input").input(f"cityscapes:{tmp_path / 'nothing'}").run()
    assert not at.exception and any("no usable split" in e.value for e in at.error)
    at.sidebar.text_input(key="dataset_input").input(cityscapes).run()
    assert not at.exception and not at.error
    assert _images(at) == 3  # the train split has 3 images
    at.selectbox(key="data_dsplit").set_value("val").run()
    assert _images(at) == 2 and any("no same-scene renderings" in c.value for c in at.caption)


@pytest.mark.skipif(not (zoo.ZOO_DIR / "r18-erm" / "model.safetensors").is_file(), reason="zoo not shipped")
def test_compare_and_explain_run_on_an_image_of_a_configured_dataset(cityscapes, monkeypatch):
    monkeypatch.setenv(datasets.ENV, cityscapes)
    at = open_page("../pages/compare.py", input="Real dataset")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert _images(at) == 2 and any("mIoU on your image" in m.value for m in at.markdown)
    at = open_page("../pages/explain.py", input="Real dataset", target="class", **{"class": "road"})
    assert not at.exception and not at.error, [e.value for e in at.error]


def test_the_data_page_shows_your_image_with_its_label():
    import io

    import numpy as np
    from PIL import Image

    at = open_page(None, data_src="Your image")
    assert not at.exception and any("Upload an image" in i.value for i in at.info)
    buf, lab = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (120, 80), (90, 120, 200)).save(buf, format="PNG")
    Image.fromarray(np.full((80, 120), 10, np.uint8)).save(lab, format="PNG")  # sky everywhere
    at.file_uploader(key="data_upload").upload("mine.png", buf.getvalue(), "image/png").run()
    assert not at.exception and _images(at) == 1 and any("No label" in i.value for i in at.info)
    at.file_uploader(key="data_label").upload("mine_label.png", lab.getvalue(), "image/png").run()
    assert not at.exception and not at.error and _images(at) == 2
    assert any("sky" in m.value for m in at.markdown)
