"""Typed access to the dashboard's URL query parameters (deep links).

A page reads its defaults from the URL once, then writes the current choice back, so a link copied
from the address bar reopens the same view. A value that does not parse, or is not finite
(``nan``, ``inf``), falls back to the default; a finite number outside its range is clamped into it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import streamlit as st


def get_int(key: str, default: int, lo: int, hi: int) -> int:
    """Integer query parameter clamped to [lo, hi]; malformed values fall back to ``default``."""
    try:
        return min(max(int(st.query_params.get(key, default)), lo), hi)
    except (TypeError, ValueError, OverflowError):
        return default


def get_float(key: str, default: float, lo: float, hi: float) -> float:
    """Float query parameter clamped to [lo, hi]; malformed or non-finite values (``nan``, ``inf``)
    fall back to ``default``."""
    try:
        value = float(st.query_params.get(key, default))
    except (TypeError, ValueError, OverflowError):
        return default
    if not math.isfinite(value):
        return default
    return min(max(value, lo), hi)


def get_choice(key: str, default: str, choices: Sequence[str]) -> str:
    value = st.query_params.get(key, default)
    return value if value in choices else default


def get_list(key: str, default: Sequence[str], choices: Sequence[str]) -> list[str]:
    """Comma-separated query parameter, keeping only valid choices (in the given order)."""
    raw = st.query_params.get(key)
    if not raw:
        return list(default)
    picked = [v for v in raw.split(",") if v in choices]
    return picked or list(default)


def set_params(**values) -> None:
    """Write the current view into the URL (lists are comma-joined)."""
    for k, v in values.items():
        text = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
        if st.query_params.get(k) != text:
            st.query_params[k] = text
