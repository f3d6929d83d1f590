"""Prune page: what if these units were gone? A live what-if at any rate, curves, export.

Widgets → :mod:`npdg.service.pruning`: a plan from the criterion and the limits, its cost from the
plan alone, soft-masked mIoU per domain (the shared model is never changed), mIoU-vs-rate and
per-layer curves as background jobs, and the physically pruned model as a download or a run.
Criterion, rate, mode, threshold, cap, rounding, units and scene count are bound to the URL.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from app import components, figures, heatmap
from app import jobs as jobs_ui
from app.models import PLAN_STATE, ModelChoice, model_panel  # the plan is offered as model B on Compare and Explain
from npdg.service import mechanism, pruning

CRITERIA = pruning.PAGE_CRITERIA
CRITERION_HELP = {
    "npdg": "|γ| of a model sparse-trained with sensitivity-weighted L1 (NPDG, docs/method.md §4–5)",
    "slimming": "|γ| of a model sparse-trained with plain L1 (Network Slimming)",
    "l1norm": "L1 norm of each filter's producing convolution (no training needed)",
    "random": "a random ranking (seeded): the floor every criterion must beat",
    "sensitivity": "proxy: rank by the saved style-sensitivity table, most sensitive first — not NPDG",
}
UNITS = {"all": "filters and heads", "filters": "filters only", "heads": "heads only"}

PAIR_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#7f7f7f", "#9467bd", "#8c564b")

st.title("Prune — what if these units were gone?")
st.markdown(
    "Pruning removes whole units — BN filters (with every channel coupled to them) and attention heads. "
    "NPDG ranks units by |γ| **after** a sparse training that pushed the *style-sensitive* ones towards zero, "
    "so cutting the smallest |γ| removes those units: the model gets cheaper and, the paper claims, "
    "generalizes better (docs/method.md §4–5). Here the plan is applied as **soft masks** on the loaded model — "
    "or, when it removes a fifth of the FLOPs or more, on a physically pruned copy, which is faster — and the "
    "shared model is never changed: the numbers equal the physically pruned model's before fine-tuning (in "
    "fp32 — the default *fast* precision computes in bf16 where this machine does so natively, within about a "
    "tenth of a point on the means)."
)

model = model_panel(default="zoo:r18-npdg-sparse")
if model is None:
    st.info("Pick a model in the sidebar.")
    st.stop()
try:
    facts = pruning.model_facts(model.path)
except Exception as exc:  # a model that cannot be loaded, or one with no prunable unit
    components.error_box(exc)
    st.stop()

@dataclass(frozen=True)
class View:
    """What the page's widgets chose, and the plan they make (``plan_error`` when they make none)."""

    model: ModelChoice
    facts: pruning.ModelFacts
    criterion: str
    rate: float
    n_scenes: int
    units: str
    precision: str
    round_to: int
    cap: float
    settings: dict
    plan: object = None
    plan_error: Exception | None = None


