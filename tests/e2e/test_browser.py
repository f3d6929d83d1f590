"""End-to-end: start the dashboard, open it in headless Debian chromium, move a widget, screenshot.

In CI (``CI=true``) a missing browser is a failure; elsewhere the test is skipped without one.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from browser import ARTIFACTS, CHROMIUM, FLAGS, IDLE, dashboard, need_browser, need_zoo

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_browser()
    with dashboard(tmp_path_factory.mktemp("dashboard-cache")) as (url, _, _):  # nothing from earlier runs
        yield url


@contextmanager
def _opened(url: str):
    """Headless Debian chromium on ``url``, waited until the script has run."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_selector(IDLE, timeout=120_000)
        yield page
        browser.close()


def test_data_page_in_chromium(server):

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with _opened(f"{server}/?domains=source,photo,night,fog,toon,suburb") as page:
        page.get_by_text("Data — one scene, many domains").wait_for(timeout=60_000)
        page.wait_for_selector("[data-testid='stImage'] img", timeout=60_000)
        page.wait_for_selector(IDLE, timeout=120_000)
        page.wait_for_function("() => document.querySelectorAll(\"[data-testid='stImage'] img\").length === 6",
                               timeout=60_000)  # the old comma format still opens all six domains
        before = page.locator("[data-testid='stImage'] img").first.get_attribute("src")

        slider = page.get_by_role("slider").first
        slider.focus()
        for _ in range(6):
            page.keyboard.press("ArrowRight")
        page.wait_for_function(
            "(src) => { const i = document.querySelector(\"[data-testid='stImage'] img\"); return i && i.src !== src; }",
            arg=before, timeout=60_000,
        )
        page.wait_for_selector(IDLE, timeout=120_000)
        page.wait_for_url("**opacity=0.8*", timeout=30_000)
        assert page.get_by_text("0.80").count() >= 1
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "data_page.png"), full_page=True)
        assert not page.locator("[data-testid='stException']").count()
    assert (ARTIFACTS / "data_page.png").stat().st_size > 20_000


def test_styles_page_binds_its_widgets_to_the_url(server):
    """A copied link reopens the same view: ?k=3 gives 3 styles, moving the slider rewrites the URL."""

    need_zoo("r18-erm", file="card.json")
    with _opened(f"{server}/styles?k=3&scene=2") as page:
        page.get_by_text("Styles — what DSP imitates").wait_for(timeout=60_000)
        page.get_by_text("style 2 — CE").first.wait_for(timeout=120_000)
        assert page.get_by_text("style 3 — CE").count() == 0  # K = 3 from the link: styles 0, 1, 2
        shown = page.locator("[data-testid='stSidebar'] [data-testid='stSelectbox'] input").first.input_value()
        assert shown == "zoo:r18-erm", shown  # the model panel shows the id a link would hold
        page.screenshot(path=str(ARTIFACTS / "styles_page.png"), full_page=True)
        assert not page.locator("[data-testid='stException']").count()


def test_sensitivity_heatmap_click_selects_a_layer(server):
    """A click on the ECharts heatmap (DASHBOARD.md fact 5) selects that cell's layer for the scatter."""

    need_zoo("r18-erm", file="sensitivity_dsp.csv")
    selected = "[...document.querySelectorAll('[data-testid=\"stMarkdownContainer\"]')]" \
               ".map(e => e.innerText).find(t => t.startsWith('Selected layer:')) || ''"
    with _opened(f"{server}/sensitivity") as page:
        page.get_by_text("Sensitivity — which units react to style").wait_for(timeout=60_000)
        canvas = page.locator(".st-key-sens_heatmap canvas").first
        canvas.wait_for(timeout=60_000)
        page.wait_for_function(f"() => ({selected}).includes('net.encoder.bn1')", timeout=60_000)
        page.wait_for_timeout(1000)  # let ECharts finish its first layout
        box = canvas.bounding_box()
        assert box and box["width"] > 300 and box["height"] > 300, box
        # inside the plot area: right of the layer labels (≤ 180 px), left of the colour bar (80 px)
        x = box["x"] + 180 + (box["width"] - 260) * 0.5
        y = box["y"] + 10 + (box["height"] - 50) * 0.55
        page.mouse.click(x, y)
        page.wait_for_function(f"() => {{ const t = {selected}; return t && !t.includes('net.encoder.bn1 '); }}",
                               timeout=60_000)
        page.wait_for_selector(IDLE, timeout=120_000)
        text = page.evaluate(selected)
        assert "clicked" in text, text
        page.wait_for_url("**layer=*", timeout=30_000)  # the click went through the URL-bound selectbox
        page.mouse.move(box["x"] + 5, box["y"] - 40)  # no tooltip in the picture
        page.set_viewport_size({"width": 1400, "height": 2760})  # Streamlit scrolls inside: show the whole page
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "sensitivity_page.png"), full_page=True)
        assert not page.locator("[data-testid='stException']").count()
    assert (ARTIFACTS / "sensitivity_page.png").stat().st_size > 20_000


