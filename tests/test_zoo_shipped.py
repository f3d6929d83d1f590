"""The shipped zoo (assets/zoo): every file matches its card and every model loads (plan replayed).

The load-only check of ``python -m npdg zoo verify``; ``zoo verify --eval 20`` re-measures mIoU.
"""

from __future__ import annotations

import pytest

from npdg.recipes import zoo


def test_shipped_zoo_verifies():
    shipped = zoo.cards()
    if not shipped:
        pytest.skip("no zoo model is shipped yet (python -m npdg zoo build)")
    assert zoo.verify(log=lambda m: None) == []
    for name, card in shipped.items():
        assert card["name"] == name and card["evaluation"]["first_scenes_per_domain"] == zoo.EVAL_SCENES
        assert all(f["bytes"] <= 30e6 for f in card["files"].values()), name  # no file over 30 MB
