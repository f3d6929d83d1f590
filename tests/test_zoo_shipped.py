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


def test_shipped_what_ifs_cover_the_prune_page_and_match_a_computation():
    """Every shipped model carries its Prune-page what-ifs; the default model's cover each slider
    position of the plans the page makes (a digest drift would silently make the page compute),
    and one entry re-computed here gives the shipped numbers."""
    import numpy as np

    from npdg.evaluate import domain_result
    from npdg.service import clear_caches, pruning

    shipped = zoo.cards()
    if not shipped:
        pytest.skip("no zoo model is shipped yet (python -m npdg zoo build)")
    for name, card in shipped.items():
        assert pruning.SHIPPED_WHAT_IF in card["files"], f"{name}: run python -m npdg zoo whatif {name}"
    model = zoo.ZOO_DIR / "r18-npdg-sparse"
    for crit, rate in (("npdg", 0.3), ("random", 0.05), ("l1norm", 0.7)):
        plan = pruning.select_plan(model, criterion=crit, rate=rate)
        hit = pruning.shipped_what_if(model, plan, pruning.DOMAIN_NAMES, "val", 2, pruning.DEFAULT_SIZE)
        assert hit is not None, (crit, rate)
    plan = pruning.select_plan(model, criterion="npdg", rate=0.3)
    dense, pruned = pruning.shipped_what_if(model, plan, pruning.DOMAIN_NAMES, "val", 2, pruning.DEFAULT_SIZE)
    clear_caches()
    calc = pruning.confusions(pruning.shared_model(model), plan, tuple(pruning.DOMAIN_NAMES), "val", 2,
                              pruning.DEFAULT_SIZE, None)
    again = {d: domain_result(d, cm, 2).miou for d, cm in calc.items()}
    np.testing.assert_allclose([again[d] for d in pruned], list(pruned.values()), atol=0.005)
