"""Compare page service (npdg.service.compare): scores per domain, several models, per-scene error maps."""

from __future__ import annotations

import numpy as np
import pytest
from test_service_core import make_assets

from npdg.service import compare

SIZE = (64, 128)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    a, _ = make_assets(tmp_path_factory.mktemp("cmp_a"), seed=0)
    b, _ = make_assets(tmp_path_factory.mktemp("cmp_b"), seed=1)
    return a, b


def test_evaluate_and_compare_models(runs):
    a, b = runs
    scores = compare.evaluate_model(a, domains=("source", "fog", "suburb"), n_images=2, size=SIZE)
    t = scores.domains
    assert list(t.columns) == compare.DOMAIN_COLUMNS and t["num_images"].tolist() == [2, 2, 2]
    assert t["role"].tolist() == ["source", "heldout", "content_shift"] and scores.targets == ("fog",)
    assert scores.mean_target_miou == pytest.approx(t.set_index("domain").loc["fog", "miou"])
    assert set(scores.per_class["domain"]) == {"source", "fog", "suburb"}
    t.loc[:, "miou"] = -1.0  # a copy
    assert (compare.evaluate_model(a, domains=("source", "fog", "suburb"), n_images=2, size=SIZE).domains["miou"] >= 0).all()
    both = compare.compare_models({"A": a, "B": b}, domains=("fog",), n_images=1, size=SIZE)
    assert both["model"].tolist() == ["A", "B"] and both["miou"].iloc[0] != both["miou"].iloc[1]


def test_scene_predictions_and_error_maps(runs):
    a, _ = runs
    preds = compare.scene_predictions(a, index=3, domains=("source", "rain"), size=SIZE)
    p = preds[1]
    assert p.domain == "rain" and p.pred.shape == SIZE and not p.pred.flags.writeable
    valid = p.label != 255
    assert p.error.tp.sum() == int((p.pred == p.label)[valid].sum())
    assert 0.0 <= p.miou <= 1.0
    road = compare.scene_predictions(a, index=3, domains=("rain",), size=SIZE, class_id=0)[0]
    assert road.error.class_id == 0 and road.error.tp.sum() == int(((p.pred == 0) & (p.label == 0)).sum())
    assert np.array_equal(road.pred, p.pred)
