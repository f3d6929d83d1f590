"""The Explain page under AppTest: Grad-CAM A vs B on the false negatives of a class, every target
kind (a drawn box included), a slow method behind its button, the per-unit view coloured by
sensitivity with links to the drill-down, the Prune page's plan as model B, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from apptest_helpers import charts, open_page

from npdg.recipes import zoo
from npdg.service import jobs

pytestmark = pytest.mark.skipif(not all((zoo.ZOO_DIR / n / "model.safetensors").is_file() for n in ("r18-erm", "r18-npdg")),
                                reason="zoo r18-erm / r18-npdg not shipped")
PAGE = "../pages/explain.py"


def _chart(at, title: str) -> dict:
    return next(c for c in charts(at) if (c["layout"].get("title") or {}).get("text", "").startswith(title))


def _images(at) -> int:
    return sum(len(el.proto.imgs) for el in at.get("image"))


@pytest.fixture(scope="module")
def page():
    return open_page(PAGE)


def test_gradcam_a_vs_b_and_the_units_of_a_layer(page):
    at = page
    assert at.title[0].value.startswith("Explain")
    assert at.radio(key="target").value == "false negatives" and at.selectbox(key="class").value == "car"
    assert at.selectbox(key="method").value == "gradcam" and not at.error
    assert _images(at) == 2  # A and B, one colour scale
    assert any("one colour scale" in c.value for c in at.caption)
    bars = _chart(at, "Top")
    assert len(bars["data"][0]["x"]) == 24
    scatter = _chart(at, "Contribution vs")
    assert len(scatter["data"][0]["x"]) == 512  # every unit of encoder.layer4.1.bn2
    assert any("style-sensitive quarter" in c.value for c in at.caption)


def test_every_target_kind_and_a_drawn_box(page):
    at = page
    for kind in ("class", "false positives", "box"):
        at.radio(key="target").set_value(kind).run()
        assert not at.exception and not at.error, (kind, [e.value for e in at.error])
    assert any("draw a box" in i.value for i in at.info)
    at.session_state["ex_box"] = {"selection": {"box": [{"x": [10.4, 120.2], "y": [20, 100]}], "points": [], "lasso": []}}
    at.run()
    assert not at.exception and not at.error and _images(at) == 2
    assert any("x 10–121, y 20–100 px" in c.value for c in at.caption)
    at.session_state["ex_box"] = {"selection": {"box": [{"x": [-500, -400], "y": [20, 100]}]}}
    at.run()
    assert not at.exception and any("does not overlap" in i.value for i in at.info)
    at.radio(key="target").set_value("false negatives").run()


def test_a_slow_method_runs_behind_its_button_with_progress(page):
    at = page
    at.selectbox(key="method").set_value("ablation").run()
    assert not at.exception and _images(at) == 0 and at.button(key="explain_go")
    at.number_input(key="ablation_cells").set_value(2).run()
    at.button(key="explain_go").click().run()
    jobs.wait_all(timeout=300)
    at.run()
    assert not at.exception and not at.error and _images(at) == 2
    at.selectbox(key="method").set_value("gradcam").run()


def test_the_scatter_links_to_the_drill_down_and_units_of_b(page):
    at = page
    at.session_state["ex_scatter"] = {"selection": {"points": [
        {"customdata": [7, "net.encoder.layer4.1.bn2"]}, {"customdata": [3, "net.encoder.layer4.1.bn2"]}]}}
    at.run()
    links = [el for el in at.main if type(el).__name__ == "PageLink"]
    assert [link.proto.label for link in links][:2] == ["unit 3", "unit 7"]
    assert "unit=3" in links[0].proto.query_string and "layer=encoder.layer4.1.bn2" in links[0].proto.query_string
    at.radio(key="uw").set_value("B").run()
    assert not at.exception and not at.error


def test_the_prune_pages_plan_and_bad_links():
    at = open_page("../pages/prune.py", rate="0.3")
    at.switch_page(PAGE).run()
    plans = [o for o in at.selectbox(key="b").options if o.startswith("plan:")]
    at.selectbox(key="b").set_value(plans[0]).run()
    assert not at.exception and not at.error and _images(at) == 2
    units = _chart(at, "Top")
    assert units  # B's units: the plan's pruned ones contribute exactly 0 (tests/test_attribution.py)
    for query in ({"ig_n_steps": "1e9"}, {"method": "bogus"}, {"class": "unicorn"}, {"scene": "nan"}, {"target": "x"}):
        bad = open_page(PAGE, **query)
        assert not bad.exception, query
    assert np.isfinite(open_page(PAGE, method="ig", ig_n_steps="1e9").number_input(key="ig_n_steps").value)


@pytest.mark.skipif(not (zoo.ZOO_DIR / "mitb0-erm" / "model.safetensors").is_file(), reason="zoo mitb0-erm not shipped")
def test_segformer_heads_grad_cam_and_units():
    at = open_page(PAGE, a="zoo:mitb0-erm", b="zoo:mitb0-dsp", target="class", **{"class": "road"})
    assert not at.exception and not at.error, [e.value for e in at.error]
    heads = [n for n in at.selectbox(key="layer").options if ".attn" in n or "attention" in n]
    assert heads, at.selectbox(key="layer").options[:5]
    at.selectbox(key="layer").set_value(heads[-1]).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert _images(at) == 2 and len(_chart(at, "Top")["data"][0]["x"]) >= 1
