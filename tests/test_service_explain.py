"""Explain page service (npdg.service.explain): unit layers and activation atlases on fixed scenes."""

from __future__ import annotations

import pytest
from test_service_core import make_assets

import npdg.service as svc
from npdg.service import explain

SIZE = (64, 128)


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("explain"))[0]


def test_unit_layers_and_atlas(run):
    layers = explain.unit_layers(run)
    assert list(layers.columns) == ["layer", "kind", "size"] and (layers["kind"] == "filter").all()
    name, size = layers.iloc[3]["layer"], int(layers.iloc[3]["size"])
    model = svc.shared_model(run)
    hooks = _hooks(model)
    atlas = explain.activation_atlas(run, name, domains=("source", "night"), indices=(0, 5), size=SIZE)
    assert len(atlas) == 2 * 2 * size and _hooks(model) == hooks and not model.training
    assert atlas["scene"].tolist()[:: size] == [0, 5, 0, 5]
    assert atlas["domain"].tolist()[:: size] == ["source", "source", "night", "night"]
    prof = explain.unit_profile(atlas, 0)
    assert prof["domain"].tolist() == ["source", "night"] and prof["scenes"].tolist() == [2, 2]
    assert (prof["min_max"] <= prof["max_max"]).all()


def test_unit_view_maps_every_domain_on_one_scale(run):
    import numpy as np

    layers = explain.unit_layers(run)
    name = layers.iloc[2]["layer"]
    view = explain.unit_view(run, name, 1, scene=3, domains=("source", "night", "fog"), size=SIZE)
    assert view.images.shape == (3, *SIZE, 3) and view.images.dtype == np.uint8
    assert view.maps.ndim == 3 and view.maps.shape[0] == 3 and not view.maps.flags.writeable
    assert view.vmin == view.maps.min() and view.vmax == view.maps.max()
    atlas = explain.activation_atlas(run, name, domains=("source", "night", "fog"), indices=(3,), size=SIZE)
    rows = atlas[atlas["unit"] == 1]
    np.testing.assert_allclose(view.peaks, rows["max"].to_numpy(), rtol=1e-5, atol=1e-6)  # the same tap as the atlas
    with pytest.raises(explain.ConfigError, match="out of range"):
        explain.unit_view(run, name, 10_000, size=SIZE)
    with pytest.raises(explain.ConfigError, match="not a unit layer"):
        explain.unit_view(run, "net.nope", 0, size=SIZE)


def test_atlas_job_and_top_patches(run, dashboard_cache):
    from npdg.service import jobs

    name = explain.unit_layers(run).iloc[1]["layer"]
    status = explain.atlas_job(run, name, domains=("source", "night"), scenes=3, size=SIZE)
    assert jobs.wait(status.key, 300).state == "done"
    atlas = explain.atlas_result(status)
    assert set(atlas["scene"]) == {0, 1, 2} and list((dashboard_cache / "frames").glob("*.csv"))
    patches = explain.top_patches(atlas, 0, k=2, size=SIZE)
    assert [p.domain for p in patches] == ["source", "source", "night", "night"]
    assert patches[0].value >= patches[1].value  # strongest first
    for p in patches:
        y0, x0, y1, x1 = p.box
        assert p.crop.shape == (y1 - y0, x1 - x0, 3) and 0 <= y0 < y1 <= SIZE[0] and 0 <= x0 < x1 <= SIZE[1]
    assert explain.patch_size((128, 256), (32, 64)) == 24 and explain.patch_size((128, 256), (8, 16)) == 48
    assert explain.patch_size((32, 32), (1, 1)) == 32  # never larger than the image
    with pytest.raises(explain.ConfigError):
        explain.top_patches(atlas, 10_000)
    with pytest.raises(explain.ConfigError):
        explain.atlas_job(run, name, scenes=0)
