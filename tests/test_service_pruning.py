"""Prune page service (npdg.service.pruning): plans by criterion, cost, soft-masked what-ifs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_service_core import make_assets

import npdg.service as svc
from npdg.cost import count_flops, count_params
from npdg.errors import ConfigError
from npdg.pruning.physical import prune_model
from npdg.service import compare
from npdg.service import pruning as pr
from npdg.service import sensitivity as sens

SIZE = (64, 128)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("prune"))


def test_criteria_plans_and_cost(assets):
    run, dsp_dir = assets
    crit = pr.criteria()
    assert {"npdg", "slimming", "l1norm", "random", "sensitivity"} <= set(crit["name"])
    assert crit.set_index("name").loc["sensitivity", "proxy"]
    plan = pr.select_plan(run, criterion="npdg", rate=0.3)
    assert plan.criterion == "npdg" and plan.num_pruned["filter"] > 0
    plan.candidates["filter"] = -1  # a copy: the cached plan is not affected
    assert pr.select_plan(run, criterion="npdg", rate=0.3).candidates["filter"] > 0
    assert pr.select_plan(run, criterion="random", rate=0.3, seed=1).layers != plan.layers
    table = pr.plan_table(plan)
    assert table["pruned"].sum() == sum(len(lp.pruned) for lp in plan.layers)
    assert ((table["kept"] + table["pruned"]) == table["size"]).all()
    model = svc.shared_model(run)
    cost = pr.plan_cost(run, plan, SIZE)
    pruned = prune_model(model, plan)
    assert cost.params == count_params(pruned) and cost.gflops == pytest.approx(count_flops(pruned, SIZE) / 1e9)
    with pytest.raises(ConfigError, match="sensitivity table"):
        pr.select_plan(run, criterion="sensitivity")
    table_path = sens.probe_dsp(run, dsp_dir, n_images=1, n_styles=2, size=SIZE).save(run / "sens.csv")
    proxy = pr.select_plan(run, criterion="sensitivity", sensitivity=table_path, rate=0.2)
    least = pr.select_plan(run, criterion="sensitivity", sensitivity=table_path, rate=0.2, drop="least_sensitive")
    assert proxy.criterion == "sensitivity" and proxy.layers != least.layers


def test_soft_masked_predictions_and_miou(assets):
    run, _ = assets
    model = svc.shared_model(run)
    before = copy.deepcopy(model.state_dict())
    plan = pr.select_plan(run, rate=0.3)
    preds = pr.masked_predictions(run, plan, index=1, domains=("source", "night"), size=SIZE)
    assert [p.domain for p in preds] == ["source", "night"] and not preds[0].pruned.flags.writeable
    # the dense prediction is the model's own; the pruned one is soft_forward's
    from npdg.pruning.soft import soft_forward
    from npdg.service.data import scene_batch

    x, _ = scene_batch("night", "val", [1], SIZE)
    with torch.no_grad():
        np.testing.assert_array_equal(preds[1].dense, model(x).argmax(1)[0].numpy())
        np.testing.assert_array_equal(preds[1].pruned, soft_forward(model, plan, x).argmax(1)[0].numpy())
    assert 0.0 <= preds[1].changed <= 1.0 and preds[1].pruned_error.tp_count.sum() >= 0
    empty = pr.select_plan(run, rate=0.0)
    same = pr.masked_predictions(run, empty, index=1, domains=("night",), size=SIZE)[0]
    assert same.changed == 0.0
    calls = []
    scores = pr.masked_miou(run, plan, domains=("source", "night", "suburb"), n_images=1, size=SIZE,
                            progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (6, 6)
    assert scores["averaged"].tolist() == [False, True, False]
    dense = compare.evaluate_model(run, domains=("source", "night", "suburb"), n_images=1, size=SIZE)
    np.testing.assert_allclose(scores["dense_miou"], dense.domains["miou"])
    np.testing.assert_allclose(scores["delta"], scores["pruned_miou"] - scores["dense_miou"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not hasattr(model, "pruning_plan") and not svc.is_busy()
