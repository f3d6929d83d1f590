"""The Unit page under AppTest: deep link ?layer=&unit=, scores and partners from the zoo table,
maps in every domain on one scale, top patches from the background atlas, SegFormer heads,
out-of-range units and broken models as messages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from apptest_helpers import charts, open_page
from streamlit.testing.v1 import AppTest

from npdg.recipes import zoo
from npdg.service import jobs
from npdg.service.data import DOMAIN_NAMES

APP = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
R18 = zoo.ZOO_DIR / "r18-erm"
pytestmark = pytest.mark.skipif(not (R18 / "model.safetensors").is_file(), reason="zoo r18-erm not shipped")


def _open(**query) -> AppTest:
    return open_page("../pages/unit.py", **query)


_charts = charts


def test_deep_link_shows_scores_maps_and_patches():
    at = _open(layer="encoder.layer1.0.bn1", unit="5", scene="2")
    assert at.title[0].value.startswith("Unit")
    assert at.selectbox(key="layer").value == "net.encoder.layer1.0.bn1"
    assert at.number_input(key="unit").value == 5 and at.number_input(key="scene").value == 2
    assert not at.error, [e.value for e in at.error]
    labels = {m.label for m in at.metric}
    assert {"combined w", "unary wᵁ", "binary wᴮ", "|γ|", "rank in layer", "coupling group"} <= labels
    rank = next(m.value for m in at.metric if m.label == "rank in layer")
    assert rank.endswith("/ 64")
    # the maps: one image and one facet per domain, one shared colour range
    captions = [img.caption for el in at.get("image") for img in el.proto.imgs]
    assert [c.split(" (")[0] for c in captions[:len(DOMAIN_NAMES)]] == list(DOMAIN_NAMES)
    maps = next(c for c in _charts(at) if len(c.get("layout", {}).get("annotations", [])) == len(DOMAIN_NAMES))
    titles = [a["text"] for a in maps["layout"]["annotations"]]
    assert [t.split(":")[0] for t in titles] == list(DOMAIN_NAMES)
    assert maps["layout"]["coloraxis"]["cmin"] < maps["layout"]["coloraxis"]["cmax"]
    # top patches come from a background atlas job
    jobs.wait_all(timeout=180)
    at.run()
    assert not at.exception and not at.error
    captions = " ".join(c.value for c in at.caption)
    assert "scene" in captions and "whiskers" in captions
    profile = next(c for c in _charts(at) if "per domain" in c["layout"].get("title", {}).get("text", ""))
    assert {b["x"][0] for b in profile["data"]} <= set(DOMAIN_NAMES)
    assert list(Path(os.environ[jobs.CACHE_ENV], "frames").glob("*.csv"))  # persisted for the next session


def test_partners_link_to_their_own_drill_down():
    table_has_partners = "partners" in (R18 / "sensitivity_dsp.csv").read_text().splitlines()[0]
    at = _open(layer="encoder.bn1", unit="0")
    links = at.get("page_link")
    if table_has_partners:
        assert links and all(link.proto.label.startswith("unit ") for link in links)
        assert all("|R|" in link.proto.label for link in links)
    else:
        assert any("before partners were kept" in c.value for c in at.caption)


def test_switching_to_a_narrower_layer_keeps_the_unit_in_range():
    at = _open(layer="encoder.layer4.1.bn2", unit="500")
    assert not at.exception
    at.selectbox(key="layer").set_value("net.encoder.bn1").run()
    assert not at.exception
    assert 0 <= at.number_input(key="unit").value < 64


def test_segformer_heads(tmp_path):
    mit = zoo.ZOO_DIR / "mitb0-erm"
    if not (mit / "model.safetensors").is_file():
        pytest.skip("zoo mitb0-erm not shipped")
    at = _open(m="zoo:mitb0-erm", layer="encoder.block2.0.attn", unit="1")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.number_input(key="unit").value == 1
    assert any("norm of the head" in c.value for c in at.caption)


def test_a_broken_model_is_a_message(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "junk"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model:\n  arch: deeplabv3plus\n  encoder: resnet18\ntrain:\n  mode: erm\n  iters: 1\n")
    (run / "model.safetensors").write_bytes(b"not a model")
    monkeypatch.chdir(tmp_path)
    at = _open()
    at.selectbox(key="m").set_value("run:runs/junk").run()
    assert not at.exception
    assert len(at.error) == 1


@pytest.mark.parametrize("value", ["inf", "-1e400", "nan", "12abc"])
def test_non_finite_numbers_in_the_link_fall_back_to_defaults(value):
    at = _open(layer="encoder.bn1", unit=value, scene=value)  # Streamlit's own int binding crashes on inf
    assert not at.exception
    assert at.number_input(key="unit").value == 0 and at.number_input(key="scene").value == 0


def test_the_unit_on_your_own_image_without_stopping_the_page():
    import io

    from PIL import Image

    at = _open(layer="encoder.layer1.0.bn1", unit="5")
    jobs.wait_all(timeout=180)
    at.run()
    assert any("Upload an image" in i.value for i in at.info)  # the hint, and the rest of the page still drawn
    assert any("whiskers" in c.value for c in at.caption)
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (200, 60, 40)).save(buf, format="PNG")
    at.file_uploader(key="unit_upload").upload("red.png", buf.getvalue(), "image/png").run()
    assert not at.exception and not at.error
    own = next(c for c in _charts(at) if c["layout"].get("annotations")
               and c["layout"]["annotations"][0]["text"].startswith("your image: max"))
    assert own["layout"]["coloraxis"]["cmin"] < own["layout"]["coloraxis"]["cmax"]
    at.file_uploader(key="unit_upload").upload("bad.png", b"not an image", "image/png").run()
    assert not at.exception and any("bad.png" in e.value for e in at.error)