def _controls(model: ModelChoice, facts: pruning.ModelFacts) -> View:
    """The criterion, rate, scene count and unit kinds, the expander's limits, and the plan they make."""
    c1, c2, c3, c4 = st.columns([3, 3, 2, 2])
    criterion = c1.radio("Criterion", CRITERIA, key="crit", bind="query-params", horizontal=True,
                         help=" · ".join(f"**{k}**: {v}" for k, v in CRITERION_HELP.items()))
    rate = c2.slider("Rate r", 0.0, 0.7, 0.3, 0.05, key="rate", bind="query-params",
                     help="Share of the candidate units to prune (per kind: filters and heads are counted separately).")
    n_scenes = c3.select_slider("Scenes per domain", [2, 4, 8], 2, key="n", bind="query-params",
                                help="How many val scenes per domain the what-if mIoU uses (the first N). More is slower "
                                     "and steadier; every figure says how many.")
    units_choices = [u for u in UNITS if u == "all" or (u == "filters" and "filter" in facts.kinds)
                     or (u == "heads" and "head" in facts.kinds)]
    units = c4.radio("Units", units_choices, key="units", bind="query-params", horizontal=True,
                     help="Which kinds of unit may be pruned: " + ", ".join(f"{k} = {v}" for k, v in UNITS.items())
                          + " (SegFormer: its attention heads and its decoder's filters).")

    with st.expander("Threshold mode, per-layer cap, rounding, precision", expanded=False):
        e1, e2, e3, e4, e5 = st.columns(5)
        use_threshold = e1.toggle("Threshold mode", key="thr_on", bind="query-params",
                                  help="Prune units whose score is below a threshold, at most the rate r.")
        threshold = e2.number_input("Threshold", 1e-6, 1e6, 0.05, format="%.4f", key="thr", bind="query-params",
                                    disabled=not use_threshold, help="Score (e.g. |γ|) below which a unit is pruned.")
        cap = e3.slider("Per-layer cap", 0.1, 1.0, float(pruning.DEFAULT_MAX_LAYER_RATIO), 0.05, key="cap",
                        bind="query-params", help="At most this share of one coupling group is pruned.")
        round_to = e4.select_slider("Round kept channels to", [1, 2, 4, 8, 16], int(pruning.DEFAULT_ROUND_TO), key="round",
                                    bind="query-params", help="Kept channels per group: a multiple of this (hardware-friendly).")
        precision = e5.radio("What-if precision", pruning.PRECISIONS, key="prec", bind="query-params", horizontal=True,
                             help="**fast**: bf16 where this machine runs it natively (a CPU with AMX or AVX512-BF16, "
                                  "or CUDA) — about half the time per forward, within ~0.1 point of fp32 on the source "
                                  "and held-out means (measured on the zoo; docs/dashboard.md §4); fp32 elsewhere. "
                                  "**exact**: fp32, the numbers `npdg eval` gives. The curves are always exact.")
    settings = dict(criterion=criterion, rate=float(rate), threshold=float(threshold) if use_threshold else None,
                    round_to=int(round_to), max_layer_ratio=float(cap), units=units)
    v = View(model, facts, criterion, float(rate), int(n_scenes), units, precision, int(round_to), float(cap), settings)
    try:
        return replace(v, plan=_plan(v))
    except Exception as exc:  # a bad setting, a table for another model: a message, never a traceback
        return replace(v, plan_error=exc)


def _sensitivity_table(v: View):
    """The saved DSP sensitivity table the proxy criterion ranks by (None with a message when absent)."""
    from npdg.service import sensitivity as sens

    path = sens.saved_table_path(v.model.path, "dsp")
    if path is None:
        st.warning(f"{v.model.id} has no saved sensitivity table: the proxy criterion needs one (compute it on the "
                   "Sensitivity page with `python -m npdg sensitivity`, or pick another criterion).")
    return path


def _notes(v: View) -> None:
    """Say plainly which model the criterion is meant for, and what masking a non-sparse model does."""
    if v.criterion in ("npdg", "slimming") and v.facts.mode != v.criterion:
        st.warning(
            f"**{v.criterion}** means |γ| of a model sparse-trained with {'sensitivity-weighted' if v.criterion == 'npdg' else 'plain'} "
            f"L1 — this model was trained with mode `{v.facts.mode}`, so this ranks its γ as they are. For the "
            f"real criterion pick the zoo's `{'npdg' if v.criterion == 'npdg' else 'slimming'}-sparse` model.")
    if not v.facts.sparse_trained:
        st.info("This model was **not sparse-trained**: its γ were never pushed towards zero, so masking even 10 % of "
                "its channels can wreck it (e.g. source mIoU 47 → 6–25 on the zoo's erm model, whatever the criterion). "
                "The numbers below are honest; they say what a what-if means only on a sparse-trained model.")


def _plan(v: View):
    extra = {}
    if v.criterion == "sensitivity":
        table = _sensitivity_table(v)
        if table is None:
            return None
        extra = dict(sensitivity=table)
    plan = pruning.select_plan(v.model.path, **v.settings, **extra)
    st.session_state[PLAN_STATE] = (v.model.id, {**v.settings, **extra})  # the Compare page offers it as model B
    return plan


# ----------------------------------------------------------------------------------------- what-if
#: Session key of the last what-if scores shown: (model id, scenes, precision, rate, frame) — drawn,
#: marked as the previous rate's, while a new rate's are computed.
LAST_WHAT_IF = "_prune_last_what_if"


