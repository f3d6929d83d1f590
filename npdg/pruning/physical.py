"""Physical pruning: remove the plan's channels and heads from the network (docs/method.md §5).

Filters go through torch-pruning: for every coupling group the plan touches, the group is rebuilt
from its root BN (``DG.get_pruning_group(bn, prune_batchnorm_out_channels, root_idxs)``) and pruned,
so every coupled conv, BN and concatenation shrinks consistently. Groups are addressed by module
*name* and root indices only, which is what makes a plan replay on a freshly built model.

Heads are removed by direct surgery on smp's MiT attention (torch-pruning cannot: ``kv`` fuses K and
V, and the forward reshapes with ``C // num_heads``): rows of ``q``, the K and V halves of ``kv``
and columns of ``proj`` of the dropped heads go, ``num_heads`` shrinks, and the module's class
becomes :class:`PrunedAttention`, whose forward uses the stored ``head_dim`` (the residual width C
stays). Head gates are folded into ``proj`` first, so the result is a plain, gate-free model.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch_pruning as tp
from segmentation_models_pytorch.encoders.mix_transformer import Attention as MiTAttention
from torch import nn

from npdg.errors import ConfigError
from npdg.models.gates import attention_modules, head_dim, remove_head_gates
from npdg.models.store import load_model as load_dense
from npdg.models.units import build_graph
from npdg.pruning.selection import PruningPlan


class PrunedAttention(MiTAttention):
    """smp MiT attention with fewer heads than ``dim / head_dim``: inner width ``num_heads*head_dim``."""

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, n, c = x.shape
        hd = self.head_dim
        q = self.q(x).reshape(batch, n, self.num_heads, hd).permute(0, 2, 1, 3)
        if self.sr_ratio > 1:
            x_ = x.permute(0, 2, 1).reshape(batch, c, height, width)
            x_ = self.norm(self.sr(x_).reshape(batch, c, -1).permute(0, 2, 1))
        else:
            x_ = x
        kv = self.kv(x_).reshape(batch, -1, 2, self.num_heads, hd).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        attn = self.attn_drop(attn)
        out = (attn @ v).transpose(1, 2).reshape(batch, n, self.num_heads * hd)
        return self.proj_drop(self.proj(out))


def _keep_rows(linear: nn.Linear, rows: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.detach()[rows].clone())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.detach()[rows].clone())
    linear.out_features = int(rows.numel())


def prune_heads_(attn: nn.Module, pruned: tuple[int, ...]) -> None:
    """Remove heads ``pruned`` from one MiT attention module in place (exact for the kept heads)."""
    heads = int(attn.num_heads)
    kept = [h for h in range(heads) if h not in set(pruned)]
    if not kept:
        raise ConfigError("cannot remove every head of an attention layer")
    hd = head_dim(attn)
    dev = attn.proj.weight.device
    cols = torch.tensor([h * hd + j for h in kept for j in range(hd)], device=dev)
    inner = heads * hd
    _keep_rows(attn.q, cols)
    _keep_rows(attn.kv, torch.cat([cols, cols + inner]))  # kv rows: [K heads | V heads]
    attn.proj.weight = nn.Parameter(attn.proj.weight.detach()[:, cols].clone())
    attn.proj.in_features = int(cols.numel())
    attn.head_dim = hd
    attn.num_heads = len(kept)
    if not isinstance(attn, PrunedAttention):
        attn.__class__ = PrunedAttention


def prune_filters_(model: nn.Module, plan: PruningPlan) -> None:
    """Prune the plan's filter groups in place with torch-pruning (model must be gate-free)."""
    todo = [g for g in plan.groups if g.kind == "filter" and g.pruned]
    if not todo:
        return
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:  # the tracer follows autograd: trace a frozen model as if it were trainable
        p.requires_grad_(True)
    try:
        graph = build_graph(model, plan.example_size)
        for g in todo:
            root = model.get_submodule(g.root)
            group = graph.get_pruning_group(root, tp.prune_batchnorm_out_channels, list(g.pruned))
            group.prune()
    finally:
        for p, flag in zip(model.parameters(), (f for _, f in flags)):
            p.requires_grad_(flag)


def prune_model(model: nn.Module, plan: PruningPlan, *, inplace: bool = False) -> nn.Module:
    """The physically pruned model (a copy unless ``inplace``), eval/train mode preserved.

    Checks the plan against the model first (:class:`ConfigError` on another architecture or an
    already pruned model). Head gates are folded into ``proj`` and removed. The result carries the
    plan as ``model.pruning_plan``.
    """
    plan.check_model(model)
    if not inplace:
        model = copy.deepcopy(model)
    was_training = model.training
    remove_head_gates(model, fold=True)
    with torch.no_grad():
        prune_filters_(model, plan)
        attn = attention_modules(model)
        for g in plan.groups:
            if g.kind == "head" and g.pruned:
                prune_heads_(attn[g.root], g.pruned)
    model.train(was_training)
    model.pruning_plan = plan
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())




def replay_plan(model: nn.Module, plan: PruningPlan | str | Path) -> nn.Module:
    """Apply a saved plan (object or JSON path) to a freshly built dense model, in place.

    Used by :func:`npdg.models.load_model` for pruned run directories. A plan for another
    architecture is refused with a :class:`ConfigError` naming the mismatch.
    """
    if not isinstance(plan, PruningPlan):
        plan = PruningPlan.load(plan)
    return prune_model(model, plan, inplace=True)


__all__ = ["PrunedAttention", "count_params", "load_model", "prune_filters_", "prune_heads_", "prune_model", "replay_plan"]


def _replay_if_planned(model: nn.Module, plan_path: Path) -> nn.Module:
    return replay_plan(model, plan_path)


def load_model(path: str | Path, **kwargs) -> nn.Module:
    """:func:`npdg.models.load_model` that also loads physically pruned files: a ``pruning_plan.json``
    beside the file is replayed on the freshly built dense model before the weights are read, so
    ``eval``, ``cost``, ``sensitivity`` and the dashboard accept pruned runs (docs/method.md §5)."""
    return load_dense(path, structure=_replay_if_planned, **kwargs)
