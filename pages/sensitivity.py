"""Sensitivity page: which units (BN filters, attention heads) react to style, and how much?

Widgets → :mod:`npdg.service.sensitivity` → heatmap, layer table, strip, scatter, DSP-vs-oracle
agreement (docs/method.md §3). Source, λ, score and layer live in the URL; λ re-mixes the saved
statistics without a forward pass. Zoo models ship precomputed tables; other models can be probed
here (a few seconds on a CPU).
"""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from app import components, figures, heatmap
from app import jobs as jobs_ui
from app.models import model_panel
from npdg.service import sensitivity as sens
from npdg.service.data import HELDOUT_DOMAINS, SOURCE_DOMAIN

SOURCES = {"DSP styles": "dsp", "held-out renderings (oracle)": "oracle"}
HEATMAP_KEY = "sens_heatmap"
TABLE_KEY = "sens_layers"
SCATTER_KEY = "sens_scatter"
_SUBMITTED = "_sens_submitted"  # (model id, source) → (images, styles) of this session's last probe request
_LAST_ROW = "_sens_last_row"  # the layer-table selection already applied
_COMPUTED = "_sens_computed"  # (model id, source) → SensitivityResult probed in this session
_LAST_CLICK = "_sens_last_click"  # the heatmap selection already applied (a selection persists across reruns)
_CELL = "_sens_cell"  # (full layer, first unit, last unit, units label) of the last clicked cell
ORACLE_DOMAINS = (SOURCE_DOMAIN, *HELDOUT_DOMAINS)  # as the zoo's precomputed oracle table
PROBE_IMAGES, PROBE_STYLES = 8, 4  # the 'probe it now' defaults
UNARY_MODES = sens.UNARY_MODES

st.title("Sensitivity — which units react to style")
st.markdown(
    "NPDG prunes the units that are **sensitive to style**. Each unit (a BN filter, or a SegFormer attention "
    "head) is probed with the same images in several styles: **unary** is the share of its activation "
    "variance that the style explains, **binary** how strongly its style reaction is correlated with the "
    "other units of its layer. Both are min-max normalized within a layer and mixed as "
    "**w = λ·wᵁ + (1 − λ)·wᴮ** (docs/method.md §3); a high w marks a unit that sparse training pushes "
    "towards zero."
)

model = model_panel()

c1, c2, c3 = st.columns([3, 3, 3])
src_label = c1.radio(
    "Probe source", list(SOURCES), key="src", bind="query-params", horizontal=True,
    help="DSP styles: source images restyled by DSP (what NPDG trains and prunes with). Held-out renderings: "
         "the same scenes in the true target domains — a diagnostic of how well DSP stands in for them, never "
         "used for training or selection.",
)
lam = c2.slider(
    "λ (weight of the unary score)", 0.0, 1.0, float(sens.DEFAULT_LAMBDA), 0.05, key="lam", bind="query-params",
    help="w = λ·wᵁ + (1 − λ)·wᴮ. Re-mixes the saved statistics instantly (no forward pass). "
         "0.4 is the paper's best value. Only the combined score depends on it.",
)
score = c3.radio(
    "Score", list(heatmap.SCORES), index=2, key="score", bind="query-params", horizontal=True,
    help="unary wᵁ, binary wᴮ (each normalized to [0, 1] within its layer) or their combination w at λ.",
)
source = SOURCES[src_label]
column = heatmap.SCORES[score]
label = f"w at λ = {lam:.2f}" if score == "combined" else f"w ({score})"


def _probe_settings(source: str) -> tuple[int, int]:
    """(images or scenes, styles) of the 'probe it now' panel: its widgets' values while it is shown,
    else the settings of this session's last probe of the model (the panel is gone once a table is
    shown), else the defaults."""
    last = st.session_state.get(_SUBMITTED, {}).get((model.id, source), (PROBE_IMAGES, PROBE_STYLES, UNARY_MODES[0]))
    n = int(st.session_state.get(f"probe_n_{source}", last[0]))
    k = int(st.session_state.get("probe_k", last[1])) if source == "dsp" else len(ORACLE_DOMAINS)
    unary = str(st.session_state.get(f"probe_unary_{source}", last[2]))
    return n, k, unary


