"""Head gates on MiT attention: exact, trainable, removable, deepcopy-safe."""

import copy

import pytest
import torch

from npdg.models import build_model
from npdg.models.gates import add_head_gates, head_gate_modules, remove_head_gates


@pytest.fixture(scope="module")
def mit():
    torch.manual_seed(0)
    return build_model("segformer", "mit_b0", 5).eval()


def test_gates_are_identity_at_init_and_idempotent(mit):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    m = copy.deepcopy(mit)
    with torch.no_grad():
        ref = m(x)
    names = add_head_gates(m)
    assert add_head_gates(m) == names  # second call adds nothing
    assert len(names) == 8  # MiT-B0: 2 blocks in each of 4 stages
    assert [m.get_submodule(n).head_gate.numel() for n in names] == [1, 1, 2, 2, 5, 5, 8, 8]
    assert sum(len(m.get_submodule(n).proj._forward_pre_hooks) for n in names) == 8
    with torch.no_grad():
        assert torch.equal(m(x), ref)


def test_zero_gate_equals_zeroed_proj_columns_and_fold_is_exact(mit):
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    m = copy.deepcopy(mit)
    add_head_gates(m)
    attn = m.get_submodule("net.encoder.block3.0.attn")
    with torch.no_grad():
        attn.head_gate.copy_(torch.tensor([0.0, 0.5, 1.0, 2.0, -1.0]))
        gated = m(x)
        manual = copy.deepcopy(mit)
        w = manual.get_submodule("net.encoder.block3.0.attn").proj.weight
        hd = w.shape[1] // 5
        w.mul_(torch.tensor([0.0, 0.5, 1.0, 2.0, -1.0]).repeat_interleave(hd))
        assert torch.allclose(gated, manual(x), atol=1e-5)
        assert not torch.allclose(gated, mit(x), atol=1e-3)  # the gate really acts
    remove_head_gates(m, fold=True)
    assert head_gate_modules(m) == {}
    assert all(not mod._forward_pre_hooks for mod in m.modules())
    assert set(m.state_dict()) == set(mit.state_dict())
    with torch.no_grad():
        assert torch.allclose(m(x), gated, atol=1e-5)


def test_gate_receives_gradient_and_deepcopy_binds_to_copy(mit):
    m = copy.deepcopy(mit)
    add_head_gates(m)
    m(torch.rand(1, 3, 32, 32)).sum().backward()
    gate = m.get_submodule("net.encoder.block4.1.attn").head_gate
    assert gate.grad is not None and gate.grad.abs().sum() > 0
    twin = copy.deepcopy(m)
    with torch.no_grad():
        twin.get_submodule("net.encoder.block4.1.attn").head_gate.zero_()
        x = torch.rand(1, 3, 32, 32)
        assert not torch.allclose(twin(x), m(x))  # the copy's hook reads the copy's gate


def test_cnn_has_no_gates():
    m = build_model("deeplabv3plus", "resnet18", 3)
    assert add_head_gates(m) == []
    assert head_gate_modules(m) == {}
