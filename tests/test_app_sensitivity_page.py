"""The Sensitivity page under AppTest: heatmap + layer table + strip + scatter + DSP-vs-oracle agreement
from the zoo's precomputed tables; λ re-mixes, the source and layer switch, a heatmap click (injected
through session state, DASHBOARD.md fact 10) selects a layer; heads tables, the "no table yet" path
with an in-page probe, and service errors shown as error boxes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from apptest_helpers import charts, open_page
from streamlit.testing.v1 import AppTest

from app import heatmap
from npdg.recipes import zoo
from npdg.service import jobs

APP = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
R18 = zoo.ZOO_DIR / "r18-erm"
pytestmark = pytest.mark.skipif(not (R18 / "sensitivity_dsp.csv").is_file(), reason="zoo r18-erm tables not shipped")
ORACLE = "held-out renderings (oracle)"


def _open(model: str | None = None, **query) -> AppTest:
    """The page, opened with URL parameters ``query``, then switched to ``model`` in the sidebar panel."""
    at = open_page("../pages/sensitivity.py", timeout=180, **query)
    if model is not None:
        at.selectbox(key="m").set_value(model).run()
    assert not at.exception, at.exception
    return at


_charts = charts


def _scatter_title(at: AppTest) -> str:
    titles = [c["layout"]["title"]["text"] for c in _charts(at, "plotly_chart")
              if "Unary vs binary" in c.get("layout", {}).get("title", {}).get("text", "")]
    assert len(titles) == 1, titles
    return titles[0]


def _selected_text(at: AppTest) -> str:
    found = [m.value for m in at.markdown if m.value.startswith("**Selected layer:**")]
    assert len(found) == 1, found
    return found[0]


def _layers(at: AppTest) -> pd.DataFrame:
    return at.dataframe[0].value


@pytest.fixture(scope="module")
def page() -> AppTest:
    return _open()


def test_renders_heatmap_table_strip_scatter_and_agreement(page):
    at = page
    assert at.title[0].value.startswith("Sensitivity")
    assert at.selectbox(key="m").value == "zoo:r18-erm"
    assert not at.error
    charts = [e for e in at.main if type(e).__name__ == "UnknownElement" and e.type == "echarts_chart"]
    assert len(charts) == 1
    assert len(charts[0].proto.SerializeToString()) < 1_000_000  # binned + rounded payload
    table = _layers(at)
    assert list(table["layer"])[:2] == ["encoder.bn1", "encoder.layer1.0.bn1"]  # model order, shown without "net."
    assert len(table) == 29 and set(table["kind"]) == {"filter"}
    assert {"mean w", "max w", "size", "mean |γ|"} <= set(table.columns)
    assert (table["size"] == pd.read_csv(R18 / "sensitivity_dsp.csv").groupby("layer", sort=False).size().values).all()
    caps = " ".join(c.value for c in at.caption)
    assert "16 source images × 4 DSP styles, seed 0" in caps and "λ = 0.4" in caps and "deeplabv3plus/resnet18" in caps
    assert "Mean ρ over layers" not in caps  # the diagnostic is its own tab, computed only when open
    assert _scatter_title(at) == "Unary vs binary — encoder.bn1"
    assert len(at.get("download_button")) == 2
    at.session_state["tab"] = "DSP vs oracle"
    at.run()
    assert not at.exception and "Mean ρ over layers" in " ".join(c.value for c in at.caption)  # both tables shipped
    assert not [e for e in at.main if type(e).__name__ == "UnknownElement" and e.type == "echarts_chart"]
    at.session_state["tab"] = "Overview"
    at.run()


def test_colour_range_histogram_and_groups(page):
    at = page
    spec = _charts(at, "echarts_chart")[0]
    assert (spec["visualMap"]["min"], spec["visualMap"]["max"]) == (0.0, 1.0)
    assert "saveAsImage" in spec["toolbox"]["feature"]  # the figure can be downloaded
    at.slider(key="range").set_value((0.3, 0.7)).run()
    spec = _charts(at, "echarts_chart")[0]
    assert (spec["visualMap"]["min"], spec["visualMap"]["max"]) == (0.3, 0.7)
    at.slider(key="range").set_value((0.5, 0.5)).run()  # an empty range is widened, never an error
    spec = _charts(at, "echarts_chart")[0]
    assert not at.exception and spec["visualMap"]["max"] - spec["visualMap"]["min"] >= 0.05 - 1e-9
    at.slider(key="range").set_value((0.0, 1.0)).run()
    table = _layers(at)
    hist = table["histogram"].iloc[0]
    assert len(hist) == heatmap.HIST_BINS and sum(hist) == table["size"].iloc[0]
    assert (table["group"] != "—").all()  # zoo tables carry coupling groups


def test_lambda_changes_the_numbers_instantly(page):
    at = page
    before = _layers(at)["mean w"].to_numpy()
    at.slider(key="lam").set_value(0.9).run()
    after = _layers(at)["mean w"].to_numpy()
    assert not at.exception and not at.error
    assert not np.allclose(before, after)
    assert "λ = 0.90" in _selected_text(at)
    at.radio(key="score").set_value("unary").run()  # unary does not depend on λ
    unary_09 = _layers(at)["mean w"].to_numpy()
    at.slider(key="lam").set_value(0.1).run()
    np.testing.assert_allclose(_layers(at)["mean w"].to_numpy(), unary_09)
    at.radio(key="score").set_value("combined").run()
    at.slider(key="lam").set_value(0.4).run()
    np.testing.assert_allclose(_layers(at)["mean w"].to_numpy(), before)


def test_switching_to_the_oracle_probe(page):
    at = page
    dsp = _layers(at)["mean w"].to_numpy()
    at.radio(key="src").set_value(ORACLE).run()
    assert not at.exception and not at.error
    caps = " ".join(c.value for c in at.caption)
    assert "8 val scenes × 7 renderings" in caps and "fog" in caps
    assert not np.allclose(_layers(at)["mean w"].to_numpy(), dsp)
    at.radio(key="src").set_value("DSP styles").run()


def test_heatmap_click_selects_the_layer_and_the_selectbox_still_works(page):
    at = page
    cells = heatmap.bin_layers(pd.read_csv(R18 / "sensitivity_dsp.csv"), "combined")
    row = int(cells.index[(cells["full_layer"] == "net.encoder.layer3.0.bn2") & (cells["col"] == 10)][0])
    at.session_state["sens_heatmap"] = {"selection": {"selected": [{"series_index": 0, "data_indices": [row]}],
                                                      "areas": []}}
    at.run()
    assert not at.exception and not at.error
    assert at.selectbox(key="layer").value == "net.encoder.layer3.0.bn2"
    assert _scatter_title(at) == "Unary vs binary — encoder.layer3.0.bn2"
    assert "clicked filters 40–43" in _selected_text(at)  # 256 units → 64 bins of 4
    # the selectbox takes over; the (persisting) old click does not snap it back
    at.selectbox(key="layer").set_value("net.decoder.aspp.2").run()
    assert not at.exception
    assert _scatter_title(at) == "Unary vs binary — decoder.aspp.2"
    assert "clicked" not in _selected_text(at)
    at.run()
    assert at.selectbox(key="layer").value == "net.decoder.aspp.2"
    # out-of-range indices (a stale selection on other data) are ignored
    at.session_state["sens_heatmap"] = {"selection": {"selected": [{"data_indices": [10**6]}]}}
    at.run()
    assert not at.exception and at.selectbox(key="layer").value == "net.decoder.aspp.2"


def test_layer_table_row_selects_the_layer(page):
    at = page
    at.session_state["sens_layers"] = {"selection": {"rows": [3], "columns": [], "cells": []}}
    at.run()
    assert not at.exception
    assert at.selectbox(key="layer").value == "net." + str(_layers(at)["layer"].iloc[3])
    at.session_state["sens_layers"] = {"selection": {"rows": [], "columns": [], "cells": []}}
    at.run()


def test_scatter_selection_selects_units_and_links_to_the_drill_down(page):
    at = page
    layer = at.selectbox(key="layer").value
    assert not at.get("page_link")  # nothing selected yet
    points = [{"point_index": i, "customdata": [u, layer]} for i, u in enumerate((7, 3))]
    points.append({"point_index": 9, "customdata": [5, "net.some.other.layer"]})  # stale: ignored
    at.session_state["sens_scatter"] = {"selection": {"points": points, "box": [], "lasso": []}}
    at.run()
    assert not at.exception
    links = at.get("page_link")
    assert [link.proto.label for link in links] == ["unit 3", "unit 7"]
    from urllib.parse import parse_qs

    q = parse_qs(links[0].proto.query_string)
    assert q["unit"] == ["3"] and q["m"] == ["zoo:r18-erm"] and q["layer"] == [layer.removeprefix("net.")]
    assert "Selected units** (2" in " ".join(m.value for m in at.markdown)
    at.session_state["sens_scatter"] = {"selection": {"points": [], "box": [], "lasso": []}}
    at.run()


def test_layer_from_the_url():
    at = _open(layer="decoder.block1.1", score="binary")  # the URL holds the short name the selectbox shows
    assert at.selectbox(key="layer").value == "net.decoder.block1.1"
    assert _scatter_title(at) == "Unary vs binary — decoder.block1.1"
    assert "48 filters" in _selected_text(at) and "w (binary)" in _selected_text(at)


# -------------------------------------------------------------------------------------------------
# local runs: a heads table, no table yet (probe in the page), broken files
# -------------------------------------------------------------------------------------------------
def _run(root: Path, name: str, arch: str = "deeplabv3plus", encoder: str = "resnet18", model: bool = False) -> Path:
    d = root / "runs" / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(f"model:\n  arch: {arch}\n  encoder: {encoder}\ntrain:\n  mode: erm\n  iters: 10\n")
    if model:
        os.symlink(R18 / "model.safetensors", d / "model.safetensors")
    else:
        (d / "model.safetensors").write_bytes(b"not a model")
    return d


def _segformer_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    layers = [("net.decoder.fuse_stage.1", "filter", 256)] + [
        (f"net.encoder.block{b}.{i}.attn", "head", h) for b, h in zip((1, 2, 3, 4), (1, 2, 5, 8)) for i in (0, 1)]
    for layer, kind, n in layers:
        wu, wb = rng.random(n), rng.random(n)
        for u in range(n):
            rows.append({"layer": layer, "unit": u, "kind": kind, "unary": wu[u] / 2, "binary": wb[u] / 2,
                         "w_unary": wu[u], "w_binary": wb[u], "combined": 0.4 * wu[u] + 0.6 * wb[u],
                         "gamma": 1.0, "group": -1})
    return pd.DataFrame(rows)


@pytest.fixture()
def local_runs(tmp_path, monkeypatch):
    heads = _run(tmp_path, "mit-heads", "segformer", "mit_b0")
    _segformer_table().to_csv(heads / "sensitivity_dsp.csv", index=False)
    (heads / "sensitivity_dsp.json").write_text(json.dumps({"arch": "segformer", "encoder": "mit_b0", "lam": 0.4,
                                                            "unary": "share", "images": 8, "styles": 4, "seed": 0}))
    _run(tmp_path, "r18-copy", model=True)
    bad = _run(tmp_path, "r18-bad")
    (bad / "sensitivity_dsp.csv").write_text("layer,unit\nx,0\n")
    monkeypatch.chdir(tmp_path)  # the model panel lists ./runs
    return tmp_path


def test_heads_table_of_a_segformer_run(local_runs):
    at = _open(layer="encoder.layer3.0.bn2")  # a layer the next model does not have
    assert at.selectbox(key="layer").value == "net.encoder.layer3.0.bn2"
    at.selectbox(key="m").set_value("run:runs/mit-heads").run()
    assert not at.exception
    assert at.selectbox(key="layer").value == "net.decoder.fuse_stage.1"  # back to the first layer
    assert at.selectbox(key="m").value == "run:runs/mit-heads"
    assert not at.error
    assert "filters and heads" in at.subheader[0].value
    table = _layers(at)
    assert set(table["kind"]) == {"filter", "head"} and len(table) == 9
    at.selectbox(key="layer").set_value("net.encoder.block4.0.attn").run()
    assert not at.exception
    assert "8 heads" in _selected_text(at)
    assert _scatter_title(at) == "Unary vs binary — encoder.block4.0.attn"
    # no oracle table, and the "model" file is junk: probing reports the error, the page survives
    at.radio(key="src").set_value(ORACLE).run()
    assert any("no precomputed" in i.value for i in at.info)
    at.number_input(key="probe_n_oracle").set_value(2).run()
    at.button(key="probe_go_oracle").click().run()
    assert not at.exception
    jobs.wait_all(timeout=120)  # the probe runs in a background worker
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "failed" in at.error[0].value
    assert at.button(key="probe_retry_oracle")  # a failed job offers a retry
    assert at.expander  # the teaching notes still render


def test_a_run_without_tables_is_probed_in_the_page(local_runs):
    at = _open("run:runs/r18-copy")
    assert not at.exception and not at.error
    assert any("no precomputed" in i.value for i in at.info)
    assert not at.dataframe  # nothing to show yet
    at.number_input(key="probe_n_dsp").set_value(2).run()
    at.number_input(key="probe_k").set_value(2).run()
    at.button(key="probe_go_dsp").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    jobs.wait_all(timeout=120)  # the probe runs in a background worker; the page polls it
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(_layers(at)) == 29
    caps = " ".join(c.value for c in at.caption)
    assert "Computed on request (dashboard cache) — 2 source images × 2 DSP styles" in caps
    at.slider(key="lam").set_value(1.0).run()  # kept: λ re-mixes it without probing again
    assert not at.exception and len(_layers(at)) == 29 and not at.get("status")
    # a second browser session asking for the same probe gets the finished table, no button, no new job
    other = _open("run:runs/r18-copy")
    other.number_input(key="probe_n_dsp").set_value(2).run()
    other.number_input(key="probe_k").set_value(2).run()
    assert not other.exception and len(_layers(other)) == 29 and not other.get("status")
    # ... and so does one after a restart: the table was persisted in the dashboard cache
    jobs.forget()
    assert list(Path(os.environ[jobs.CACHE_ENV], "sensitivity").glob("*.csv"))
    third = _open("run:runs/r18-copy")
    third.number_input(key="probe_n_dsp").set_value(2).run()
    third.number_input(key="probe_k").set_value(2).run()
    assert not third.exception and len(_layers(third)) == 29


def test_a_running_probe_shows_progress_and_the_page_stays_usable(local_runs, monkeypatch):
    import threading

    from npdg.service import sensitivity as sens_service

    gate, real = threading.Event(), sens_service.probe_dsp

    def slow_probe(*args, progress=None, **kwargs):
        if progress:
            progress(0, 1)
        gate.wait(60)
        return real(*args, progress=progress, **kwargs)

    monkeypatch.setattr(sens_service, "probe_dsp", slow_probe)
    at = _open("run:runs/r18-copy")
    at.number_input(key="probe_n_dsp").set_value(2).run()
    at.number_input(key="probe_k").set_value(2).run()
    at.button(key="probe_go_dsp").click().run()
    assert not at.exception
    assert len(at.get("status")) == 1 and "Probing" in at.get("status")[0].proto.label
    at.slider(key="lam").set_value(0.7).run()  # other widgets work while it runs
    assert not at.exception and len(at.get("status")) == 1
    gate.set()
    jobs.wait_all(timeout=120)
    at.run()
    assert not at.exception and len(_layers(at)) == 29 and not at.get("status")


def test_a_broken_table_is_an_error_box(local_runs):
    at = _open("run:runs/r18-bad")
    assert not at.exception
    assert len(at.error) == 1 and "sensitivity table" in at.error[0].value
    assert at.expander


def test_bin_layers_keeps_the_payload_small_and_maps_cells_to_units():
    cells = heatmap.bin_layers(_segformer_table(), "combined")
    assert cells.groupby("row")["col"].max().max() == heatmap.MAX_COLS - 1  # 256 → 64 bins
    assert list(cells[cells["full_layer"] == "net.encoder.block3.0.attn"]["units"]) == [f"head {i}" for i in range(5)]
    assert cells[(cells["row"] == 0) & (cells["col"] == 1)]["units"].item() == "filters 4–7"
    assert heatmap.clicked_cell({"selection": {"selected": [{"data_indices": [1]}]}}, cells)["first"] == 4
    assert heatmap.clicked_cell({"selection": {"selected": []}}, cells) is None
    assert heatmap.clicked_cell(None, cells) is None