def _job(source: str, submit: bool = False):
    n, k, unary = _probe_settings(source)
    status = sens.probe_job(model.path, source, n_images=n, n_styles=k, unary=unary, domains=ORACLE_DOMAINS,
                            lookup_only=not submit)
    if submit:
        st.session_state.setdefault(_SUBMITTED, {})[(model.id, source)] = (n, k, unary)
    return status


def _table(source: str):
    """(result, where it came from) for the chosen model and ``source``; (None, reason) when there is none."""
    if model is None:
        return None, "no model"
    n, k, unary = _probe_settings(source)
    return sens.find_table(model.path, source, n_images=n, n_styles=k, unary=unary, domains=ORACLE_DOMAINS)


def _tables() -> dict[str, tuple]:
    """source → (result or None, where it came from, error or None) for the chosen model."""
    out = {}
    for src in SOURCES.values():
        try:
            out[src] = (*_table(src), None)
        except Exception as exc:  # a corrupt file: shown once, for the source on screen
            out[src] = (None, "error", exc)
    return out


def _provenance(meta: dict, where: str) -> str:
    model_txt = f"{meta.get('arch', '?')}/{meta.get('encoder', '?')}"
    size = meta.get("size")
    size_txt = f" at {size[0]}×{size[1]}" if isinstance(size, list | tuple) and len(size) == 2 else ""
    doms = meta.get("domains") or meta.get("oracle_domains")
    if doms:
        probe_txt = (f"{meta.get('images', '?')} {meta.get('split', 'val')} scenes × {len(doms)} renderings "
                     f"({', '.join(doms)})")
    else:
        probe_txt = f"{meta.get('images', '?')} source images × {meta.get('styles', '?')} DSP styles, seed {meta.get('seed', '?')}"
    return (f"{where.capitalize()} — {probe_txt}{size_txt}, unary mode `{meta.get('unary', '?')}`, probed on "
            f"{model_txt} and saved with λ = {meta.get('lam', '?')}; shown re-mixed at λ = {lam:.2f}.")


def _compute(source: str) -> None:
    """The 'probe it now' panel for a model without a saved table of ``source`` (a background job)."""
    st.info(f"**{model.label}** has no precomputed {src_label} table. Probe it here (small defaults; a few "
            "seconds on a CPU). The probe runs in the background and is kept in the dashboard cache for every session.")
    p1, p2, p4, p3 = st.columns([2, 2, 2, 3])
    p4.radio("Unary mode", UNARY_MODES, key=f"probe_unary_{source}", horizontal=True,
             help="share: the share of a unit's variance that style explains (default); raw: the within-style "
                  "variance itself (the paper's wording), docs/method.md §3.")
    p1.number_input(
        "Images" if source == "dsp" else "Scenes", 2, 32, PROBE_IMAGES, 1, key=f"probe_n_{source}",
        help="Source training images (DSP) or val scenes (oracle) in the probe batch.",
    )
    if source == "dsp":
        p2.number_input("Styles K", 2, 8, PROBE_STYLES, 1, key="probe_k",
                        help="DSP styles per image (K ≥ 2: the unary score is a variance across styles).")
    else:
        p2.caption(f"Renderings per scene: {', '.join(ORACLE_DOMAINS)}")
    status = _job(source)
    if status is None and p3.button("Compute probe", type="primary", key=f"probe_go_{source}",
                                    help="Starts the probe in a background worker (npdg.service.sensitivity)."):
        try:
            status = _job(source, submit=True)
        except Exception as exc:  # bad settings: a message, never a traceback
            components.error_box(exc)
            return
    if jobs_ui.follow(status, f"Probing {model.label}", retry_key=f"probe_retry_{source}"):
        st.rerun()


