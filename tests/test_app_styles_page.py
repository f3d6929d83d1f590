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


def test_sample_shows_k_styles_with_ce_and_the_model_panel(page):
    assert page.title[0].value.startswith("Styles")
    assert page.selectbox(key="m").value == "zoo:r18-erm"
    caps = _captions(page)
    assert sum(c.startswith("style ") and "CE" in c for c in caps) == 6  # default K
    assert sum(c.startswith("held-out: ") for c in caps) == 6  # the held-out row
    assert sum(c.startswith("ε[0]") for c in caps) == 7  # traversal −3…3
    page.slider(key="k").set_value(3).run()
    assert sum(c.startswith("style ") and "CE" in c for c in _captions(page)) == 3
    assert page.slider(key="k").value == 3  # URL binding itself is checked in the browser (tests/e2e)
    assert not page.error and not page.exception


def test_ascend_raises_ce_and_plots_it(page):
    page.slider(key="k").set_value(2).run()
    page.slider(key="steps").set_value(2).run()
    page.button[0].click().run()
    assert not page.exception and not page.error
    caps = [c for c in _captions(page) if c.startswith("CE ")]
    assert len(caps) == 4  # 2 random + 2 ascended
    before = [float(c.split()[1]) for c in caps[:2]]
    after = [float(c.split()[1]) for c in caps[2:]]
    assert sum(after) > sum(before)  # ascent finds styles the model gets more wrong