def _what_if(v: View) -> None:
    """The plan's cost at once (from the plan alone), its soft-masked mIoU when ready: shipped or
    computed before, or a background job of about a second that the next rate supersedes — so the
    slider never waits for a forward pass (docs/dashboard.md §4)."""
    cost = pruning.plan_cost(v.model.path, v.plan, (512, 1024))
    pruned, cand = v.plan.num_pruned, v.plan.candidates
    m = st.columns(4)
    m[0].metric("pruned filters", f"{pruned['filter']} / {cand.get('filter', 0)}",
                help="Channels of coupling groups (each removes the channel from every coupled layer).")
    m[1].metric("pruned heads", f"{pruned['head']} / {cand.get('head', 0)}")
    m[2].metric("GFLOPs @ 512×1024", f"{cost.gflops:.2f}", f"{100 * (cost.gflops / cost.dense_gflops - 1):+.1f} %",
                delta_color="inverse", help="From the plan itself, at the paper's test size: the flop counter's "
                                            "per-module counts scaled by the plan's channel counts (the same "
                                            "number as counting the pruned model; docs/dashboard.md §4).")
    m[3].metric("parameters", f"{cost.params / 1e6:.2f} M", f"{100 * (cost.params / cost.dense_params - 1):+.1f} %",
                delta_color="inverse")
    if v.plan.note:
        st.caption(f"Note: {v.plan.note}")
    scores = pruning.what_if_ready(v.model.path, v.plan, n_images=v.n_scenes, precision=v.precision)
    if scores is None:
        status = pruning.what_if_job(v.model.path, v.plan, n_images=v.n_scenes, precision=v.precision,
                                     lane=jobs_ui.lane("prune-what-if"))
        if jobs_ui.follow(status, f"Soft-masked mIoU at r = {v.rate:.2f}", unit="images", brief=True):
            scores = pruning.job_frame(status)
    context = (v.model.id, v.n_scenes, v.precision)
    if scores is not None:
        st.session_state[LAST_WHAT_IF] = (*context, v.rate, scores)
        _scores(v, scores, v.rate, current=True)
    else:
        last = st.session_state.get(LAST_WHAT_IF)
        if last is not None and tuple(last[:3]) == context:
            _scores(v, last[4], last[3], current=False)
    st.plotly_chart(_layers_figure(pruning.plan_table(v.plan)), width="stretch", key="prune_kept")


def _scores(v: View, scores, rate: float, *, current: bool) -> None:
    """Source and held-out metrics and the per-domain bars of a what-if at ``rate`` — the page's
    rate (``current``) or, greyed and said so, the previous one while the new one is computed."""
    src = scores[scores["role"] == "source"]
    held = scores[scores["averaged"]]
    was = "" if current else " (previous plan)"
    k = st.columns(3)
    k[0].metric("source mIoU" + was, f"{100 * src['pruned_miou'].mean():.1f}", f"{100 * src['delta'].mean():+.1f}")
    k[1].metric("held-out mean mIoU" + was, f"{100 * held['pruned_miou'].mean():.1f}",
                f"{100 * held['delta'].mean():+.1f}",
                help="Mean over the held-out style domains (not the source, not suburb: content shift).")
    k[2].metric("scenes", f"{int(v.n_scenes)} per domain", help="The first val scenes of each domain.")
    if not current:
        st.caption(f"These scores are the previous plan's (r = {rate:.2f}), shown until this plan's are computed; "
                   "the cost above and the strip below are this plan's already.")
    elif scores.attrs.get("precomputed"):
        st.caption(f"Precomputed in fp32 and shipped with {v.model.id} (`npdg zoo whatif`: every criterion at every "
                   "slider position with the default settings) — the numbers the exact precision computes.")
    else:
        st.caption(f"Computed in {scores.attrs.get('precision', pruning.precision_used(v.precision))} "
                   f"(What-if precision: {v.precision}).")
    fig = go.Figure()
    fig.add_bar(x=scores["domain"], y=100 * scores["dense_miou"], name="dense", marker_color="#9aa5b1")
    fig.add_bar(x=scores["domain"], y=100 * scores["pruned_miou"], marker_color="#d62728" if current else "#e8a0a0",
                name=f"pruned (r = {rate:.2f}{'' if current else ', previous plan'})")
    fig.update_layout(barmode="group", height=320, margin=dict(l=0, r=0, t=30, b=0), yaxis_title="mIoU (%)",
                      title=f"mIoU per domain, dense vs soft-pruned — {int(v.n_scenes)} val scenes per domain")
    st.plotly_chart(fig, width="stretch", key="prune_bars")