def _select_from_click(cells) -> None:
    """Apply a *new* heatmap click to the layer selectbox (run before the selectbox exists)."""
    event = st.session_state.get(HEATMAP_KEY)
    idx = heatmap.selected_indices(event)
    if idx == st.session_state.get(_LAST_CLICK):
        return
    st.session_state[_LAST_CLICK] = idx
    cell = heatmap.clicked_cell(event, cells)
    if cell is None:
        return
    st.session_state["layer"] = cell["full_layer"]
    st.session_state[_CELL] = (cell["full_layer"], int(cell["first"]), int(cell["last"]), cell["units"])


def _select_from_table(summary) -> None:
    """Apply a *new* row selection of the layer table to the layer selectbox (before it exists)."""
    event = st.session_state.get(TABLE_KEY)
    rows = list((event or {}).get("selection", {}).get("rows", []) or [])
    if rows == st.session_state.get(_LAST_ROW):
        return
    st.session_state[_LAST_ROW] = rows
    if rows and 0 <= int(rows[0]) < len(summary):
        st.session_state["layer"] = str(summary["layer"].iloc[int(rows[0])])
        st.session_state.pop(_CELL, None)


def _overview(res, where: str) -> None:
    table = res.table
    layers = heatmap.layer_order(table)
    cells = heatmap.bin_layers(table, column)
    kinds = sorted(table["kind"].astype(str).unique())
    nouns = " and ".join(heatmap.unit_noun(k) for k in kinds)
    st.subheader(f"Overview — {len(layers)} layers × their {nouns}")
    st.caption(_provenance(res.meta, where) + f" Colour: {label}, one scale [0, 1] for every layer; layers wider "
               f"than {heatmap.MAX_COLS} units are shown as {heatmap.MAX_COLS} bins (mean per bin). "
               "Blank cells: the layer has fewer units than the widest one. Click a cell to select its layer.")
    lo, hi = st.slider("Colour range", 0.0, 1.0, (0.0, 1.0), 0.05, key="range", bind="query-params",
                       help="The part of [0, 1] the colour scale spans (one scale for every layer): narrow it to tell "
                            "apart units in a crowded range; values outside clip to the end colours.")
    if hi - lo < 0.05:
        lo, hi = (lo, lo + 0.05) if lo <= 0.95 else (hi - 0.05, hi)
    spec = heatmap.heatmap_spec(cells, layers, value_name="w", value_range=(lo, hi))
    st.echarts_chart(spec, on_select="rerun", key=HEATMAP_KEY, height=max(320, 19 * len(layers) + 70),
                     alt=f"Heatmap of {label} for {len(layers)} layers (rows) by units (columns)")
    _select_from_click(cells)
    summary = heatmap.layer_scores(table, sens.layer_summary(res), column)
    _select_from_table(summary)

    pick, info = st.columns([2, 5], vertical_alignment="bottom")
    layer = pick.selectbox(
        "Selected layer", layers, key="layer", bind="query-params", format_func=heatmap.short_layer,
        help="The layer shown in the scatter below (also set by clicking the heatmap), in model order.",
    )
    cell = st.session_state.get(_CELL)
    cell = cell if cell and cell[0] == layer else None
    rows = table[table["layer"].astype(str) == layer]
    picked = rows[rows["unit"].between(cell[1], cell[2])] if cell else rows.iloc[:0]
    cell_txt = f" · clicked {cell[3]} (mean w = {picked[column].mean():.3f})" if cell and len(picked) else ""
    kind = str(rows["kind"].iloc[0]) if len(rows) else "?"
    info.markdown(f"**Selected layer:** `{layer}` — {len(rows)} {heatmap.unit_noun(kind, len(rows) != 1)}, "
                f"mean {label} = {rows[column].mean():.3f}{cell_txt}")

    left, right = st.columns([1, 1.7])
    with left:
        _scatter(rows, layer, kind, cell)
    with right:
        st.markdown(f"**Layers** (model order) — {label}")
        st.dataframe(
            summary.assign(layer=summary["layer"].map(heatmap.short_layer)), hide_index=True, height=360, width="stretch",
            key=TABLE_KEY, on_select="rerun", selection_mode="single-row",
            column_config={
                "layer": st.column_config.TextColumn("layer", width="medium",
                                                     help="Module name inside the model (without `net.`)."),
                "kind": st.column_config.TextColumn("kind", width="small"),
                "size": st.column_config.NumberColumn("size", width="small", help="Units in the layer."),
                "mean w": st.column_config.ProgressColumn("mean w", min_value=0.0, max_value=1.0, format="%.3f", width="medium",
                                                          help=f"Mean {label} over the layer's units."),
                "histogram": st.column_config.BarChartColumn(
                    "histogram", y_min=0, width="small",
                    help=f"Units per bin of the shown score ({heatmap.HIST_BINS} bins on [0, 1])."),
                "max w": st.column_config.NumberColumn("max w", format="%.3f"),
                "group": st.column_config.TextColumn(
                    "group", width="small",
                    help="torch-pruning coupling group id(s) of the layer's units: layers sharing a group are "
                         "pruned together (e.g. across a residual sum); — when not computed."),
                "mean |γ|": st.column_config.NumberColumn("mean |γ|", format="%.3f",
                                                          help="Mean |BN weight| (filters) or |head gate| (heads)."),
                "unary (raw mean)": st.column_config.NumberColumn(format="%.3f"),
                "binary (raw mean)": st.column_config.NumberColumn(format="%.3f"),
            },
        )

    strip = summary.assign(short=summary["layer"].map(heatmap.short_layer), block=summary["layer"].map(heatmap.block_of))
    fig = figures.colored_bars(strip["short"], strip["mean w"], cmin=0, cmax=1, colorscale=heatmap.PLOTLY_SCALE,
                               title="Architecture strip — mean sensitivity per layer", x_title="layer (model order)",
                               y_title=f"mean {label}", outline=list(strip["layer"] == layer),
                               hover={"block": strip["block"], "size": strip["size"], "kind": strip["kind"]})
    st.plotly_chart(fig, width="stretch", key="sens_strip")
    scatter_units = components.selected_units(SCATTER_KEY, layer)
    cell_units = [int(u) for u in picked["unit"]] if cell else []
    components.unit_links(model.id, layer, scatter_units or cell_units,
                          "Select units — click a heatmap cell or pick points in the scatter (click, box or lasso) — "
                          "to open them in the unit drill-down.", src=src_label)

    d1, d2, _ = st.columns([1, 1, 2])
    stem = f"sensitivity_{source}_{model.label.split()[0]}_lam{lam:.2f}"
    d1.download_button("Download unit table (CSV)", data=lambda: res.table.to_csv(index=False),
                       file_name=f"{stem}.csv", mime="text/csv", key="dl_units",
                       help="One row per unit: raw unary/binary, normalized wᵁ/wᴮ, combined w at this λ, γ, group.")
    d2.download_button("Download layer table (CSV)", data=lambda: summary.to_csv(index=False),
                       file_name=f"{stem}_layers.csv", mime="text/csv", key="dl_layers",
                       help="The layer table above (means and maxima of the shown score).")


