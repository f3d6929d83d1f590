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
