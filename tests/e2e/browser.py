"""Driving the dashboard in headless Debian chromium: start a server, open a page, time a rerun.

Shared by the browser tests (tests/e2e) and ``bench/bench_dashboard.py``. A rerun is timed from the
input to "script done" in the browser: a MutationObserver on the app's ``data-test-script-state``
records every transition with ``performance.now()``; the time is the first ``notRunning`` after a
``running`` that follows the input.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "e2e" / "artifacts"
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
EXCEPTION = "[data-testid='stException']"
#: Streamlit's frontend, opened on a page's own URL (``/explain``), first probes ``/explain/_stcore/
#: health`` and ``host-config`` (404) before it falls back to the server root; the browser logs those
#: two 404s as console errors. They are Streamlit's, not the page's: the only console errors ignored.
_PROBE_404 = ("/_stcore/health", "/_stcore/host-config")


def need_browser() -> None:
    """Skip without Debian chromium (fail in CI, ``CI=true``); fail without Playwright."""
    import pytest

    if not Path(CHROMIUM).exists():
        msg = f"Debian chromium not found at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError as exc:  # pragma: no cover
        pytest.fail(f"playwright is not installed: {exc}")


def need_zoo(*names: str, file: str = "model.safetensors") -> None:
    """Skip unless every named zoo model ships ``file``; make the screenshot folder."""
    import pytest

    from npdg.recipes import zoo

    missing = [n for n in names if not (zoo.ZOO_DIR / n / file).is_file()]
    if missing:
        pytest.skip(f"zoo {', '.join(missing)} not shipped ({file})")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def dashboard(cache: Path, *, extra_env: dict | None = None, args: tuple[str, ...] = ()):
    """``streamlit run app/main.py`` on a free localhost port with its own cache; yields (url, process,
    seconds until healthy)."""
    port = free_port()
    env = {**os.environ, "NPDG_CACHE": str(cache), **(extra_env or {})}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "main.py"), "--server.port", str(port),
         "--server.headless", "true", "--server.address", "127.0.0.1", *(("--", *args) if args else ())],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError(f"streamlit did not become healthy: {proc.stdout.read()[-2000:]}")
    try:
        yield url, proc, time.perf_counter() - t0
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def chromium(width: int = 1400, height: int = 1100):
    """A headless Debian chromium (Playwright); yields the browser."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser, width: int = 1400, height: int = 1100):
    """A page whose console errors (other than Streamlit's path probes) are collected in ``page.errors``."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.errors = []

    def on_console(msg) -> None:
        if msg.type == "error" and not any(p in (msg.location or {}).get("url", "") for p in _PROBE_404):
            page.errors.append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: page.errors.append(f"page error: {exc}"))
    return page


def open_idle(page, url: str, timeout_s: float = 180) -> float:
    """Go to ``url`` and wait until its script has run; seconds it took."""
    t0 = time.perf_counter()
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector(IDLE, timeout=timeout_s * 1000)
    return time.perf_counter() - t0


_WATCH = """() => {
  if (!window.__npdgStates) {
    window.__npdgStates = [];
    // the whole document, not one element: a re-mounted stApp is still seen (attributeFilter keeps it cheap).
    // A fast rerun can go running → notRunning before the observer is called: each record's new value is
    // the next record's old value (the element's current value for the last one), not what it reads now.
    new MutationObserver(records => {
      const app = records.filter(r => r.target.getAttribute && r.target.getAttribute('data-testid') === 'stApp');
      const now = performance.now();
      app.forEach((r, i) => {
        const next = app.slice(i + 1).find(q => q.target === r.target);
        window.__npdgStates.push([next ? next.oldValue : r.target.getAttribute('data-test-script-state'), now]);
      }); })
      .observe(document.documentElement, {attributes: true, subtree: true, attributeOldValue: true,
                                          attributeFilter: ['data-test-script-state']});
  }
  if (!window.__npdgInputs) {  // the user's input itself: the first pointer press or key press after the reset
    window.__npdgInputs = [];
    for (const type of ['pointerdown', 'keydown'])
      window.addEventListener(type, () => window.__npdgInputs.push(performance.now()), true);
  }
  if (!window.__npdgDom) {  // when the page last changed: a rerun faster than a React commit shows no 'running'
    window.__npdgDom = [0];
    new MutationObserver(() => { window.__npdgDom[0] = performance.now(); })
      .observe(document.body, {childList: true, subtree: true, characterData: true});
  }
  window.__npdgStates.length = 0;
  window.__npdgInputs.length = 0;
  window.__npdgDom[0] = 0;
  return performance.now();
}"""
_DONE = """() => { const s = window.__npdgStates; const i = s.findIndex(x => x[0] === 'running');
  if (i < 0) return null; const d = s.slice(i).find(x => x[0] === 'notRunning'); return d ? d[1] : null; }"""
_STARTED = "() => window.__npdgStates.some(x => x[0] === 'running')"
#: A rerun so fast that React committed running and notRunning in one render leaves no state change
#: to see; the page's content still changed. Settled: the content changed after the input, the app is
#: idle and nothing changed for 2 s (no server takes that long to say a rerun started) — then the last
#: change is when the rerun was drawn.
_SETTLED = f"""() => {{ const last = window.__npdgDom[0], input = window.__npdgInputs[0];
  return input !== undefined && last > input && performance.now() - last > 2000
         && document.querySelector({json.dumps(IDLE)}) !== null; }}"""
_STARTED_OR_SETTLED = f"() => ({_STARTED})() || ({_SETTLED})()"


def timed(page, action, timeout_s: float = 120, retry=None, retry_after_s: float = 15) -> float:
    """Seconds from the input ``action()`` gives to the end of the rerun it causes (:func:`timed_pair`)."""
    return timed_pair(page, action, timeout_s, retry, retry_after_s)[0]


def timed_pair(page, action, timeout_s: float = 120, retry=None, retry_after_s: float = 15) -> tuple[float, float]:
    """(from the input, from the call) to the end of the rerun ``action()`` causes, in seconds,
    measured in the browser's clock.

    "The input" is the first pointer or key press the page receives (a capturing listener), what a
    user does; "the call" is when Playwright was asked to act, which adds its own round trips and
    actionability checks (~0.1–0.2 s a click on the 2-core CPU) that no user waits for. Without a
    press (e.g. a programmatic change) both are the call. ``retry``: an input to give instead when no
    rerun has started ``retry_after_s`` after the first while the app is idle (headless chromium
    rarely drops a click that lands while the page settles); the time still counts from the first
    input. Without it, such a drop times out."""
    t0 = page.evaluate(_WATCH)
    action()
    if retry is not None:
        try:
            page.wait_for_function(_STARTED_OR_SETTLED, timeout=retry_after_s * 1000)
        except Exception:
            if page.locator(IDLE).count():
                retry()
        else:
            if not page.evaluate(_STARTED):  # drawn in one render: done when the content last changed
                last, pressed = page.evaluate("() => [window.__npdgDom[0], window.__npdgInputs[0]]")
                return (last - pressed) / 1000.0, (last - t0) / 1000.0
    page.wait_for_function(f"() => ({_DONE})() !== null", timeout=timeout_s * 1000)
    done, pressed = page.evaluate(f"() => [({_DONE})(), window.__npdgInputs[0] ?? null]")
    start = pressed if pressed is not None and pressed >= t0 else t0
    return (done - start) / 1000.0, (done - t0) / 1000.0


def press_slider(page, index: int = 0, key: str = "ArrowRight", times: int = 1) -> None:
    """Move the ``index``-th slider on the page with the keyboard (one rerun when released)."""
    slider = page.get_by_role("slider").nth(index)
    slider.focus()
    for _ in range(times):
        page.keyboard.press(key)


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")