def _scatter(rows, layer: str, kind: str, cell) -> None:
    if not len(rows):
        st.info("This layer is not in the table.")
        return
    fig = figures.unit_scatter(rows["w_unary"], rows["w_binary"], rows["combined"], rows["unit"], layer,
                               colorscale=heatmap.PLOTLY_SCALE, title=f"Unary vs binary — {heatmap.short_layer(layer)}",
                               x_title="wᵁ (unary, normalized)", y_title="wᴮ (binary, normalized)",
                               extra={"unary": rows["unary"], "binary": rows["binary"], "gamma": rows["gamma"]})
    if cell:
        picked = rows[rows["unit"].between(cell[1], cell[2])]
        fig.add_trace(go.Scatter(x=picked["w_unary"], y=picked["w_binary"], mode="markers", name=cell[3],
                                 hoverinfo="skip", marker=dict(symbol="circle-open", size=14, color="#ff2d55",
                                                               line=dict(width=2))))
    st.plotly_chart(fig, width="stretch", key=SCATTER_KEY, on_select="rerun", selection_mode=("points", "box", "lasso"))
    st.caption(f"One point per {heatmap.unit_noun(kind, False)}; colour = combined w at λ = {lam:.2f}"
               + (f"; red rings = the clicked heatmap cell ({cell[3]})." if cell else "."))