def _layers_figure(table) -> go.Figure:
    """Kept and pruned units per layer in model order (the architecture strip): one stacked bar a
    layer, the pruned share in the hover. One figure, not two: each plotly figure costs ~50 ms to
    redraw in the browser on every new rate (docs/dashboard.md §4)."""
    short = table["layer"].map(heatmap.short_layer)
    hover = [f"{b}<br>pruned {p} of {p + k} ({100 * s:.0f} %)" for b, p, k, s in
             zip(table["layer"].map(heatmap.block_of), table["pruned"], table["kept"], table["pruned_share"])]
    fig = go.Figure()
    fig.add_bar(x=short, y=table["kept"], name="kept", marker_color="#2ca02c", hovertext=hover, hoverinfo="x+text")
    fig.add_bar(x=short, y=table["pruned"], name="pruned", marker_color="#d62728", hovertext=hover, hoverinfo="x+text")
    fig.update_layout(barmode="stack", height=320, margin=dict(l=0, r=0, t=30, b=0), xaxis_tickangle=-50,
                      xaxis_tickfont_size=10, yaxis_title="units", xaxis_title="layer (model order)",
                      title="Architecture strip — kept and pruned units per layer")
    return fig


def _tab_now(v: View) -> None:
    _notes(v)
    if v.plan_error is not None:
        components.error_box(v.plan_error)
        return
    if v.plan is not None:
        try:
            _what_if(v)
        except Exception as exc:
            components.error_box(exc)


# ------------------------------------------------------------------------------------------ curves
def _curve_figure(frames: dict[str, object], current: tuple[float, float, float] | None) -> tuple[go.Figure, go.Figure]:
    """mIoU vs rate (source solid, held-out dashed) and mIoU vs GFLOPs (Pareto) for every finished pair."""
    by_rate, pareto = go.Figure(), go.Figure()
    for i, (label, f) in enumerate(frames.items()):
        colour = PAIR_COLOURS[i % len(PAIR_COLOURS)]
        src = f[f["role"] == "source"].groupby("rate", as_index=False).agg(miou=("miou", "mean"), gflops=("gflops", "first"))
        held = f[f["averaged"]].groupby("rate", as_index=False).agg(miou=("miou", "mean"), gflops=("gflops", "first"))
        by_rate.add_scatter(x=src["rate"], y=100 * src["miou"], name=f"{label} — source", mode="lines+markers",
                            line=dict(color=colour))
        by_rate.add_scatter(x=held["rate"], y=100 * held["miou"], name=f"{label} — held-out", mode="lines+markers",
                            line=dict(color=colour, dash="dash"))
        pareto.add_scatter(x=src["gflops"], y=100 * src["miou"], name=f"{label} — source", mode="markers+lines",
                           marker=dict(color=colour, symbol="circle"), line=dict(color=colour, width=1),
                           text=[f"r = {r:.1f}" for r in src["rate"]])
        pareto.add_scatter(x=held["gflops"], y=100 * held["miou"], name=f"{label} — held-out", mode="markers+lines",
                           marker=dict(color=colour, symbol="diamond-open"), line=dict(color=colour, width=1, dash="dash"),
                           text=[f"r = {r:.1f}" for r in held["rate"]])
        dense = f[f["rate"] == 0.0]
        if len(dense):
            pareto.add_scatter(x=[dense["gflops"].iloc[0]], y=[100 * dense[dense["averaged"]]["miou"].mean()],
                               mode="markers", marker=dict(color=colour, size=14, symbol="star"), showlegend=False,
                               hovertext=f"{label}: dense (held-out)")
    if current is not None:
        pareto.add_scatter(x=[current[0]], y=[100 * current[2]], mode="markers", name="this what-if (held-out)",
                           marker=dict(color="black", size=12, symbol="x"))
    by_rate.update_layout(height=420, margin=dict(l=0, r=0, t=40, b=0), xaxis_title="rate r", yaxis_title="mIoU (%)",
                          title="mIoU vs rate — source solid, held-out mean dashed")
    pareto.update_layout(height=420, margin=dict(l=0, r=0, t=40, b=0), xaxis_title="GFLOPs @ 512×1024",
                         yaxis_title="mIoU (%)", title="mIoU vs GFLOPs (stars: the dense models)")
    return by_rate, pareto


