"""Plotly figures built directly with ``graph_objects`` (a few ms each; ``plotly.express`` spends
~30 ms per figure on argument processing, which a λ slider feels on every rerun)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go


def colored_bars(x: Sequence, y: Sequence[float], *, cmin: float, cmax: float, colorscale: str, title: str = "",
                 x_title: str = "", y_title: str = "", hover: dict[str, Sequence] | None = None,
                 outline: Sequence[bool] | None = None, height: int = 330, colorbar: bool = True,
                 y_range: tuple[float, float] | None = None) -> go.Figure:
    """Bars coloured by their value on one fixed scale (NaN: no bar); ``outline`` marks bars with a red
    edge; ``hover`` adds named columns to the tooltip."""
    hover = hover or {}
    y = [float(v) if np.isfinite(v) else None for v in np.asarray(y, dtype=float)]
    custom = np.column_stack([np.asarray(v, dtype=object) for v in hover.values()]) if hover else None
    lines = "".join(f"<br>{name}: %{{customdata[{i}]}}" for i, name in enumerate(hover))
    marker = dict(color=list(y), cmin=cmin, cmax=cmax, colorscale=colorscale, showscale=colorbar,
                  colorbar=dict(title="", thickness=12))
    if outline is not None:
        marker["line"] = dict(color=["#ff2d55" if o else "rgba(0,0,0,0)" for o in outline], width=3)
    fig = go.Figure(go.Bar(x=list(x), y=list(y), marker=marker, customdata=custom,
                           hovertemplate=f"%{{x}}<br>{y_title}: %{{y:.3f}}{lines}<extra></extra>"))
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=40 if title else 10, b=0), xaxis_tickangle=-50,
                      xaxis_tickfont_size=10, xaxis_title=x_title, yaxis_title=y_title,
                      title=title or None)
    if y_range is not None:
        fig.update_yaxes(range=list(y_range))
    return fig


def unit_scatter(x: Sequence[float], y: Sequence[float], color: Sequence[float], units: Sequence[int], layer: str, *,
                 colorscale: str, title: str, x_title: str, y_title: str, extra: dict[str, Sequence[float]],
                 height: int = 400) -> go.Figure:
    """One point per unit, coloured on [0, 1]; ``customdata = [unit, layer, *extra]`` so a selection
    event names the units (and the layer they belong to)."""
    n = len(units)
    custom = np.empty((n, 2 + len(extra)), dtype=object)
    custom[:, 0] = [int(u) for u in units]
    custom[:, 1] = layer
    for i, vals in enumerate(extra.values()):
        custom[:, 2 + i] = [round(float(v), 3) for v in vals]
    lines = "".join(f"<br>{name}: %{{customdata[{2 + i}]}}" for i, name in enumerate(extra))
    fig = go.Figure(go.Scatter(
        x=list(x), y=list(y), mode="markers", customdata=custom,
        marker=dict(color=list(color), cmin=0, cmax=1, colorscale=colorscale, showscale=True, size=8,
                    colorbar=dict(title="w", thickness=12)),
        hovertemplate=f"unit %{{customdata[0]}}<br>{x_title}: %{{x:.3f}}<br>{y_title}: %{{y:.3f}}{lines}<extra></extra>",
    ))
    fig.update_layout(title=title, height=height, margin=dict(l=0, r=0, t=40, b=0), xaxis_title=x_title,
                      yaxis_title=y_title, xaxis_range=[-0.05, 1.05], yaxis_range=[-0.05, 1.05], showlegend=False,
                      dragmode="lasso")
    return fig
