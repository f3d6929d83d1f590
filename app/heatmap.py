"""Chart helpers for per-unit score tables (pure pandas → ECharts specs; no Streamlit, no engine).

A sensitivity table has one row per unit (``layer, unit, kind, ...`` in model order). The overview
heatmap shows layers × units, with wide layers binned to at most :data:`MAX_COLS` columns (mean per
bin), rounded so the Arrow payload stays small (29 layers × 64 columns ≈ 1.9k cells). A click on the
chart is reported as a row of :func:`bin_layers`' frame (``selection.selected[i].data_indices``,
docs of ``st.echarts_chart``); :func:`clicked_cell` turns an event — a plain dict or Streamlit's
read-only state — into that row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

#: Score shown → column of the table (the per-layer normalized weights, all in [0, 1]).
SCORES: dict[str, str] = {"unary": "w_unary", "binary": "w_binary", "combined": "combined"}
#: At most this many heatmap columns per layer; wider layers are averaged over equal unit bins.
MAX_COLS = 64
#: One colour scale everywhere (ECharts visualMap stops and plotly's name for the same map).
VIRIDIS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"]
PLOTLY_SCALE = "Viridis"


def short_layer(name: str) -> str:
    """A layer name without the wrapper prefix (``net.encoder.layer1.0.bn1`` → ``encoder.layer1.0.bn1``)."""
    return name[4:] if name.startswith("net.") else name


def unit_noun(kind: str, plural: bool = True) -> str:
    """``filter`` → "filters", ``head`` → "heads" (anything else → "units")."""
    base = {"filter": "filter", "head": "head"}.get(str(kind), "unit")
    return base + ("s" if plural else "")


def layer_order(table: pd.DataFrame) -> list[str]:
    """The table's layers in model order (order of first appearance)."""
    return list(dict.fromkeys(table["layer"].astype(str)))


def bin_layers(table: pd.DataFrame, column: str, max_cols: int = MAX_COLS, decimals: int = 3) -> pd.DataFrame:
    """The heatmap cells: one row per (layer, column), layers in model order, units in unit order.

    A layer with at most ``max_cols`` units gets one column per unit; a wider one is cut into
    ``ceil(size / ceil(size / max_cols))`` equal runs of consecutive units, each showing their mean.
    Columns: ``col`` (x index), ``row`` (layer index), ``w`` (rounded), ``layer``, ``units`` (label
    such as "units 8–15"), ``first``, ``last`` (unit numbers covered), ``kind``.
    """
    rows: list[dict[str, Any]] = []
    for r, (layer, g) in enumerate(table.groupby("layer", sort=False)):
        g = g.sort_values("unit")
        n = len(g)
        per = max(1, math.ceil(n / max_cols))
        kind = str(g["kind"].iloc[0])
        units = g["unit"].to_numpy()
        vals = g[column].to_numpy(dtype=float)
        for c, start in enumerate(range(0, n, per)):
            first, last = int(units[start]), int(units[min(start + per, n) - 1])
            noun = unit_noun(kind, plural=first != last)
            label = f"{noun} {first}" if first == last else f"{noun} {first}–{last}"
            rows.append({"col": c, "row": r, "w": round(float(vals[start:start + per].mean()), decimals),
                         "layer": short_layer(str(layer)), "units": label, "first": first, "last": last,
                         "kind": kind, "full_layer": str(layer)})
    return pd.DataFrame(rows, columns=["col", "row", "w", "layer", "units", "first", "last", "kind", "full_layer"])


def heatmap_spec(cells: pd.DataFrame, layers: list[str], *, value_name: str = "w",
                 value_range: tuple[float, float] = (0.0, 1.0)) -> dict[str, Any]:
    """An ECharts heatmap option over :func:`bin_layers` cells: click-selectable (``selectedMode``
    single), one colour scale ``value_range`` for every layer (values outside it clip to the end
    colours), layers top to bottom in model order, a "save as PNG" button."""
    lo, hi = float(value_range[0]), float(value_range[1])
    if not lo < hi:
        raise ValueError(f"colour range must have min < max, got {lo}, {hi}")
    ncols = int(cells["col"].max()) + 1 if len(cells) else 1
    source = cells[["col", "row", "w", "layer", "units"]].assign(id=[f"{r}:{c}" for r, c in zip(cells["row"], cells["col"])])
    return {
        "tooltip": {"position": "top", "formatter": "{@layer}<br/>{@units}: " + value_name + " = {@w}"},
        # grey behind the plot: a layer narrower than the widest one has no units there
        "grid": {"left": 0, "right": 80, "top": 10, "bottom": 40, "containLabel": True, "show": True,
                 "backgroundColor": "#eceff4", "borderWidth": 0},
        "dataset": {"source": source},
        "xAxis": {"type": "category", "data": [str(i) for i in range(ncols)], "name": "unit (or bin of units)",
                  "nameLocation": "middle", "nameGap": 28, "splitArea": {"show": False}},
        "yAxis": {"type": "category", "data": [short_layer(n) for n in layers], "inverse": True,
                  "axisLabel": {"interval": 0, "fontSize": 10}},
        "toolbox": {"right": 0, "top": 0, "feature": {"saveAsImage": {"title": "PNG", "pixelRatio": 2}}},
        "visualMap": {"min": lo, "max": hi, "calculable": True, "orient": "vertical", "right": 0, "top": "middle",
                      "dimension": 2, "precision": 2, "inRange": {"color": VIRIDIS}},
        "series": [{
            "type": "heatmap", "name": value_name, "selectedMode": "single", "progressive": 0,
            # a unique item name: ECharts selects by name, and the x category alone would select a whole column
            "encode": {"x": "col", "y": "row", "value": "w", "itemName": "id", "tooltip": ["layer", "units", "w"]},
            "select": {"itemStyle": {"borderColor": "#ff2d55", "borderWidth": 3}},
            "emphasis": {"itemStyle": {"borderColor": "#000", "borderWidth": 1}},
        }],
    }


