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


def test_grid_rows_are_the_overlays_side_by_side_and_cached(runs):
    """Two pictures per domain: exactly viz.overlay / error_overlay of each tile, 4 white pixels apart."""
    from npdg import viz

    a, b = runs
    ra, rb = compare.ModelRef(a), compare.ModelRef(b)
    kw = dict(index=2, domains=("source", "fog"), size=SIZE, class_id=0)
    rows = compare.grid_rows(ra, rb, opacity=0.7, classes=[0, 1, 2], **kw)
    pa, pb = (compare.ref_scene_predictions(r, **kw)[1] for r in (ra, rb))
    h, w = SIZE
    preds, errors = rows[1]
    assert len(rows) == 2 and preds.shape == (h, 4 * w + 3 * 4, 3) and errors.shape == (h, 2 * w + 4, 3)
    assert not preds.flags.writeable
    tiles = [part[:, k * (w + 4): k * (w + 4) + w] for part in rows[1] for k in range(part.shape[1] // w)]
    expected = [pa.image, viz.overlay(pa.image, pa.label, 0.7, [0, 1, 2]), viz.overlay(pa.image, pa.pred, 0.7, [0, 1, 2]),
                viz.overlay(pa.image, pb.pred, 0.7, [0, 1, 2]), compare.error_overlay(pa.image, pa.error, 0.7),
                compare.error_overlay(pa.image, pb.error, 0.7)]
    for k, (got, want) in enumerate(zip(tiles, expected)):
        assert np.array_equal(got, want), compare.GRID_COLUMNS[k]
    assert len(tiles) == 6 and (preds[:, w:w + 4] == 255).all()
    assert compare.grid_rows(ra, rb, opacity=0.7, classes=[2, 1, 0], **kw) is rows  # same setting: cached
    assert not np.array_equal(compare.grid_rows(ra, rb, opacity=0.2, classes=[0, 1, 2], **kw)[1][0], preds)