def test_unit_page_deep_link_and_background_atlas(server, tmp_path):
    """?layer=&unit= opens the drill-down; the top patches come from a background job that the page
    follows in a polling fragment (st.status + progress) and shows without any further input."""

    need_zoo("r18-erm", file="model.safetensors")
    with _opened(f"{server}/unit?layer=encoder.layer1.0.bn1&unit=5&scene=2") as page:
        page.get_by_text("Unit — one filter or head across domains").wait_for(timeout=60_000)
        page.get_by_text("unit 5 on val scene 2 in every domain").wait_for(timeout=60_000)
        # the atlas job: either still running (a status box) or already done; the patches appear by themselves
        page.get_by_text("How strongly it fires, per domain").wait_for(timeout=180_000)
        page.wait_for_selector(IDLE, timeout=120_000)
        assert page.get_by_text("scene ").count() >= 4  # patch captions
        assert "unit=5" in page.url and "layer=encoder.layer1.0.bn1" in page.url
        page.set_viewport_size({"width": 1400, "height": 2300})
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "unit_page.png"), full_page=True)
        assert not page.locator("[data-testid='stException']").count()
        # a partner link opens the partner's drill-down in the same app
        link = page.locator("[data-testid='stPageLink'] a").filter(has_text="|R|").first
        if link.count():
            import re

            target = re.search(r"unit (\d+)", link.inner_text()).group(1)
            link.click()
            page.wait_for_url(f"**unit={target}*", timeout=60_000)
            page.get_by_text(f"unit {target} on val scene 2").wait_for(timeout=60_000)
    assert (ARTIFACTS / "unit_page.png").stat().st_size > 20_000


def test_prune_page_rate_slider_and_export_download(server, tmp_path):
    """The rate slider re-plans and rewrites the URL; the exported zip downloads in the browser and holds
    the pruned weights, the plan and the cost."""

    import zipfile

    need_zoo("r18-npdg-sparse", file="model.safetensors")
    metric = "[...document.querySelectorAll('[data-testid=\"stMetric\"]')].map(e => e.innerText)" \
             ".find(t => t.startsWith('pruned filters')) || ''"
    with _opened(f"{server}/prune?rate=0.3") as page:
        page.get_by_text("Prune — what if these units were gone?").wait_for(timeout=60_000)
        page.get_by_text("dense vs soft-pruned").first.wait_for(timeout=120_000)
        before = page.evaluate(metric)
        slider = page.get_by_role("slider").first
        slider.focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_url("**rate=0.35*", timeout=60_000)
        page.wait_for_function(f"(b) => {{ const t = {metric}; return t && t !== b; }}", arg=before, timeout=120_000)
        page.wait_for_selector(IDLE, timeout=120_000)
        page.set_viewport_size({"width": 1400, "height": 2000})
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "prune_page.png"), full_page=True)
        assert not page.locator("[data-testid='stException']").count()
        page.get_by_role("tab", name="Export").click()
        page.wait_for_url("**tab=Export*", timeout=30_000)  # the open tab is part of the link too
        page.get_by_role("button", name="Build the pruned model").click()
        button = page.get_by_role("button", name="Download model.safetensors + pruning_plan.json + cost.json (zip)")
        button.wait_for(timeout=300_000)
        with page.expect_download(timeout=120_000) as info:
            button.click()
        path = tmp_path / "pruned.zip"
        info.value.save_as(path)
        assert zipfile.ZipFile(path).namelist() == ["model.safetensors", "pruning_plan.json", "cost.json"]
        assert not page.locator("[data-testid='stException']").count()


def test_compare_split_slider_works_offline(server):
    """The before/after component (st.components.v2, inline JS) moves its split with the slider, keeps
    the position across reruns, and loads nothing from outside localhost."""

    need_zoo("r18-erm", "r18-npdg")
    outside: list[str] = []
    with _opened(f"{server}/compare?doms=source&doms=night&doms=fog") as page:
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("http://127.0.0.1", "data:", "blob:"))
                else None)
        page.get_by_text("Compare — two models, one scene, every domain").wait_for(timeout=60_000)
        page.get_by_text("Val scene 0 in 3 domains").wait_for(timeout=120_000)  # repeated ?doms= bind the multiselect
        rng = page.locator(".ba-range").first
        rng.wait_for(timeout=120_000)
        clip = page.locator(".ba-a").first
        assert "50%" in clip.evaluate("e => e.style.clipPath")
        rng.evaluate("e => { e.value = 20; e.dispatchEvent(new Event('input', {bubbles: true}));"
                     " e.dispatchEvent(new Event('change', {bubbles: true})); }")
        assert "80%" in clip.evaluate("e => e.style.clipPath")  # A shows on the left 20 %
        page.wait_for_timeout(1500)
        page.wait_for_selector(IDLE, timeout=120_000)
        page.get_by_role("slider").first.focus()  # rerun the page: the split stays where it was left
        page.keyboard.press("ArrowRight")
        page.wait_for_timeout(1500)
        page.wait_for_selector(IDLE, timeout=120_000)
        assert page.locator(".ba-range").first.input_value() == "20"
        page.set_viewport_size({"width": 1400, "height": 1900})
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTIFACTS / "compare_page.png"), full_page=True)
        assert not page.locator("[data-testid='stException']").count()
    assert not outside, outside