def _tab_curves(v: View) -> None:
    st.markdown("Each curve is a **(model, criterion)** pair: npdg and slimming both rank |γ|, so they are drawn on the "
                "model each sparse training produced; l1norm and random run on the model picked in the sidebar. Every "
                f"point: soft-masked mIoU on the first {int(v.n_scenes)} val scenes per domain.")
    try:
        pairs = pruning.curve_pairs(v.model.id, v.model.path)
    except Exception as exc:
        components.error_box(exc)
        pairs = []
    st.caption("Pairs: " + "; ".join(f"**{p.label}**" for p in pairs))
    statuses = {p.label: pruning.curve_job(p.path, p.criterion, n_images=int(v.n_scenes), lookup_only=True) for p in pairs}
    missing = [p for p in pairs if statuses[p.label] is None]
    if missing and st.button(f"Compute {len(missing)} curve(s) ({len(pruning.CURVE_RATES)} rates each, in the background)",
                             type="primary", key="curves_go",
                             help="Runs soft-masked evaluations at every rate; kept in the dashboard cache for every session."):
        for p in missing:
            try:
                statuses[p.label] = pruning.curve_job(p.path, p.criterion, n_images=int(v.n_scenes))
            except Exception as exc:
                components.error_box(exc)
    running = [s for s in statuses.values() if s is not None and s.state == "running"]
    if running:
        jobs_ui.follow(running[0], "Curves", retry_key="curves_retry", unit="rates")
    for s in statuses.values():
        if s is not None and s.state == "failed":
            jobs_ui.follow(s, "Curves", retry_key=f"curves_retry_{s.key}")
    frames = {label: pruning.job_frame(s) for label, s in statuses.items() if s is not None and s.state == "done"}
    if frames:
        current = None
        if v.plan is not None and v.criterion not in ("sensitivity",):
            try:
                held = pruning.masked_miou(v.model.path, v.plan, n_images=int(v.n_scenes), precision=v.precision)
                c = pruning.plan_cost(v.model.path, v.plan, (512, 1024))
                current = (c.gflops, 0.0, float(held[held["averaged"]]["pruned_miou"].mean()))
            except Exception:
                current = None
        by_rate, pareto = _curve_figure(frames, current)
        left, right = st.columns(2)
        left.plotly_chart(by_rate, width="stretch", key="prune_curves")
        right.plotly_chart(pareto, width="stretch", key="prune_pareto")
    elif not running:
        st.info("No curves yet for these pairs at this scene count: compute them (about a minute per pair on a 2-core CPU).")


# --------------------------------------------------------------------------------------- per layer
def _layer_figure(frame) -> go.Figure:
    fig = go.Figure()
    layers = list(dict.fromkeys(frame["layer"]))
    for i, layer in enumerate(layers):
        f = frame[frame["layer"] == layer]
        colour = figures.categorical(i)
        name = heatmap.short_layer(layer)
        fig.add_scatter(x=f["rate"], y=100 * f["source"], mode="lines+markers", name=name, legendgroup=name,
                        line=dict(color=colour))
        fig.add_scatter(x=f["rate"], y=100 * f["heldout"], mode="lines+markers", name=name, legendgroup=name,
                        line=dict(color=colour, dash="dash"), showlegend=False)
    if len(frame):
        fig.add_hline(y=100 * frame["dense_source"].iloc[0], line=dict(color="black", width=1), annotation_text="dense source")
        fig.add_hline(y=100 * frame["dense_heldout"].iloc[0], line=dict(color="black", width=1, dash="dash"),
                      annotation_text="dense held-out")
    fig.update_layout(height=480, margin=dict(l=0, r=0, t=40, b=0), xaxis_title="rate of that one group",
                      yaxis_title="mIoU (%)", title="One coupling group pruned at a time — source solid, held-out dashed")
    return fig


