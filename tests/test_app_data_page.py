"""The Data page under Streamlit's AppTest: it renders, and its widgets change what is shown."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from npdg.service.data import SPLIT_LENGTHS

APP = str(Path(__file__).resolve().parent.parent / "app" / "main.py")


def _image_urls(at: AppTest) -> list[str]:
    """Media URLs of the rendered images; Streamlit names media files by a hash of their bytes."""
    urls = []
    for el in at.get("image"):
        urls.extend(img.url for img in el.proto.imgs)
    return urls


@pytest.fixture()
def app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def test_renders_default_domains(app):
    assert app.title[0].value.startswith("Data")
    urls = _image_urls(app)
    assert len(urls) == len(app.multiselect(key="domains").value) >= 5
    assert len(set(urls)) == len(urls)  # every domain looks different
    assert not app.error


def test_scene_opacity_view_and_classes_change_the_images(app):
    before = _image_urls(app)
    app.number_input(key="scene").set_value(3).run()
    after_scene = _image_urls(app)
    assert set(after_scene).isdisjoint(before)

    app.slider(key="opacity").set_value(0.9).run()
    after_opacity = _image_urls(app)
    assert set(after_opacity).isdisjoint(after_scene)

    classes = app.multiselect(key="data_classes_val_3")
    classes.set_value(classes.value[:1]).run()
    assert set(_image_urls(app)).isdisjoint(after_opacity)

    app.radio(key="view").set_value("Image").run()
    images_only = _image_urls(app)
    app.radio(key="view").set_value("Labels").run()
    assert set(_image_urls(app)).isdisjoint(images_only)
    assert not app.exception


def test_domain_selection_and_deep_link(app):
    app.multiselect(key="domains").set_value(["source", "night"]).run()
    assert len(_image_urls(app)) == 2  # the URL itself is checked in the browser (tests/e2e)


def test_empty_domain_selection_explains(app):
    app.multiselect(key="domains").set_value([]).run()
    assert not _image_urls(app)
    assert "Pick at least one domain" in app.info[0].value


def test_query_params_open_the_linked_view():
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["scene"] = "7"
    at.query_params["domains"] = "fog,bogus"
    at.query_params["opacity"] = "nonsense"
    at.run()
    assert not at.exception
    assert at.number_input(key="scene").value == 7
    assert at.multiselect(key="domains").value == ["fog"]
    assert at.slider(key="opacity").value == 0.5


@pytest.mark.parametrize("opacity,scene", [("nan", "nan"), ("inf", "inf"), ("-inf", "1e999"), ("NaN", "-nan"),
                                           ("1e999", "-1e400")])
def test_non_finite_query_params_fall_back_to_the_defaults(opacity, scene):
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["opacity"] = opacity
    at.query_params["scene"] = scene
    at.run()
    assert not at.exception
    assert at.slider(key="opacity").value == 0.5
    assert at.number_input(key="scene").value == 0


def test_out_of_range_query_params_are_clamped():
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["opacity"] = "7"
    at.query_params["scene"] = "100000"
    at.query_params["res"] = "-3"
    at.run()
    assert not at.exception
    assert at.slider(key="opacity").value == 1.0
    assert at.number_input(key="scene").value == 199
    assert at.selectbox(key="res").index == 0


@pytest.mark.parametrize("query, expect", [
    ({"domains": ["fog", "night"]}, ["fog", "night"]),  # the bound format: repeated values
    ({"domains": "night,source,bogus"}, ["night", "source"]),  # the old comma format still opens the view
    ({"res": "256×512 (default)"}, None),
    ({"res": "1"}, None),  # old links gave the resolution's index
])
def test_old_and_new_link_formats_open_the_same_view(query, expect):
    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception and not at.warning
    if expect is not None:
        assert at.multiselect(key="domains").value == expect
    else:
        assert at.selectbox(key="res").value == "256×512 (default)"


def test_a_train_scene_index_is_kept_in_range_when_the_split_changes():
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.selectbox(key="split").set_value("train").run()
    at.number_input(key="scene").set_value(SPLIT_LENGTHS["train"] - 1).run()
    assert SPLIT_LENGTHS["train"] > SPLIT_LENGTHS["val"]
    at.selectbox(key="split").set_value("val").run()
    assert not at.exception
    assert at.number_input(key="scene").value == SPLIT_LENGTHS["val"] - 1


def test_sidebar_shows_the_device_badge(app):
    assert any(("CPU" in c.value or "GPU" in c.value) for c in app.sidebar.caption)
