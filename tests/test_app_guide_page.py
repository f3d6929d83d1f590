"""The Guide under AppTest: one step per screen with previous / next, a glossary, and every step's deep
link opens its real page with the preset settings — no exception, no error, the widgets set."""

from __future__ import annotations

import pytest
from apptest_helpers import open_page

from app import guide
from npdg.recipes import zoo

ZOO = ("r18-erm", "r18-npdg", "r18-npdg-sparse")


def test_steps_previous_next_and_the_glossary():
    at = open_page("../pages/guide.py")
    assert at.radio(key="tour").value == "shift" and not at.exception
    assert at.subheader[0].value == guide.STEPS[0].title
    at.button(key="guide_next").click().run()
    assert at.radio(key="tour").value == "DSP" and at.subheader[0].value.startswith("2 ·")
    at.button(key="guide_prev").click().run()
    assert at.radio(key="tour").value == "shift"
    assert any(m.value.startswith("**coupling group**") for m in at.markdown)
    assert not open_page("../pages/guide.py", tour="nonsense").exception


@pytest.mark.skipif(not all((zoo.ZOO_DIR / n / "model.safetensors").is_file() for n in ZOO), reason="zoo not shipped")
@pytest.mark.parametrize("step", guide.STEPS, ids=[s.name for s in guide.STEPS])
def test_every_deep_link_opens_its_page_with_the_presets(step):
    at = open_page("../pages/guide.py", tour=step.name)
    links = [el for el in at.main if type(el).__name__ == "PageLink"]
    assert len(links) == 1 and links[0].proto.label == step.link_label
    page = open_page(f"../pages/{step.page}.py", **step.query)
    assert not page.exception and not page.error, [e.value for e in page.error]
    for key, value in step.query.items():
        widget = next((w for w in page.main if getattr(w, "key", None) == key), None)
        widget = widget or next((w for w in page.sidebar if getattr(w, "key", None) == key), None)
        assert widget is not None, key
        assert _text(widget.value) == _text(value), (key, widget.value, value)


def _text(v):
    """A widget value as the URL writes it (lists element-wise, booleans lower-case, 0.30 == 0.3)."""
    if isinstance(v, list | tuple):
        return [_text(x) for x in v]
    if isinstance(v, bool):
        return str(v).lower()
    try:
        return f"{float(v):g}"
    except (TypeError, ValueError):
        return str(v)
