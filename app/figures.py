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
                 height: int = 400, x_range: tuple[float, float] | None = (-0.05, 1.05)) -> go.Figure:
    """One point per unit, coloured on [0, 1] (y on [0, 1]; x too unless ``x_range`` is None);
    ``customdata = [unit, layer, *extra]`` so a selection event names the units (and their layer)."""
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
                      yaxis_title=y_title, xaxis_range=None if x_range is None else list(x_range),
                      yaxis_range=[-0.05, 1.05], showlegend=False, dragmode="lasso")
    return fig


def map_grid(maps: np.ndarray, titles: Sequence[str], *, zmin: float, zmax: float, colorscale: str,
             wrap: int = 4, row_height: int = 190, colorbar_title: str = "") -> go.Figure:
    """Maps ``[N, h, w]`` as a grid of heatmaps read left to right, top to bottom (image orientation:
    row 0 at the top), one shared colour scale ``zmin … zmax``.

    The layout (axis domains, one title per map) is written out as one dict, as
    ``plotly.subplots.make_subplots`` would lay it out: building it through ``make_subplots`` and
    per-subplot ``update_yaxes`` calls took ~130 ms for 8 maps, on every rerun of the Unit page."""
    n = len(maps)
    cols = max(1, min(wrap, n))
    rows = -(-n // cols)
    h_gap, v_gap = 0.02, (0.12 if rows > 1 else 0.0)
    cell_w, cell_h = (1 - h_gap * (cols - 1)) / cols, (1 - v_gap * (rows - 1)) / rows
    layout: dict = dict(height=40 + row_height * rows, margin=dict(l=0, r=0, t=30, b=0), annotations=[],
                        coloraxis=dict(colorscale=colorscale, cmin=zmin, cmax=zmax, colorbar=dict(title=colorbar_title)))
    data = []
    for i, (m, title) in enumerate(zip(maps, titles, strict=True)):
        r, c, k = i // cols, i % cols, str(i + 1) if i else ""
        x0, top = c * (cell_w + h_gap), 1 - r * (cell_h + v_gap)
        x_dom, y_dom = [max(0.0, x0), min(1.0, x0 + cell_w)], [max(0.0, top - cell_h), min(1.0, top)]
        layout[f"xaxis{k}"] = dict(domain=x_dom, anchor=f"y{k}", showticklabels=False, constrain="domain")
        layout[f"yaxis{k}"] = dict(domain=y_dom, anchor=f"x{k}", showticklabels=False,
                                   autorange="reversed", scaleanchor=f"x{k}", constrain="domain")
        layout["annotations"].append(dict(text=str(title), x=x0 + cell_w / 2, y=top, xref="paper", yref="paper",
                                          xanchor="center", yanchor="bottom", showarrow=False, font=dict(size=11)))
        data.append(go.Heatmap(z=np.round(np.asarray(m, dtype=np.float32), 3), coloraxis="coloraxis",
                               xaxis=f"x{k}", yaxis=f"y{k}", hovertemplate="x %{x}, y %{y}: %{z:.2f}<extra></extra>"))
    return go.Figure(data=data, layout=layout)


#: A long qualitative palette (plotly's Dark24): one fixed colour per layer in per-layer views.
_CATEGORICAL = (
    "#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#222A2A", "#B68100", "#750D86", "#EB663B", "#511CFB",
    "#00A08B", "#FB00D1", "#FC0080", "#B2828D", "#6C7C32", "#778AAE", "#862A16", "#A777F1", "#620042", "#1616A7",
    "#DA60CA", "#6C4516", "#0D2A63", "#AF0038",
)


def categorical(i: int) -> str:
    """The ``i``-th colour of a fixed 24-colour palette (cycled)."""
    return _CATEGORICAL[i % len(_CATEGORICAL)]
