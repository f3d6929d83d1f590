"""The models a dashboard session can pick: the shipped zoo (``assets/zoo``) and local runs (``runs/``).

Cards are read once and handed out as copies; a model is loaded once per process and file version
(:func:`npdg.service.shared_model`) and never mutated. A missing or corrupt asset is reported by
name (a DataError) and does not stop the listing of the others.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from npdg.errors import DataError, NpdgError
from npdg.recipes import zoo as zoo_recipe
from npdg.runs import list_runs
from npdg.service import file_key, lru, shared_model

_CARDS = lru(8)


@dataclass(frozen=True)
class ZooListing:
    """The zoo table (one row per entry: name, kind, parent, shipped, mIoU, cost, size) and the
    problems found while reading it (e.g. a corrupt card), one sentence each."""

    table: pd.DataFrame
    problems: tuple[str, ...] = ()


def zoo_models() -> ZooListing:
    """Every zoo entry with its card's headline numbers; unreadable cards become problems, not errors."""
    try:
        return ZooListing(zoo_recipe.zoo_table())
    except NpdgError as exc:
        rows = [{"name": e.name, "kind": e.kind, "parent": e.parent, "shipped": False, "what": e.summary}
                for e in zoo_recipe.ENTRIES]
        return ZooListing(pd.DataFrame(rows), (str(exc),))


def zoo_card(name: str) -> dict:
    """The card of a shipped zoo model (a copy: callers may change it freely)."""
    path = zoo_recipe.zoo_path(name) / zoo_recipe.CARD
    card = _CARDS.get((name, file_key(path)), lambda: zoo_recipe.cards().get(name))
    if card is None:
        raise DataError(f"zoo model {name!r} has no card ({path}); rebuild it with `python -m npdg zoo build {name}`")
    return copy.deepcopy(card)


def zoo_model_path(name: str) -> Path:
    """The folder of a shipped zoo model (DataError naming what is missing)."""
    return zoo_recipe.zoo_path(name)


def zoo_model(name: str):
    """The shared, read-only model of a zoo entry (loaded once per process)."""
    return shared_model(zoo_recipe.zoo_path(name))


def local_runs(root: str | Path = "runs") -> pd.DataFrame:
    """The runs under ``root`` with a model (name, mode, arch, encoder, mIoU, path)."""
    t = list_runs(root)
    return t[[Path(p, "model.safetensors").is_file() for p in t["path"]]].reset_index(drop=True) if len(t) else t


__all__ = ["ZooListing", "local_runs", "zoo_card", "zoo_model", "zoo_model_path", "zoo_models"]
