"""Soft masks vs physical pruning (exact), plan replay on a fresh model, loadable pruned run dirs."""

import copy

import pytest
import torch
from conftest import randomize_gamma

from npdg.errors import ConfigError
from npdg.models import build_model, save_model
from npdg.models.gates import add_head_gates
from npdg.pruning.physical import count_params, load_model, prune_model
from npdg.pruning.selection import select
from npdg.pruning.soft import SoftMasked, apply_masks_, restore_, soft_forward

CASES = [("deeplabv3plus", "resnet18", False), ("segformer", "mit_b0", True)]


@pytest.mark.parametrize("arch,encoder,gates", CASES)
def test_physical_equals_soft_and_replays(arch, encoder, gates, tmp_path):
    torch.manual_seed(0)
    model = build_model(arch, encoder, 5).eval()
    if gates:
        add_head_gates(model)
    randomize_gamma(model, stats=True)
    plan = select(model, rate=0.3)
    assert plan.num_pruned["filter"] > 0 and (plan.num_pruned["head"] > 0) == gates
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        dense = model(x)
        soft = soft_forward(model, plan, x)
        assert SoftMasked(model, plan)(x).equal(soft)
        pruned = prune_model(model, plan).eval()
        hard = pruned(x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # nothing mutated
    assert (soft - dense).abs().max() > 1e-2  # the masks do something
    assert torch.allclose(hard, soft, atol=1e-4)
    assert count_params(pruned) < (0.95 if gates else 0.7) * count_params(model)  # MiT: heads are a small share
    # save → load_model rebuilds the dense net, replays the plan, loads the weights
    save_model(pruned, tmp_path / "model.safetensors")
    plan.save(tmp_path / "pruning_plan.json")
    reloaded = load_model(tmp_path)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), hard, atol=1e-6)
    # a pruned model cannot be pruned again by the same plan
    with pytest.raises(ConfigError, match="already pruned|units"):
        prune_model(pruned, plan)


def test_in_place_masks_are_reversible():
    torch.manual_seed(0)
    model = randomize_gamma(build_model("deeplabv3plus", "resnet18", 3).eval())
    plan = select(model, rate=0.3)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref, soft = model(x), soft_forward(model, plan, x)
        saved = apply_masks_(model, plan)
        assert torch.allclose(model(x), soft, atol=1e-6)
        restore_(model, saved)
        assert torch.equal(model(x), ref)


def test_plan_for_other_arch_is_refused():
    r18 = build_model("deeplabv3plus", "resnet18", 3)
    plan = select(randomize_gamma(r18), rate=0.3)
    with pytest.raises(ConfigError, match="resnet50"):
        prune_model(build_model("deeplabv3plus", "resnet50", 3), plan)


def test_a_frozen_model_can_be_selected_and_pruned():
    """The dashboard shares frozen models (requires_grad off); torch-pruning's tracer needs autograd."""
    import npdg.models.units as units

    units._GROUP_CACHE.clear()  # trace this model, not a cached graph of an earlier one
    model = randomize_gamma(build_model("deeplabv3plus", "resnet18", 3).eval())
    for p in model.parameters():
        p.requires_grad_(False)
    plan = select(model, rate=0.3)
    pruned = prune_model(model, plan)
    assert plan.num_pruned["filter"] > 0 and count_params(pruned) < count_params(model)
    assert not any(p.requires_grad for p in model.parameters())  # the caller's flags are kept