def _agreement(dsp, oracle) -> None:
    st.subheader("Does DSP find the same units as the real domain shifts?")
    st.markdown(
        "For each layer, **Spearman's ρ** between the units' scores under DSP styles and under the held-out "
        "renderings: ρ = 1 means DSP ranks that layer's units exactly as the true target domains do (pruning "
        "by DSP removes the units the real shifts hit), ρ ≈ 0 means the DSP ranking says nothing about them. "
        f"Computed on the shown score ({label})."
    )
    if dsp is None or oracle is None:
        st.info("Needs both tables of this model: pick the other probe source above and compute it.")
        return
    try:
        agree = sens.rank_agreement(sens.recombine(dsp, float(lam)), sens.recombine(oracle, float(lam)), column=column)
    except Exception as exc:
        components.error_box(exc)
        return
    agree = agree.assign(short=agree["layer"].map(heatmap.short_layer))
    fig = figures.colored_bars(agree["short"], agree["spearman"], cmin=-1, cmax=1, colorscale="RdBu",
                               x_title="layer (model order)", y_title="Spearman ρ", colorbar=False, height=320,
                               hover={"size": agree["size"], "kind": agree["kind"]}, y_range=(-1, 1))
    st.plotly_chart(fig, width="stretch", key="sens_agree")
    st.caption(f"Mean ρ over layers: {agree['spearman'].mean():.3f} (layers constant in either table are left out).")


if model is None:
    st.info("Pick a model in the sidebar to see its sensitivity.")
else:
    def _overview_tab() -> None:
        base, where, problem = _tables()[source]
        if problem is not None:
            components.error_box(problem)
        elif base is None:
            _compute(source)
            base, where, _ = _tables()[source]
        if base is not None:
            try:
                _overview(sens.recombine(base, float(lam)), where)
            except Exception as exc:
                components.error_box(exc)

    def _agreement_tab() -> None:
        tables = _tables()
        try:
            _agreement(tables["dsp"][0], tables["oracle"][0])
        except Exception as exc:
            components.error_box(exc)

    # only the open tab is computed and drawn: the diagnostic does not slow down every λ step
    components.lazy_tabs({"Overview": _overview_tab, "DSP vs oracle": _agreement_tab})

components.teaching_notes(
    "- **Overview**: one row per prunable layer (model order, input at the top), one cell per unit — wide "
    "layers averaged over runs of consecutive units. Bright = sensitive to style. Click a cell to select "
    "its layer.\n"
    "- **λ** only re-weights two saved statistics, so moving it is instant: λ = 1 ranks by how much a unit's "
    "own activation moves with style (unary), λ = 0 by how much its style reaction is shared with the rest "
    "of the layer (binary, redundant units).\n"
    "- **Layer table and strip**: where in the network sensitivity sits — typically in the early layers "
    "(colour and texture statistics) more than in the decoder.\n"
    "- **Unary vs binary**: the two signals of one layer; units in the top-right are pruned first.\n"
    "- **DSP vs oracle**: NPDG never sees the target domains; the oracle probe does, only to check that the "
    "DSP styles point at the same units (a diagnostic, never used for training or selection)."
)
