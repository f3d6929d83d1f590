"""The Prune page under AppTest: a live what-if on the zoo's npdg-sparse model (plan, cost, soft-masked
mIoU per domain, strip and kept/pruned bars), the rate slider and threshold mode, the honest note on a
model that was not sparse-trained, curves and per-layer curves as background jobs, export + save as run,
and bad settings as messages."""

from __future__ import annotations

from pathlib import Path

import pytest
from apptest_helpers import charts, open_page
from streamlit.testing.v1 import AppTest

from npdg.recipes import zoo
from npdg.service import jobs
from npdg.service import pruning as pr

APP = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
SPARSE = zoo.ZOO_DIR / "r18-npdg-sparse"
pytestmark = pytest.mark.skipif(not (SPARSE / "model.safetensors").is_file(), reason="zoo r18-npdg-sparse not shipped")


def _open(**query) -> AppTest:
    return open_page("../pages/prune.py", **query)


def _tab(at: AppTest, label: str) -> AppTest:
    """Open a tab of the page (only the open tab is computed and drawn)."""
    at.session_state["tab"] = label
    at.run()
    assert not at.exception, at.exception
    return at


def _metric(at: AppTest, label: str):
    return next(m for m in at.metric if m.label == label)


_charts = charts


def test_what_if_on_the_sparse_model_and_the_rate_slider():
    at = _open()
    assert at.title[0].value.startswith("Prune")
    assert at.selectbox(key="m").value == "zoo:r18-npdg-sparse"  # the page's own default model
    assert not at.error and not at.warning  # npdg on the npdg-sparse model: nothing to warn about
    assert _metric(at, "scenes").value == "2 per domain"
    g30 = float(_metric(at, "GFLOPs @ 512×1024").value)
    pruned30 = int(_metric(at, "pruned filters").value.split(" / ")[0])
    assert pruned30 > 0
    bars = next(c for c in _charts(at) if "dense vs soft-pruned" in c["layout"]["title"]["text"])
    assert [t["name"] for t in bars["data"]] == ["dense", "pruned (r = 0.30)"] and len(bars["data"][0]["x"]) == 8
    at.slider(key="rate").set_value(0.5).run()
    assert not at.exception and not at.error
    assert float(_metric(at, "GFLOPs @ 512×1024").value) < g30
    assert int(_metric(at, "pruned filters").value.split(" / ")[0]) > pruned30
    at.slider(key="rate").set_value(0.0).run()
    assert _metric(at, "pruned filters").value.startswith("0 /") and not at.exception
    assert "+0.0" in str(_metric(at, "held-out mean mIoU").delta)  # nothing pruned: the dense numbers


def test_default_what_ifs_are_the_shipped_ones_and_other_settings_compute():
    at = _open(rate="0.45")
    shipped = pr.shipped_what_if(SPARSE, pr.select_plan(SPARSE, criterion="npdg", rate=0.45), pr.DOMAIN_NAMES, "val",
                                 2, pr.DEFAULT_SIZE)
    assert shipped is not None and any(c.value.startswith("Precomputed in fp32") for c in at.caption)
    held = [v for d, v in shipped[1].items() if d not in ("source", "suburb")]
    assert _metric(at, "held-out mean mIoU").value == f"{100 * sum(held) / len(held):.1f}"
    g45 = _metric(at, "GFLOPs @ 512×1024").value
    at.slider(key="cap").set_value(0.75).run()  # off the shipped table: computed in the background
    assert not at.exception and not at.error
    assert _metric(at, "GFLOPs @ 512×1024").value != g45  # the cost is the new plan's at once
    previous = _metric(at, "held-out mean mIoU (previous plan)")  # the last scores, said to be the last
    assert previous.value == f"{100 * sum(held) / len(held):.1f}"
    assert any("previous plan's (r = 0.45)" in c.value for c in at.caption)
    jobs.wait_all(timeout=300)
    at.run()
    assert not at.exception and any(c.value.startswith("Computed in") for c in at.caption)
    frame = pr.masked_miou(SPARSE, pr.select_plan(SPARSE, criterion="npdg", rate=0.45, max_layer_ratio=0.75),
                           n_images=2, precision="fast")
    computed = frame.loc[frame["averaged"], "pruned_miou"].mean()
    assert _metric(at, "held-out mean mIoU").value == f"{100 * computed:.1f}"


