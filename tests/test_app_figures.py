"""app.figures: the hand-laid heatmap grid matches plotly's own subplot layout."""

from __future__ import annotations

import numpy as np
import pytest
from plotly.subplots import make_subplots

from app.figures import map_grid


@pytest.mark.parametrize(("n", "wrap"), [(1, 4), (3, 4), (8, 4), (6, 1), (7, 3)])
def test_map_grid_lays_out_like_make_subplots(n, wrap):
    maps = np.random.default_rng(0).random((n, 4, 8))
    fig = map_grid(maps, [f"map {i}" for i in range(n)], zmin=0.0, zmax=1.0, colorscale="Viridis", wrap=wrap)
    cols = min(wrap, n)
    rows = -(-n // cols)
    ref = make_subplots(rows=rows, cols=cols, horizontal_spacing=0.02, vertical_spacing=0.12 if rows > 1 else 0.0)
    for i in range(n):
        k = str(i + 1) if i else ""
        got_x, got_y = fig.layout[f"xaxis{k}"], fig.layout[f"yaxis{k}"]
        want_x, want_y = ref.layout[f"xaxis{k}"], ref.layout[f"yaxis{k}"]
        np.testing.assert_allclose(got_x.domain, want_x.domain, atol=1e-9)
        np.testing.assert_allclose(got_y.domain, want_y.domain, atol=1e-9)
        assert got_y.scaleanchor == f"x{k}" and got_y.autorange == "reversed"  # each map keeps its aspect, row 0 on top
        assert (fig.data[i].xaxis, fig.data[i].yaxis) == (f"x{k}", f"y{k}")
        np.testing.assert_allclose(fig.data[i].z, np.round(maps[i], 3), atol=1e-6)
    assert [a.text for a in fig.layout.annotations] == [f"map {i}" for i in range(n)]
    assert fig.layout.coloraxis.cmin == 0.0 and fig.layout.coloraxis.cmax == 1.0
    assert fig.layout.height == 40 + 190 * rows


def test_map_grid_needs_one_title_per_map():
    with pytest.raises(ValueError):
        map_grid(np.zeros((2, 4, 4)), ["only one"], zmin=0, zmax=1, colorscale="Viridis")
