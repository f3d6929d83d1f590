"""The whole dashboard in headless Debian chromium, as a user meets it: every page from its deep link,
its main widget used, no exception box and no console error; a screenshot of each page; four
concurrent sessions on different models and pages, each with its own results, the server answering.

Screenshots land in tests/e2e/artifacts/ (docs/img/ holds the reviewed copies).
"""

from __future__ import annotations

import threading
import urllib.request

import pytest
from browser import (
    ARTIFACTS,
    EXCEPTION,
    IDLE,
    chromium,
    dashboard,
    need_browser,
    need_zoo,
    new_page,
    open_idle,
    press_slider,
    timed,
)

pytestmark = pytest.mark.e2e
ZOO = ("r18-erm", "r18-dsp", "r18-npdg", "r18-npdg-sparse", "mitb0-erm")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_browser()
    need_zoo(*ZOO)
    with dashboard(tmp_path_factory.mktemp("dashboard-cache")) as (url, proc, _):
        yield url


def _slider(page):
    press_slider(page, 0)


def _radio(label: str):
    return lambda page: page.get_by_text(label, exact=True).first.click()


def _select(label: str, option: str):
    def use(page):
        page.get_by_label(label).first.click()
        page.get_by_role("option", name=option, exact=True).click()

    return use


#: page → (deep link, title it shows, the text that says it is fully drawn — background jobs done —,
#: what a user does first)
PAGES = {
    "data": ("/?scene=3&domains=source&domains=night&domains=fog", "Data — one scene, many domains",
             "Classes in this scene", _slider),  # the default page lives at /
    "styles": ("/styles?k=4&scene=2", "Styles — what DSP imitates", "style 3", _slider),
    "sensitivity": ("/sensitivity?m=zoo:r18-dsp", "Sensitivity — which units react to style", "Selected layer", _slider),
    "prune": ("/prune?rate=0.3", "Prune — what if these units were gone?", "GFLOPs @ 512×1024", _slider),
    "compare": ("/compare?doms=source&doms=fog", "Compare — two models, one scene, every domain",
                "Val scene 0 in 2 domains", _slider),
    "explain": ("/explain?dom=fog", "Explain — why does a model predict this here?", "The decision, unit by unit",
                _radio("class")),
    "unit": ("/unit?layer=encoder.layer1.0.bn1&unit=5", "Unit — one filter or head across domains",
             "How strongly it fires, per domain", lambda page: page.get_by_role("button", name="Increment").first.click()),
    "guide": ("/guide", "Guide — the method in six steps", "Glossary", _radio("DSP")),
}


@pytest.mark.parametrize("name", list(PAGES))
def test_every_page_opens_and_its_main_widget_works(server, name):
    link, title, ready, use = PAGES[name]
    with chromium() as browser:
        page = new_page(browser, height=1500)
        open_idle(page, server + link)
        page.get_by_text(title).first.wait_for(timeout=60_000)
        page.get_by_text(ready).first.wait_for(timeout=300_000)  # e.g. the Unit page's atlas job has finished
        page.wait_for_selector(IDLE, timeout=180_000)
        seconds = timed(page, lambda: use(page), timeout_s=180, retry=lambda: use(page))
        page.wait_for_selector(IDLE, timeout=180_000)
        assert page.locator(EXCEPTION).count() == 0, page.locator(EXCEPTION).first.inner_text()
        assert not page.errors, page.errors
        page.screenshot(path=str(ARTIFACTS / f"{name}_page.png"), full_page=True)
        assert seconds < 60


def _gflops(page) -> str:
    metric = page.locator("[data-testid='stMetric']").filter(has_text="GFLOPs @ 512×1024")
    return metric.locator("[data-testid='stMetricValue']").inner_text().strip()


def test_four_concurrent_sessions_keep_their_own_results(server):
    from npdg.recipes import zoo
    from npdg.service import pruning
    from npdg.service import zoo as zoo_service

    sparse = zoo.ZOO_DIR / "r18-npdg-sparse"
    want = {r: f"{pruning.plan_cost(sparse, pruning.select_plan(sparse, rate=r)).gflops:.2f}" for r in (0.2, 0.5)}
    links = {"prune-0.2": "/prune?rate=0.2", "prune-0.5": "/prune?rate=0.5", "sens": "/sensitivity?m=zoo:r18-dsp",
             "compare": "/compare?a=zoo:mitb0-erm&b=zoo:r18-erm&doms=fog"}
    alive = []

    def ping() -> None:  # the server keeps answering while four sessions compute
        for _ in range(20):
            alive.append(urllib.request.urlopen(server + "/_stcore/health", timeout=30).read() == b"ok")

    with chromium() as browser:
        pages = {k: new_page(browser) for k in links}
        pinger = threading.Thread(target=ping)
        for k, link in links.items():
            pages[k].goto(server + link, wait_until="commit")
        pinger.start()
        for page in pages.values():
            page.wait_for_selector(IDLE, timeout=300_000)
            page.wait_for_selector("h1", timeout=60_000)
        for k in ("prune-0.2", "prune-0.5"):
            pages[k].locator("[data-testid='stMetric']").filter(has_text="GFLOPs").first.wait_for(timeout=300_000)
        pinger.join()
        assert _gflops(pages["prune-0.2"]) == want[0.2] and _gflops(pages["prune-0.5"]) == want[0.5]
        assert want[0.2] != want[0.5]
        pages["compare"].get_by_text("Val scene 0 in 1 domain").wait_for(timeout=300_000)
        assert "A = zoo:mitb0-erm, B = zoo:r18-erm" in pages["compare"].inner_text("body")
        card = zoo_service.zoo_models().table.set_index("name").loc["r18-dsp"]  # the sidebar shows its card
        headline = f"Source {100 * card.source:.1f}, held-out {100 * card.heldout:.1f} mIoU"
        assert headline in pages["sens"].inner_text("section[data-testid='stSidebar']")
        for page in pages.values():
            assert page.locator(EXCEPTION).count() == 0 and not page.errors, page.errors
    assert alive and all(alive)