def _tab_layers(v: View) -> None:
    st.markdown("The view Distiller and NNI users miss: prune **one coupling group** at r ∈ "
                f"{{{', '.join(f'{r:g}' for r in pruning.LAYER_RATES)}}} with the rest of the model dense, and see "
                f"source and held-out mIoU ({v.criterion} ranking on {v.model.id}, 2 val scenes per domain). Lines fill in "
                "as each group is done.")
    if v.criterion == "sensitivity":
        st.info("Per-layer curves use the criteria with a built-in score (npdg, slimming, l1norm, random).")
    else:
        status = pruning.layer_curves_job(v.model.path, v.criterion, units=v.units, lookup_only=True)
        if status is None and st.button("Compute per-layer curves (≈ 1–3 min on a 2-core CPU)", type="primary",
                                        key="layers_go", help="Runs in the background; other widgets keep working."):
            try:
                status = pruning.layer_curves_job(v.model.path, v.criterion, units=v.units)
            except Exception as exc:
                components.error_box(exc)

        def _draw(partial) -> None:
            st.plotly_chart(_layer_figure(partial), width="stretch", key="prune_layers_partial")

        if jobs_ui.follow(status, "Per-layer curves", retry_key="layers_retry", unit="steps", draw_partial=_draw):
            frame = pruning.job_frame(status)
            st.plotly_chart(_layer_figure(frame), width="stretch", key="prune_layers")
            worst = frame[frame["rate"] == max(pruning.LAYER_RATES)].nsmallest(5, "heldout")
            st.caption("Most fragile groups at r = 0.7 (held-out): " + ", ".join(
                f"`{heatmap.short_layer(r.layer)}` {100 * r.heldout:.1f}" for r in worst.itertuples()))
            st.download_button("Download per-layer curves (CSV)", data=frame.to_csv(index=False),
                               file_name=f"layer_curves_{v.criterion}.csv", mime="text/csv", key="dl_layers_curves")


# --------------------------------------------------------------------------------------- mechanism
SELECTION_COLOURS = {"most_combined": "#d62728", "most_unary": "#ff7f0e", "most_binary": "#9467bd",
                     "least_combined": "#2ca02c", "most_oracle": "#8c564b", "random": "#7f7f7f"}


def _mechanism_figure(summary) -> go.Figure:
    """Δheld-out against Δsource (points of mIoU, vs the re-estimated dense model), one line per
    selection through its rates (random: mean over seeds, ± std): at equal source loss, a selection
    whose held-out falls less removed the more domain-specific units."""
    fig = go.Figure()
    rows = summary[(summary["selection"] != "dense") & summary["recalibrated"]]
    for sel, f in rows.groupby("selection", sort=False):
        f = f.sort_values("rate")
        fig.add_scatter(x=100 * f["d_source"], y=100 * f["d_heldout"], mode="lines+markers+text", name=sel,
                        text=[f"{r:g}" for r in f["rate"]], textposition="top center", textfont_size=9,
                        line=dict(color=SELECTION_COLOURS.get(sel, "#000000"), dash="dash" if sel == "random" else "solid"),
                        error_y=dict(type="data", array=100 * f["d_heldout_std"], visible=bool((f["seeds"] > 1).any())),
                        customdata=np.stack([f["rate"], 100 * f["gap"], 100 * f["rel_gap"]], axis=1),
                        hovertemplate="r = %{customdata[0]}<br>Δsource %{x:+.2f}<br>Δheld-out %{y:+.2f}"
                                      "<br>gap %{customdata[1]:+.2f} points<br>kept: held-out − source "
                                      "%{customdata[2]:+.1f} %<extra>" + sel + "</extra>")
    fig.add_hline(y=0, line=dict(color="black", width=1))
    fig.update_layout(height=420, margin=dict(l=0, r=0, t=40, b=0), xaxis_title="Δ source mIoU (points)",
                      yaxis_title="Δ held-out mean mIoU (points)",
                      title="Masking style-sensitive units, BN re-estimated (labels: the rate r)")
    return fig