def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def selected_indices(event: Any) -> tuple[int, ...]:
    """The data indices an ``st.echarts_chart`` event selects (any series), as a tuple; () for none.

    Accepts Streamlit's read-only state as well as a plain dict ``{"selection": {"selected": [...]}}``
    (what tests inject through session state)."""
    selection = _get(event, "selection") if event is not None else None
    groups = _get(selection, "selected") if selection is not None else None
    out: list[int] = []
    for group in groups or ():
        for i in _get(group, "data_indices") or ():
            try:
                out.append(int(i))
            except (TypeError, ValueError):
                continue
    return tuple(out)


def clicked_cell(event: Any, cells: pd.DataFrame) -> pd.Series | None:
    """The heatmap cell a click selected (a row of ``cells``), or None (no click, or a stale index)."""
    idx = selected_indices(event)
    if not idx or not 0 <= idx[0] < len(cells):
        return None
    return cells.iloc[idx[0]]


HIST_BINS = 10


def _histogram(values: pd.Series) -> list[int]:
    counts, _ = np.histogram(values.to_numpy(dtype=float), bins=HIST_BINS, range=(0.0, 1.0))
    return [int(c) for c in counts]


def _groups(groups: pd.Series) -> str:
    ids = sorted({int(g) for g in groups if int(g) >= 0})
    if not ids:
        return "—"
    return ", ".join(str(g) for g in ids[:3]) + (f" … ({len(ids)})" if len(ids) > 3 else "")


def layer_scores(table: pd.DataFrame, summary: pd.DataFrame, column: str) -> pd.DataFrame:
    """The layer table shown on the page: ``summary`` (``layer_summary``, model order) with the mean
    and max of ``column`` per layer, its histogram over the units (:data:`HIST_BINS` bins on [0, 1])
    and the layer's coupling group id(s); columns layer, kind, size, mean w, histogram, max w,
    group, mean |γ|, raw means."""
    g = table.groupby("layer", sort=False)
    means = g[column].mean()
    stats = pd.DataFrame({"layer": means.index.astype(str), "mean w": means.to_numpy(),
                          "max w": g[column].max().to_numpy(),
                          "histogram": [_histogram(v) for _, v in g[column]],
                          "group": [_groups(v) for _, v in g["group"]]})
    out = summary.assign(layer=summary["layer"].astype(str)).merge(stats, on="layer", how="left", sort=False)
    out = out.rename(columns={"gamma_abs_mean": "mean |γ|", "unary_mean": "unary (raw mean)",
                              "binary_mean": "binary (raw mean)"})
    return out[["layer", "kind", "size", "mean w", "histogram", "max w", "group", "mean |γ|", "unary (raw mean)",
                "binary (raw mean)"]]


def block_of(layer: str) -> str:
    """A coarse architecture block for the strip: stem, layer1–4 / encoder stage, ASPP, decoder, head."""
    parts = short_layer(layer).split(".")
    if parts[0] == "encoder":
        if len(parts) > 1 and parts[1].startswith("layer"):
            return parts[1]
        if len(parts) > 2 and parts[1] in ("block", "blocks"):
            return f"stage {parts[2]}"
        return "stem" if len(parts) <= 2 or not parts[1][-1:].isdigit() else parts[1]
    if parts[0] == "decoder":
        return "ASPP" if len(parts) > 1 and parts[1] == "aspp" else "decoder"
    return parts[0]


__all__ = ["MAX_COLS", "PLOTLY_SCALE", "SCORES", "VIRIDIS", "bin_layers", "block_of", "clicked_cell", "heatmap_spec",
           "layer_order", "layer_scores", "selected_indices", "short_layer", "unit_noun"]
