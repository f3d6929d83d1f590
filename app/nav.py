"""The dashboard's pages, declared once: navigation sections for ``app/main.py`` and page objects
for cross-page links (``st.page_link(nav.page("unit"), query_params=...)``).

A page's identity in Streamlit is the hash of its ``url_path``, so a fresh :class:`st.Page` built
here links to the one registered by the navigation.
"""

from __future__ import annotations

import streamlit as st

#: section → [(script relative to app/, title, icon, url_path)] in menu order; the first is the default.
#: Icons are Material Symbols, a font Streamlit ships (emoji need a colour-emoji font the machine may lack).
SECTIONS: dict[str, list[tuple[str, str, str, str]]] = {
    "Explore": [
        ("../pages/data.py", "Data", ":material/location_city:", "data"),
        ("../pages/styles.py", "Styles", ":material/palette:", "styles"),
        ("../pages/sensitivity.py", "Sensitivity", ":material/thermostat:", "sensitivity"),
    ],
    "Prune": [
        ("../pages/prune.py", "Prune", ":material/content_cut:", "prune"),
        ("../pages/compare.py", "Compare", ":material/balance:", "compare"),
    ],
    "Inspect": [
        ("../pages/explain.py", "Explain", ":material/flashlight_on:", "explain"),
        ("../pages/unit.py", "Unit", ":material/biotech:", "unit"),
    ],
    "Learn": [
        ("../pages/guide.py", "Guide", ":material/explore:", "guide"),
    ],
}


def _spec(url_path: str) -> tuple[str, str, str, str]:
    for specs in SECTIONS.values():
        for spec in specs:
            if spec[3] == url_path:
                return spec
    raise KeyError(f"no dashboard page with url_path {url_path!r}")


def page(url_path: str, default: bool = False) -> st.Page:
    """A page object for ``url_path`` (for ``st.navigation``, ``st.page_link``, ``st.switch_page``)."""
    script, title, icon, path = _spec(url_path)
    return st.Page(script, title=title, icon=icon, url_path=path, default=default)


def navigation_pages() -> dict[str, list[st.Page]]:
    """The sections with their pages, the first page of the first section as the default."""
    first = next(iter(SECTIONS.values()))[0][3]
    return {name: [page(s[3], default=s[3] == first) for s in specs] for name, specs in SECTIONS.items()}


def unit_link(model_id: str, layer: str, unit: int, **extra: str) -> dict[str, str]:
    """Query parameters that open the Unit page on ``unit`` of ``layer`` of model ``model_id``
    (``zoo:NAME`` or ``run:PATH``). Bound widgets read their *shown* value from the URL: the model
    id, and the layer's short name (:func:`app.heatmap.short_layer`)."""
    from app.heatmap import short_layer

    return {"m": model_id, "layer": short_layer(layer), "unit": str(int(unit)), **extra}