def _tab_mechanism(v: View) -> None:
    st.markdown(
        "**The mechanism test** (docs/method.md §9), no training: mask the most style-sensitive units (by combined "
        "w, unary only, binary only), the least sensitive, or random ones; **re-estimate every BatchNorm's "
        "statistics** on clean and DSP-stylized source images (masking shifts what every later BN sees, which "
        "alone can wreck a model); score source and held-out mIoU against the re-estimated dense model. At equal "
        "source loss, a selection whose held-out mIoU falls *less* than random's removed the more domain-specific "
        "units; one whose held-out *rises* would be the mechanism NPDG relies on.")
    try:
        status = mechanism.mechanism_job(v.model.path, lookup_only=True)
    except Exception as exc:
        components.error_box(exc)
        return
    if status is None and st.button("Run the mechanism test (≈ 3–6 min on a 2-core CPU, in the background)",
                                    type="primary", key="mech_go",
                                    help=f"Rates {', '.join(map(str, mechanism.PAGE_RATES))}; 4 test scenes per "
                                         "domain; BN re-estimated on 16 source scenes + their stylizations."):
        try:
            status = mechanism.mechanism_job(v.model.path)
        except Exception as exc:
            components.error_box(exc)
    if jobs_ui.follow(status, "Mechanism test", retry_key="mech_retry", unit="configurations"):
        frame = pruning.job_frame(status)
        summary = mechanism.summary(frame)
        dense = summary[summary["selection"] == "dense"].set_index("recalibrated")
        m = st.columns(3)
        m[0].metric("dense held-out mIoU, as trained", f"{100 * dense.loc[False, 'heldout']:.1f}")
        m[1].metric("after BN re-estimation", f"{100 * dense.loc[True, 'heldout']:.1f}",
                    f"{100 * (dense.loc[True, 'heldout'] - dense.loc[False, 'heldout']):+.1f}",
                    help="The re-estimation alone, no unit masked: the reference of every delta below.")
        m[2].metric("dense source mIoU, re-estimated", f"{100 * dense.loc[True, 'source']:.1f}")
        st.plotly_chart(_mechanism_figure(summary), width="stretch", key="mech_fig")
        top = summary[summary["rate"] == summary["rate"].max()].set_index("selection")
        if {"most_combined", "random", "least_combined"} <= set(top.index):
            t = top.loc
            st.caption(
                f"At r = {top['rate'].iloc[0]:g}, Δsource / Δheld-out (points): masking the most sensitive (combined) "
                f"{100 * t['most_combined', 'd_source']:+.1f} / {100 * t['most_combined', 'd_heldout']:+.1f}; random "
                f"{100 * t['random', 'd_source']:+.1f} / {100 * t['random', 'd_heldout']:+.1f} "
                f"(± {100 * t['random', 'd_heldout_std']:.1f} over seeds); the least sensitive "
                f"{100 * t['least_combined', 'd_source']:+.1f} / {100 * t['least_combined', 'd_heldout']:+.1f}.")
        table = summary.assign(**{c: (100 * summary[c]).round(2) for c in ("source", "heldout", "d_source", "d_heldout",
                                                                          "d_heldout_std", "gap", "gap_std", "rel_gap")})
        st.dataframe(table, hide_index=True, key="mech_table")
        st.download_button("Download the raw results (CSV)", data=frame.to_csv(index=False),
                           file_name="mechanism.csv", mime="text/csv", key="mech_dl")


# ------------------------------------------------------------------------------------------ export
def _tab_export(v: View) -> None:
    st.markdown("The plan above, **physically** pruned: channels and heads removed from the weights "
                "(`npdg.recipes.prune`, no sparse training, no fine-tuning), with `cost.json` measured on the result.")
    if v.plan is None or v.criterion == "sensitivity":
        st.info("Pick a criterion with a built-in score to export (the sensitivity proxy is for exploring).")
    else:
        latency = st.checkbox("Measure latency too (a few seconds)", key="export_latency",
                              help="Times forwards of the pruned model at 512×1024 on this machine.")
        status = pruning.export_job(v.model.path, **v.settings, latency=latency, lookup_only=True)
        if status is None and st.button("Build the pruned model", type="primary", key="export_go",
                                        help="Runs in the background; the files land in the dashboard cache."):
            try:
                status = pruning.export_job(v.model.path, **v.settings, latency=latency)
            except Exception as exc:
                components.error_box(exc)
        if jobs_ui.follow(status, "Export", retry_key="export_retry"):
            folder = pruning.export_dir(status)
            import json

            cost = json.loads((folder / "cost.json").read_text())
            lat = [(b, cost["before"].get("latency_ms", {}).get(b), cost["after"].get("latency_ms", {}).get(b))
                   for b in cost["after"].get("latency_ms", {})]
            lat_txt = "".join(f" Latency ({b.replace('batch', 'batch ')}, 512×1024, this machine): {x:.0f} → {y:.0f} ms."
                              for b, x, y in lat if x is not None and y is not None)
            st.success(f"Pruned: GFLOPs {cost['before']['gflops']:.2f} → {cost['after']['gflops']:.2f}, parameters "
                       f"{cost['before']['params'] / 1e6:.2f} M → {cost['after']['params'] / 1e6:.2f} M.{lat_txt}")
            stem = f"{v.model.id.split(':', 1)[-1].split('/')[-1]}-{v.criterion}-r{v.rate:.2f}"
            st.download_button("Download model.safetensors + pruning_plan.json + cost.json (zip)",
                               data=lambda: pruning.export_zip(folder), file_name=f"{stem}.zip",
                               mime="application/zip", key="export_dl")
            s1, s2 = st.columns([3, 1], vertical_alignment="bottom")
            name = s1.text_input("Save as run (runs/NAME)", stem, key="export_name", max_chars=64,
                                 help="A new run folder that `npdg eval`, `npdg cost` and the model panel accept.")
            if s2.button("Save as run", key="export_save"):
                try:
                    saved = pruning.save_as_run(folder, name)
                    st.success(f"Saved {saved} — pick `run:{saved}` in the model panel.")
                except Exception as exc:
                    components.error_box(exc)
            _finetune(v, stem)


