"""Selection: rate and threshold modes, group constraints, plan JSON, refusals."""

import numpy as np
import pytest
import torch
from conftest import randomize_gamma
from torch import nn

from npdg.errors import ConfigError, DataError
from npdg.models import build_model
from npdg.models.gates import add_head_gates
from npdg.models.units import coupling_groups
from npdg.pruning.selection import PruningPlan, select


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return randomize_gamma(build_model("deeplabv3plus", "resnet18", 4).eval())


@pytest.fixture(scope="module")
def b0():
    torch.manual_seed(0)
    m = build_model("segformer", "mit_b0", 4).eval()
    add_head_gates(m)
    return randomize_gamma(m, 1)


def test_rate_mode_constraints(r18):
    plan = select(r18, score="gamma", rate=0.3, round_to=8, max_layer_ratio=0.9)
    total = plan.candidates["filter"]
    assert total == sum(g.size for g in coupling_groups(r18))
    n = plan.num_pruned["filter"]
    assert 0.25 * total <= n <= 0.3 * total + 8 * len(plan.groups)
    for g in plan.groups:
        kept = g.size - len(g.pruned)
        assert kept % 8 == 0 and kept >= max(8, int(np.ceil(0.1 * g.size)))
    # lowest scores go first: every pruned group channel scores ≤ the kept ones of the same group
    gamma = {g.gid: None for g in plan.groups}
    for cg in coupling_groups(r18):
        mods = dict(r18.named_modules())
        score = np.mean([mods[name].weight.detach().abs().numpy()[list(loc)] for name, loc, _ in cg.members], axis=0)
        gp = next(g for g in plan.groups if g.gid == cg.gid)
        if gp.pruned and gp.kept:
            assert score[list(gp.pruned)].max() <= score[list(gp.kept)].min()
        gamma[cg.gid] = score
    # layer view agrees with the groups
    lp = plan.layer("net.encoder.layer1.1.bn2")
    gp = next(g for g in plan.groups if g.root == "net.encoder.bn1")
    assert lp.pruned == gp.pruned and len(lp.kept) + len(lp.pruned) == 64


def test_per_layer_cap_and_round_to_one(r18):
    plan = select(r18, rate=0.9 - 1e-6, round_to=1, max_layer_ratio=0.5)
    assert all(len(g.pruned) <= g.size // 2 for g in plan.groups)
    assert plan.num_pruned["filter"] == sum(g.size // 2 for g in plan.groups)  # every cap reached


def test_heads_keep_one_and_single_head_layers_skipped(b0):
    with torch.no_grad():
        b0.get_submodule("net.encoder.block4.0.attn").head_gate.zero_()
    plan = select(b0, score="gamma", rate=0.5)
    heads = {g.root: g for g in plan.groups if g.kind == "head"}
    assert "net.encoder.block1.0.attn" not in heads  # one head: never a candidate
    assert len(heads["net.encoder.block4.0.attn"].kept) >= 1
    assert plan.candidates["head"] == 30
    assert plan.num_pruned["head"] == 15


def test_threshold_modes(r18):
    none = select(r18, threshold=1e-9, rate=0.3)
    assert none.is_empty and "prunes nothing" in none.note
    capped = select(r18, threshold=10.0, rate=0.3)  # above every score: threshold mode is capped at the rate
    assert "capped at the rate" in capped.note
    assert capped.num_pruned == select(r18, rate=0.3).num_pruned
    some = select(r18, threshold=0.2, rate=0.3, round_to=1)
    n = some.num_pruned["filter"]
    assert 0 < n <= int(0.3 * some.candidates["filter"])
    for g in some.groups:  # only channels below the threshold are pruned
        cg = next(c for c in coupling_groups(r18) if c.gid == g.gid)
        mods = dict(r18.named_modules())
        score = np.mean([mods[name].weight.detach().abs().numpy()[list(loc)] for name, loc, _ in cg.members], axis=0)
        assert (score[list(g.pruned)] < 0.2).all()


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, "0.3"])
def test_bad_rate_refused(r18, rate):
    with pytest.raises(ConfigError, match="rate must be in"):
        select(r18, rate=rate)


def test_unknown_criterion_and_no_units():
    with pytest.raises(ConfigError, match="criterion"):
        select(build_model("deeplabv3plus", "resnet18", 2), score="taylor")
    with pytest.raises(DataError, match="no prunable units"):
        select(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))


def test_plan_json_roundtrip_and_arch_mismatch(r18, b0, tmp_path):
    plan = select(r18, score="random", rate=0.3, seed=3)
    assert plan != select(r18, score="random", rate=0.3, seed=4)
    path = plan.save(tmp_path / "plan.json")
    assert PruningPlan.load(path) == plan
    with pytest.raises(ConfigError, match="resnet18.*encoder='mit_b0'|arch="):
        plan.check_model(b0)
    (tmp_path / "bad.json").write_text('{"format": "something"}')
    with pytest.raises(DataError, match="not an npdg pruning plan"):
        PruningPlan.load(tmp_path / "bad.json")


def test_l1norm_scores_filters_by_weights(r18):
    plan = select(r18, score="l1norm", rate=0.3)
    assert plan.criterion == "l1norm" and plan.num_pruned["filter"] > 0
    assert plan != select(r18, score="gamma", rate=0.3)


def test_only_group_prunes_one_coupling_group(r18, b0):
    full = select(r18, rate=0.3)
    gid = next(g.gid for g in full.groups if g.size >= 64)
    plan = select(r18, rate=0.5, only_group=gid, round_to=1)
    assert [g.gid for g in plan.groups] == [gid]
    g = plan.groups[0]
    assert len(g.pruned) == g.size // 2  # half of that group, lowest |γ| first
    gammas = {str(lp.name): lp for lp in plan.layers}
    touched = [lp.name for lp in plan.layers if lp.pruned]
    assert touched and all(len(gammas[n].pruned) == g.size // 2 for n in touched)  # every member layer, same count
    assert sum(len(lp.pruned) for lp in plan.layers if lp.name not in touched) == 0
    assert "only coupling group" in plan.note
    heads = select(b0, rate=0.5, kinds=("head",))
    hid = next(h.gid for h in heads.groups if h.size >= 2)
    one = select(b0, rate=0.5, only_group=hid, kinds=("head",))
    assert len(one.groups) == 1 and len(one.groups[0].pruned) == one.groups[0].size // 2
    with pytest.raises(ConfigError, match="no prunable coupling group"):
        select(r18, rate=0.3, only_group=10_000)
