"""Per-head gates for MiT attention: the transformer counterpart of a BatchNorm γ (docs/method.md §2).

A gate ``g_h`` (init 1) multiplies attention head ``h``'s output just before the output projection
``attn.proj``. smp's MiT ``Attention`` computes ``(attn @ v).transpose(1, 2).reshape(B, N, C)``, so
the input of ``proj`` is ``[B, N, heads * head_dim]`` laid out head-major: head ``h`` owns columns
``h*head_dim : (h+1)*head_dim``. A forward pre-hook on ``proj`` scales those slices.

Gates are ``nn.Parameter``s named ``head_gate`` on the attention module, so optimizers, the sparsity
regularizer and ``torch.func.functional_call`` see them like any BN weight. They are removable:
:func:`remove_head_gates` folds them into the ``proj`` weight columns (exact, because ``proj`` is
linear) and drops parameter and hook, so the state dict is the plain smp architecture again.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

GATE_PARAM = "head_gate"


def _is_mit_attention(module: nn.Module) -> bool:
    """smp's MiT attention: has ``q``, ``kv``, ``proj`` linears and ``num_heads``."""
    return (
        hasattr(module, "num_heads")
        and isinstance(getattr(module, "q", None), nn.Linear)
        and isinstance(getattr(module, "proj", None), nn.Linear)
        and (isinstance(getattr(module, "kv", None), nn.Linear) or isinstance(getattr(module, "k", None), nn.Linear))
    )


def _root(model: nn.Module) -> nn.Module:
    """Modules are addressed by name inside the SegModel (``net.encoder...``)."""
    return model


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every MiT attention module of ``model`` (gated or not), by qualified name, in model order."""
    return {name: m for name, m in _root(model).named_modules() if _is_mit_attention(m)}


def head_gate_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Name → attention module carrying a ``head_gate`` parameter."""
    return {name: m for name, m in attention_modules(model).items() if isinstance(getattr(m, GATE_PARAM, None), nn.Parameter)}


class _GateHook:
    """A ``proj`` pre-hook that scales each head's slice of the input by ``attn.head_gate``.

    A small object rather than a closure so that ``copy.deepcopy(model)`` gives the copy a hook
    bound to the *copied* attention module (functions are not deep-copied, objects are).
    """

    def __init__(self, attn: nn.Module):
        self.attn = attn

    def __call__(self, _proj: nn.Module, args: tuple):
        (x, *rest) = args
        gate = getattr(self.attn, GATE_PARAM)
        heads = gate.shape[0]
        shape = x.shape
        x = (x.reshape(*shape[:-1], heads, shape[-1] // heads) * gate.to(x.dtype).unsqueeze(-1)).reshape(shape)
        return (x, *rest)


def _gate_hook_ids(attn: nn.Module) -> list[int]:
    return [key for key, hook in attn.proj._forward_pre_hooks.items() if isinstance(hook, _GateHook)]


def add_head_gates(model: nn.Module) -> list[str]:
    """Give every MiT attention module a trainable per-head gate (init 1); idempotent.

    Registers ``head_gate`` (shape ``[num_heads]``, on the device/dtype of ``proj.weight``) and a
    forward pre-hook on ``attn.proj``. Returns the names of the gated modules (empty for CNNs).
    Outputs are unchanged while all gates are 1.
    """
    names = []
    for name, attn in attention_modules(model).items():
        names.append(name)
        if _gate_hook_ids(attn):
            continue
        weight = attn.proj.weight
        attn.register_parameter(GATE_PARAM, nn.Parameter(torch.ones(attn.num_heads, device=weight.device, dtype=weight.dtype)))
        attn.proj.register_forward_pre_hook(_GateHook(attn))
    return names


@torch.no_grad()
def fold_head_gate(attn: nn.Module) -> None:
    """Multiply ``proj``'s input columns of head h by g_h and reset the gate to 1 (output unchanged)."""
    gate = getattr(attn, GATE_PARAM)
    heads = gate.shape[0]
    weight = attn.proj.weight  # [out, heads * head_dim]
    scale = gate.detach().to(weight.dtype).repeat_interleave(weight.shape[1] // heads)
    weight.mul_(scale.unsqueeze(0))
    gate.fill_(1.0)


def remove_head_gates(model: nn.Module, fold: bool = True) -> None:
    """Remove gates and hooks; with ``fold`` (default) their values go into ``proj`` exactly.

    ``fold=False`` discards the gates (as if all were 1). Afterwards ``save_model``/``load_model``
    see the plain smp architecture.
    """
    for attn in head_gate_modules(model).values():
        if fold:
            fold_head_gate(attn)
        for key in _gate_hook_ids(attn):
            del attn.proj._forward_pre_hooks[key]
        del attn._parameters[GATE_PARAM]


def without_gates(model: nn.Module) -> nn.Module:
    """``model`` itself when it has no head gates, else a copy with the gates folded into ``proj``
    (exact), so saved weights load as the plain architecture."""
    if not head_gate_modules(model):
        return model
    plain = copy.deepcopy(model)
    remove_head_gates(plain, fold=True)
    return plain


def head_dim(attn: nn.Module) -> int:
    """Width of one head (``proj`` input columns per head)."""
    return attn.proj.in_features // attn.num_heads


__all__ = [
    "GATE_PARAM",
    "add_head_gates",
    "attention_modules",
    "fold_head_gate",
    "head_dim",
    "head_gate_modules",
    "remove_head_gates",
    "without_gates",
]
