"""What the page tests share: open a dashboard page under AppTest with URL parameters, and read the
charts AppTest cannot type (plotly and ECharts specs)."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app" / "main.py")


def open_page(page: str | None, *, timeout: int = 300, **query) -> AppTest:
    """The app opened with URL parameters ``query`` (bound widgets take the value they show), then
    switched to ``page`` (e.g. ``"../pages/unit.py"``; None stays on the default page)."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    if page is not None:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def charts(at: AppTest, kind: str = "plotly_chart") -> list[dict]:
    """The specs of the page's ``kind`` charts (``plotly_chart`` or ``echarts_chart``), in page order."""
    return [json.loads(e.proto.spec) for e in at.main if type(e).__name__ == "UnknownElement" and e.type == kind
            and getattr(e.proto, "spec", "")]