def test_threshold_mode_and_the_proxy_criterion():
    at = _open()
    at.toggle(key="thr_on").set_value(True).run()
    at.number_input(key="thr").set_value(1e-6).run()
    assert not at.exception
    assert _metric(at, "pruned filters").value.startswith("0 /")
    assert any("prunes nothing" in c.value for c in at.caption)
    at.toggle(key="thr_on").set_value(False).run()
    at.radio(key="crit").set_value("sensitivity").run()  # ranks by the shipped DSP table
    assert not at.exception and not at.error
    assert int(_metric(at, "pruned filters").value.split(" / ")[0]) > 0


def test_a_model_that_was_not_sparse_trained_is_flagged():
    at = _open(m="zoo:r18-erm")
    assert not at.exception
    warnings = " ".join(w.value for w in at.warning)
    infos = " ".join(i.value for i in at.info)
    assert "trained with mode `erm`" in warnings
    assert "not sparse-trained" in infos


def test_curves_per_layer_and_export_run_in_the_background(tmp_path, monkeypatch):
    monkeypatch.setattr(pr, "CURVE_RATES", (0.0, 0.3))
    monkeypatch.setattr(pr, "LAYER_RATES", (0.5,))
    monkeypatch.setattr(pr, "DOMAIN_NAMES", ("source", "night", "fog"))  # fewer evaluations: behaviour, not speed
    groups = pr.prunable_groups
    monkeypatch.setattr(pr, "prunable_groups", lambda *a, **k: groups(*a, **k).head(3))
    monkeypatch.chdir(tmp_path)  # "save as run" writes ./runs
    at = _open(crit="l1norm")
    assert not at.get("button")  # closed tabs are not computed: no curve, export or per-layer button yet
    _tab(at, "mIoU vs rate")
    if "curves_go" in [b.key for b in at.button]:  # (shipped curves need no button)
        at.button(key="curves_go").click().run()
    assert not at.exception
    _tab(at, "Per layer")
    at.button(key="layers_go").click().run()
    jobs.wait_all(timeout=900)
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(c["layout"]["title"]["text"].startswith("One coupling group pruned at a time") for c in _charts(at))
    _tab(at, "mIoU vs rate")
    titles = [c["layout"]["title"]["text"] for c in _charts(at)]
    assert any(t.startswith("mIoU vs rate") for t in titles) and any(t.startswith("mIoU vs GFLOPs") for t in titles)
    curves = next(c for c in _charts(at) if c["layout"]["title"]["text"].startswith("mIoU vs rate"))
    names = {t["name"] for t in curves["data"]}
    assert {"npdg on r18-npdg-sparse — source", "slimming on r18-slimming-sparse — held-out",
            "l1norm on r18-npdg-sparse — source", "random on r18-npdg-sparse — held-out"} <= names
    _tab(at, "Export")
    at.button(key="export_go").click().run()
    jobs.wait_all(timeout=900)
    at.run()
    assert not at.exception and not at.error
    assert any("GFLOPs" in s.value and "→" in s.value for s in at.success)
    assert at.get("download_button")
    at.text_input(key="export_name").set_value("my-pruned").run()
    at.button(key="export_save").click().run()
    assert (tmp_path / "runs" / "my-pruned" / "pruning_plan.json").is_file()
    at.button(key="export_save").click().run()  # again: refused, nothing overwritten
    assert any("already exists" in e.value for e in at.error)
    # fine-tuning: the same plan as a command, launched in a separate process (tests/test_service_pruning.py)
    assert any("--sparse-iters 0" in c.value and "--finetune-iters 200" in c.value for c in at.code)
    at.text_input(key="ft_name").set_value("bad name!").run()
    at.button(key="ft_go").click().run()
    assert not at.exception and any("a run name is" in e.value for e in at.error)


@pytest.mark.parametrize("query", [{"rate": "0.95"}, {"rate": "nan"}, {"crit": "bogus"}, {"n": "3"}, {"thr": "-inf"}])
def test_bad_values_in_the_link_fall_back(query):
    at = _open(**query)
    assert not at.exception
    assert 0.0 <= at.slider(key="rate").value <= 0.7


@pytest.mark.skipif(not (SPARSE / "mechanism.csv").is_file(), reason="no shipped mechanism results")
def test_the_mechanism_tab_shows_the_shipped_test():
    at = _tab(_open(), "Mechanism")
    assert not at.error and not at.get("button")  # shipped: nothing to compute
    fig = next(c for c in _charts(at) if "Masking style-sensitive units" in c["layout"]["title"]["text"])
    names = {t["name"] for t in fig["data"]}
    assert {"most_combined", "least_combined", "random"} <= names
    assert _metric(at, "after BN re-estimation").value
    assert any("masking the most sensitive" in c.value for c in at.caption)
    assert fig["layout"]["xaxis"]["title"]["text"].startswith("Δ source")
