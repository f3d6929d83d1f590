"""Old-format deep links, translated for URL-bound widgets.

Every selection widget is bound to the URL (``key=..., bind="query-params"``): Streamlit reads its
value from ``?key=`` and drops values it cannot take. Links made before the binding used other
formats — a comma-separated list (``?domains=source,fog``), a resolution index (``?res=1``), and
out-of-range numbers that were clamped (``?scene=100000``). :func:`seed` turns such a value into the
widget's session state *before* the widget is created, so those links keep opening the same view;
anything it cannot read is left to the binding (which falls back to the default).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import streamlit as st


def seed(key: str, parse: Callable[[list[str]], Any]) -> None:
    """Seed widget ``key`` from its URL value(s) via ``parse`` (None = leave it to the binding); once
    per session, before the widget exists."""
    if key in st.session_state:
        return
    raw = st.query_params.get_all(key)
    if not raw:
        return
    value = parse(raw)
    if value is not None:
        st.session_state[key] = value


def clamped_int(lo: int, hi: int, default: int) -> Callable[[list[str]], int]:
    """A finite number, clamped to [lo, hi] and rounded down; ``default`` for anything else (``nan``,
    ``inf`` — which Streamlit's own binding cannot even parse — or text)."""
    def parse(raw: list[str]) -> int:
        v = _finite(raw[-1])
        return default if v is None else int(min(max(math.floor(v), lo), hi))
    return parse


def clamped_float(lo: float, hi: float, default: float) -> Callable[[list[str]], float]:
    """A finite number clamped to [lo, hi]; ``default`` for anything else (``nan``, ``inf``, text)."""
    def parse(raw: list[str]) -> float:
        v = _finite(raw[-1])
        return default if v is None else float(min(max(v, lo), hi))
    return parse


def choices_list(choices: Sequence[str]) -> Callable[[list[str]], list[str] | None]:
    """Repeated values or one comma-separated value, keeping the valid choices in the given order."""
    def parse(raw: list[str]) -> list[str] | None:
        items = [p.strip() for r in raw for p in r.split(",")]
        return [c for c in items if c in choices] or None
    return parse


def option_by_index(options: Sequence[str]) -> Callable[[list[str]], str | None]:
    """An option given by its label or by its (clamped) index in ``options``."""
    def parse(raw: list[str]) -> str | None:
        value = raw[-1]
        if value in options:
            return value
        v = _finite(value)
        return None if v is None else options[int(min(max(v, 0), len(options) - 1))]
    return parse


def _finite(text: str) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def clamp_state(key: str, lo: float, hi: float) -> None:
    """Keep widget ``key``'s session value inside [lo, hi] before the widget is created (e.g. a scene
    index carried over from a longer split, or a unit of a wider layer), where Streamlit would raise."""
    value = st.session_state.get(key)
    if isinstance(value, int | float) and not lo <= value <= hi:
        clamped = min(max(value, lo), hi)
        st.session_state[key] = int(clamped) if isinstance(value, int) else float(clamped)


def guard_int_inputs() -> None:
    """Work around a Streamlit 1.67 bug: an integer ``st.number_input`` bound to the URL raises
    ``OverflowError`` (a traceback in the page) on ``?scene=inf`` or ``?seed=1e999``, because its URL
    deserializer calls ``int(inf)``. The patched deserializer falls back to the widget's default, as
    it already does for out-of-range values; idempotent. Called once by ``app/main.py``."""
    from streamlit.elements.widgets import number_input as ni

    original = ni.NumberInputSerde.deserialize
    if getattr(original, "_npdg_guard", False):
        return

    def deserialize(self, ui_value):
        try:
            return original(self, ui_value)
        except OverflowError:
            return self.value

    deserialize._npdg_guard = True  # type: ignore[attr-defined]
    ni.NumberInputSerde.deserialize = deserialize