def _finetune(v: View, stem: str) -> None:
    """Fine-tune the plan in a separate process (``npdg prune``), followed like every other job."""
    import os

    st.markdown("**Fine-tune it** — `npdg prune` in a separate process with its own threads (never inside the "
                "dashboard), from the dense model with the same plan, into a new run under `runs/`.")
    f1, f2, f3 = st.columns([2, 1, 1], vertical_alignment="bottom")
    name = f1.text_input("New run (runs/NAME)", f"{stem}-ft", key="ft_name", max_chars=64)
    iters = f2.number_input("Iterations", 1, 100_000, 200, 50, key="ft_iters",
                            help="Fine-tuning iterations (DSP batches when the zoo's DSP is there).")
    cpus = max(1, os.cpu_count() or 1)
    threads = f3.number_input("Threads", 1, cpus, max(1, cpus - 1), 1, key="ft_threads",
                              help="CPU threads of the fine-tuning process; leave one for the dashboard.")
    ft = dict(criterion=v.criterion, rate=v.rate, threshold=v.settings["threshold"], round_to=int(v.round_to),
              max_layer_ratio=v.cap, seed=int(v.settings.get("seed", 0)), units=v.units)
    with st.expander("The same as a command"):
        st.code(" ".join(pruning.finetune_command(v.model.path, f"runs/{name}", iters=int(iters), **ft)[1:])
                .replace(" -m npdg", "python -m npdg", 1), language="bash")
    status = pruning.finetune_job(v.model.path, name, iters=int(iters), threads=int(threads), lookup_only=True, **ft)
    if status is None and st.button("Fine-tune in the background", key="ft_go"):
        try:
            status = pruning.finetune_job(v.model.path, name, iters=int(iters), threads=int(threads), **ft)
        except Exception as exc:
            components.error_box(exc)
    if status is not None and status.state == "running" and st.button("Stop fine-tuning", key="ft_stop"):
        pruning.stop_finetune(status)
    if jobs_ui.follow(status, "Fine-tuning", retry_key="ft_retry", unit="iterations"):
        folder = pruning.finetune_dir(status)
        st.success(f"Fine-tuned into `{folder}` — pick `run:{folder}` in the model panel, or compare it with the "
                   "dense model on the Compare page.")


@st.fragment
def _body(model: ModelChoice, facts: pruning.ModelFacts) -> None:
    """The controls and the open tab, as one fragment: a new rate reruns only this part, not the
    sidebar and the page's text (docs/dashboard.md §4). Only the open tab is computed and drawn."""
    v = _controls(model, facts)
    components.lazy_tabs({"What-if": lambda: _tab_now(v), "mIoU vs rate": lambda: _tab_curves(v),
                          "Per layer": lambda: _tab_layers(v), "Mechanism": lambda: _tab_mechanism(v),
                          "Export": lambda: _tab_export(v)})


_body(model, facts)

components.teaching_notes(
    "- **What-if**: the plan zeroes the pruned units (soft masks); the mIoU is what the physically pruned model "
    "would score before fine-tuning (the same numbers to 1e-4, tested).\n"
    "- **Sparse training first**: on a model whose γ were never pushed down, removing units is like removing "
    "random pieces; NPDG and Network Slimming both train γ sparse first and differ only in the weights of the L1.\n"
    "- **mIoU vs rate / Pareto**: the first bird (cheaper) is on the x axis; the second (better on held-out "
    "domains) is whether the dashed curve rises above the dense star.\n"
    "- **Per layer**: which layers a criterion can thin safely — typically the wide late layers — and which "
    "break at once (the stem, the decoder's projection)."
)
