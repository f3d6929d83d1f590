"""Soft pruning: a pruned unit outputs exactly 0, reversibly, without touching a shared model.

A filter is masked by zeroing its BN's weight *and* bias (the BN output ``γ·x̂ + β`` is then 0 in
eval mode); a head by zeroing its gate, or — on a model without gates — its columns of
``attn.proj.weight`` (the head's contribution to ``proj``). Masks are parameter *overrides* applied
with :func:`torch.func.functional_call`, so a model cached and shared by the dashboard is never
mutated; :class:`SoftMasked` wraps one as a module. Because selection only takes exactly prunable
coupling groups (see :mod:`npdg.models.units`), the soft-masked model computes what the
physically pruned one does (tests check it to 1e-4).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.func import functional_call

from npdg.models.gates import GATE_PARAM, head_dim
from npdg.pruning.selection import PruningPlan


def _zeroed(tensor: torch.Tensor, idxs: Iterable[int], dim: int = 0, block: int = 1) -> torch.Tensor:
    """A copy of ``tensor`` with index blocks ``[i*block, (i+1)*block)`` along ``dim`` set to 0."""
    keep = torch.ones(tensor.shape[dim], dtype=tensor.dtype, device=tensor.device)
    for i in idxs:
        keep[i * block : (i + 1) * block] = 0
    shape = [1] * tensor.ndim
    shape[dim] = -1
    return tensor * keep.view(shape)


def mask_overrides(model: nn.Module, plan: PruningPlan) -> dict[str, torch.Tensor]:
    """Parameter name → masked tensor for every layer the plan prunes (the model is not modified).

    The overrides keep autograd to the original parameters, so masked fine-tuning and attribution
    still see gradients for the kept units.
    """
    plan.check_model(model)
    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for lp in plan.layers:
        if not lp.pruned:
            continue
        if lp.kind == "filter":
            for suffix in ("weight", "bias"):
                key = f"{lp.name}.{suffix}"
                out[key] = _zeroed(params[key], lp.pruned)
        elif f"{lp.name}.{GATE_PARAM}" in params:
            key = f"{lp.name}.{GATE_PARAM}"
            out[key] = _zeroed(params[key], lp.pruned)
        else:
            key = f"{lp.name}.proj.weight"
            out[key] = _zeroed(params[key], lp.pruned, dim=1, block=head_dim(model.get_submodule(lp.name)))
    return out


def soft_forward(model: nn.Module, plan: PruningPlan, x: torch.Tensor, overrides: dict | None = None) -> torch.Tensor:
    """``model(x)`` with the plan's units masked (pass precomputed ``overrides`` to skip rebuilding them)."""
    return functional_call(model, overrides if overrides is not None else mask_overrides(model, plan), (x,), strict=False)


class SoftMasked(nn.Module):
    """A view of ``model`` with ``plan`` applied as masks; the wrapped model stays untouched.

    The wrapped model is registered as a submodule (so ``.to``/``.eval`` propagate), but its
    parameters are never written. Masks are rebuilt at each forward, so later changes of the base
    weights are seen.
    """

    def __init__(self, model: nn.Module, plan: PruningPlan):
        super().__init__()
        plan.check_model(model)
        self.model = model
        self.plan = plan
        #: The wrapped model's class count (what ``npdg.evaluate`` sizes its confusion matrix by).
        self.num_classes = getattr(model, "num_classes", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return soft_forward(self.model, self.plan, x)


@torch.no_grad()
def apply_masks_(model: nn.Module, plan: PruningPlan) -> dict[str, torch.Tensor]:
    """Zero the plan's units *in place* and return the original values (for :func:`restore_`).

    For a model you own (e.g. before physical pruning); use :class:`SoftMasked` for shared models.
    """
    params = dict(model.named_parameters())
    masked = mask_overrides(model, plan)
    saved = {k: params[k].detach().clone() for k in masked}
    for key, value in masked.items():
        params[key].copy_(value.detach())
    return saved


@torch.no_grad()
def restore_(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Undo :func:`apply_masks_`."""
    params = dict(model.named_parameters())
    for key, value in saved.items():
        params[key].copy_(value)


__all__ = ["SoftMasked", "apply_masks_", "mask_overrides", "restore_", "soft_forward"]
