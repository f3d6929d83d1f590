"""Plan cost from the plan alone (npdg.pruning.cost): equals the physically pruned model, touches nothing."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import randomize_gamma

from npdg.cost import count_flops, count_params
from npdg.errors import ConfigError
from npdg.models import build_model
from npdg.models.gates import add_head_gates
from npdg.pruning import cost as plan_cost_mod
from npdg.pruning.cost import plan_cost, plan_hash
from npdg.pruning.physical import prune_model
from npdg.pruning.selection import select

SIZE = (64, 128)


@pytest.mark.parametrize("arch,encoder,gates,device", [
    ("deeplabv3plus", "resnet18", False, "meta"),
    ("segformer", "mit_b0", True, "cpu"),  # smp's MiT cannot be built on meta: counted on the CPU
])
def test_plan_cost_equals_pruned_model_and_leaves_the_model_alone(arch, encoder, gates, device):
    torch.manual_seed(0)
    model = build_model(arch, encoder, 19).eval()
    if gates:
        add_head_gates(model)
    randomize_gamma(model)
    plan = select(model, rate=0.3)
    before = copy.deepcopy(model.state_dict())
    params_before = [id(p) for p in model.parameters()]
    plan_cost_mod.clear_cache()
    cost = plan_cost(model, plan, SIZE)
    assert cost.device == device
    assert [id(p) for p in model.parameters()] == params_before and not hasattr(model, "pruning_plan")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    pruned = prune_model(model, plan)
    assert cost.gflops == pytest.approx(count_flops(pruned, SIZE) / 1e9, rel=1e-9)
    assert cost.params == count_params(pruned)
    dense = build_model(arch, encoder, 19)
    assert cost.dense_gflops == pytest.approx(count_flops(dense, SIZE) / 1e9, rel=1e-9)
    assert cost.dense_params == count_params(dense)
    assert 0 < cost.gflops_ratio < 1 and 0 < cost.params_ratio < 1
    # a pruned model carries its plan: its own cost is the plan's cost, and the spec alone gives the dense one
    again = plan_cost(pruned, None, SIZE)
    assert (again.gflops, again.params) == (cost.gflops, cost.params)
    assert plan_cost(model.spec, None, SIZE).gflops == cost.dense_gflops


def test_plan_cost_is_cached_and_refuses_other_architectures(monkeypatch):
    model = randomize_gamma(build_model("deeplabv3plus", "resnet18", 4).eval())
    plan = select(model, rate=0.2)
    plan_cost_mod.clear_cache()
    first = plan_cost(model, plan, SIZE)
    calls = []
    monkeypatch.setattr(plan_cost_mod, "count_flops", lambda *a: calls.append(a) or 0.0)
    assert plan_cost(model, plan, SIZE) == first and not calls  # cache hit: nothing counted again
    assert plan_hash(plan) == plan_hash(select(model, rate=0.2)) != plan_hash(select(model, rate=0.3))
    with pytest.raises(ConfigError, match="resnet50"):
        plan_cost(build_model("deeplabv3plus", "resnet50", 4), plan, SIZE)


@pytest.mark.parametrize("arch,encoder,gates", [("deeplabv3plus", "resnet18", False), ("segformer", "mit_b0", True)])
def test_analytic_count_equals_the_rebuilt_pruned_model_on_random_plans(arch, encoder, gates, monkeypatch):
    """CostModel scales channel counts; the result is the flop counter's own integer for any plan."""
    torch.manual_seed(1)
    model = build_model(arch, encoder, 19).eval()
    if gates:
        add_head_gates(model)
    randomize_gamma(model)
    plan_cost_mod.clear_cache()
    for seed, rate in ((0, 0.15), (1, 0.45), (2, 0.7)):
        plan = select(model, score="random", rate=rate, seed=seed)
        cost = plan_cost(model, plan, SIZE)
        assert cost.method == "analytic"
        pruned = prune_model(model, plan)
        assert cost.gflops * 1e9 == pytest.approx(count_flops(pruned, SIZE), abs=0.5)
        assert cost.params == count_params(pruned)
    # the rebuild, where an architecture is not supported, gives the same numbers
    monkeypatch.setattr(plan_cost_mod, "_cost_model", lambda spec, size: None)
    plan_cost_mod._CACHE.clear()
    rebuilt = plan_cost(model, plan, SIZE)
    assert rebuilt.method == "rebuilt" and (rebuilt.gflops, rebuilt.params) == (cost.gflops, cost.params)


def test_analytic_count_refuses_modules_it_cannot_scale(monkeypatch):
    """A module with FLOPs of its own that is no conv, linear or attention makes the counter decline
    (its cost could not be scaled exactly); plan_cost then counts the rebuilt model."""

    class Odd(torch.nn.Module):
        def forward(self, x):
            return x + 0 * (x @ x.transpose(-1, -2)).sum()

    model = build_model("deeplabv3plus", "resnet18", 4).eval()
    model.net.segmentation_head.add_module("odd", Odd())
    monkeypatch.setattr(plan_cost_mod, "_build", lambda spec, device: model)
    with pytest.raises(plan_cost_mod._Unsupported, match="odd"):
        plan_cost_mod.CostModel(model.spec, SIZE)
    plan_cost_mod.clear_cache()
    assert plan_cost(model.spec, None, SIZE).method == "rebuilt"
