"""The sidebar model panel under AppTest: your own checkpoint or run folder becomes the page's model;
bad files and folders give a message, never a traceback; a ?m=run:PATH link opens that folder."""

from __future__ import annotations

import pytest
from apptest_helpers import open_page

from npdg.recipes import zoo

pytestmark = pytest.mark.skipif(not (zoo.ZOO_DIR / "r18-dsp" / "model.safetensors").is_file(), reason="zoo r18-dsp not shipped")


def test_an_uploaded_checkpoint_and_a_run_folder_become_the_model(dashboard_cache, tmp_path):
    at = open_page("../pages/sensitivity.py")
    assert at.selectbox(key="m").value == "zoo:r18-erm"
    data = (zoo.ZOO_DIR / "r18-dsp" / "model.safetensors").read_bytes()
    at.sidebar.file_uploader(key="ckpt_upload").upload("my-dsp.safetensors", data, "application/octet-stream").run()
    assert not at.exception and not at.error
    assert at.selectbox(key="m").value.startswith("up:")
    assert any("your upload: deeplabv3plus/resnet18" in c.value for c in at.sidebar.caption)
    at.sidebar.text_input(key="run_folder_input").input(str(tmp_path)).run()
    assert not at.exception and len(at.error) == 1 and "no model.safetensors" in at.error[0].value
    folder = zoo.ZOO_DIR / "r18-dsp"
    at.sidebar.text_input(key="run_folder_input").input(str(folder)).run()
    assert not at.exception and not at.error
    assert at.selectbox(key="m").value == f"run:{folder.resolve()}"


def test_a_link_to_a_run_folder_opens_it_and_a_bad_one_falls_back():
    folder = (zoo.ZOO_DIR / "r18-dsp").resolve()
    at = open_page("../pages/sensitivity.py", m=f"run:{folder}")
    assert at.selectbox(key="m").value == f"run:{folder}" and not at.error
    at = open_page("../pages/sensitivity.py", m="run:/no/such/folder")
    assert at.selectbox(key="m").value == "zoo:r18-erm" and not at.exception
    at = open_page("../pages/sensitivity.py", m="up:0123456789abcdef")
    assert at.selectbox(key="m").value == "zoo:r18-erm" and not at.exception
