"""Prunable units of a segmentation model and their torch-pruning coupling groups (docs/method.md §2, §5).

A *unit* is one output channel of a BatchNorm (kind ``filter``; its scaling factor γ is the BN
weight) or one MiT attention head (kind ``head``; γ is the head gate of :mod:`npdg.models.gates`).
Units are addressed by ``(layer, unit)``: the module's qualified name inside the model passed in
(``net.encoder.layer1.0.bn1`` for a :class:`~npdg.models.SegModel`) and the channel/head index.

Channels coupled by the computation graph (a ResNet stage's residual stream, a depthwise conv and
its BN, ...) must be removed together. torch-pruning's ``DependencyGraph`` finds these *coupling
groups*; each group gets a stable integer id (order of its first BN in ``named_modules``) and each of
its channels a *root index* (the channel index of the group's first BN, its root). A group is
*prunable* only if removing a channel physically is exactly the same as zeroing that channel's
γ and β in every BN of the group (so soft masks and physical pruning agree): every conv/linear
whose output channels the group removes must feed only BNs of the group (bias-free depthwise convs
pass a zeroed channel on as zero and are allowed), and the group must not
run through LayerNorm/GroupNorm, reshapes or the classifier. Other groups are listed with the
reason and excluded (``group = -1``).

Heads are not pruned through torch-pruning (MiT's fused ``kv`` and its ``C // num_heads`` reshape
defeat it); each attention layer is its own group of heads, handled by :mod:`npdg.pruning.physical`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pandas as pd
import torch
import torch_pruning as tp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from npdg.errors import ConfigError
from npdg.models.gates import GATE_PARAM, attention_modules, head_gate_modules, remove_head_gates

KINDS: tuple[str, ...] = ("filter", "head")
#: torch-pruning node types through which zeroing a BN channel is not the same as removing it.
_INEXACT_TYPES = {
    tp.ops.OPTYPE.LN,
    tp.ops.OPTYPE.GN,
    tp.ops.OPTYPE.IN,
    tp.ops.OPTYPE.EMBED,
    tp.ops.OPTYPE.PARAMETER,
    tp.ops.OPTYPE.MHA,
    tp.ops.OPTYPE.LSTM,
    tp.ops.OPTYPE.RESHAPE,
    tp.ops.OPTYPE.UNBIND,
    tp.ops.OPTYPE.EXPAND,
    tp.ops.OPTYPE.PRELU,
    tp.ops.OPTYPE.CUSTOMIZED,
    tp.ops.OPTYPE.OUTPUT,
}
_PRODUCER_TYPES = {tp.ops.OPTYPE.CONV, tp.ops.OPTYPE.DEPTHWISE_CONV, tp.ops.OPTYPE.LINEAR}


@dataclass(frozen=True)
class UnitLayer:
    """One module holding prunable units."""

    name: str  # module name inside model (BN module for filters, attention module for heads)
    kind: str  # "filter" | "head"
    size: int  # number of units (channels / heads)
    param: str  # qualified name of the γ parameter (BN weight, or head_gate)


@dataclass(frozen=True)
class CouplingGroup:
    """A set of BN channels that torch-pruning removes together.

    ``members``: ``(bn layer name, local channel indices, root indices)`` for every BN in the group;
    the root is the first member. ``prunable`` is False (with a ``reason``) where physical removal
    would not equal soft masking, or the group contains the classifier.
    """

    gid: int
    root: str
    size: int
    members: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    prunable: bool
    reason: str = ""

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.members)


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Module-name prefixes of the classifier (``segmentation_head``), never prunable."""
    return tuple(name + "." for name, m in model.named_modules() if name.split(".")[-1] == "segmentation_head")


def unit_layers(model: nn.Module, include_classifier: bool = False) -> list[UnitLayer]:
    """Every BN (encoder and decoder) and every gated MiT attention module, in model order.

    ``include_classifier`` exists for symmetry with the contract; smp's segmentation heads hold no
    BN, so it changes nothing today. Call :func:`npdg.models.gates.add_head_gates` first to get
    head units on MiT models.
    """
    heads = head_gate_modules(model)
    skip = () if include_classifier else _classifier_prefixes(model)
    layers = []
    for name, module in model.named_modules():
        if skip and (name + ".").startswith(skip):
            continue
        if isinstance(module, _BatchNorm) and module.affine:
            layers.append(UnitLayer(name, "filter", int(module.num_features), f"{name}.weight"))
        elif name in heads:
            layers.append(UnitLayer(name, "head", int(module.num_heads), f"{name}.{GATE_PARAM}"))
    return layers


def gamma_vector(model: nn.Module, layers: list[UnitLayer]) -> torch.Tensor:
    """|γ| of all units concatenated in ``layers`` order (detached, float32, on the model's device)."""
    params = dict(model.named_parameters())
    missing = [layer.param for layer in layers if layer.param not in params]
    if missing:
        raise ConfigError(f"model has no γ parameter {missing[0]!r} (head gates not added? model changed?)")
    if not layers:
        return torch.zeros(0)
    return torch.cat([params[layer.param].detach().abs().float().reshape(-1) for layer in layers])


# ------------------------------------------------------------------------------------ coupling


def example_input(model: nn.Module, example_size: tuple[int, int] = (64, 64)) -> torch.Tensor:
    """A deterministic tracing input on the model's device."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, *example_size, generator=gen).to(device)


def build_graph(model: nn.Module, example_size: tuple[int, int] = (64, 64)) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model`` (traced on one example; training mode restored).

    The model must not carry head gates (their hooks hide parameters from the tracer): fold them
    first with :func:`~npdg.models.gates.remove_head_gates`.
    """
    if head_gate_modules(model):
        raise ConfigError("build_graph needs a model without head gates; call remove_head_gates(model) first")
    was_training = model.training
    try:
        with torch.enable_grad():  # the tracer needs autograd even when called under no_grad
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input(model, example_size), verbose=False)
    finally:
        model.train(was_training)
    return graph


def _group_problem(graph: tp.DependencyGraph, group, bn_names: set[str], classifier: tuple[str, ...]) -> str:
    """Why zeroing this group's BN channels would differ from removing them ('' if it would not)."""
    names = graph._module2name
    for item in group:
        node = item.dep.target
        name = names.get(node.module, "")
        out_pruned = graph.is_out_channel_pruning_fn(item.dep.handler)
        if out_pruned and classifier and (name + ".").startswith(classifier):
            return f"would remove classifier outputs ({name})"
        if node.type in _INEXACT_TYPES:
            return f"runs through {node.type.name} {name or node.name}"
        if node.type in _PRODUCER_TYPES and out_pruned:
            if node.type == tp.ops.OPTYPE.DEPTHWISE_CONV and node.module.bias is None:
                continue  # channel c of a bias-free depthwise conv reads only input channel c: zero in, zero out
            for out in node.outputs:
                out_name = names.get(out.module, "")
                if out.type != tp.ops.OPTYPE.BN or out_name not in bn_names:
                    return f"{name} output feeds {out_name or out.name} directly, not a BN of the group"
    return ""


def _analyse_groups(model: nn.Module, example_size: tuple[int, int]) -> tuple[CouplingGroup, ...]:
    """Build the dependency graph on a gate-free copy and collect the BN coupling groups."""
    work = copy.deepcopy(model)
    remove_head_gates(work, fold=False)
    for p in work.parameters():  # the tracer follows autograd: a frozen (requires_grad=False) model has no graph
        p.requires_grad_(True)
    graph = build_graph(work, example_size)
    bns = {layer.name: work.get_submodule(layer.name) for layer in unit_layers(work) if layer.kind == "filter"}
    classifier = _classifier_prefixes(work)
    assigned: set[tuple[str, int]] = set()
    groups: list[CouplingGroup] = []
    for name, bn in bns.items():
        if (name, 0) in assigned:
            continue
        group = graph.get_pruning_group(bn, tp.prune_batchnorm_out_channels, list(range(bn.num_features)))
        members = {}
        for item in group:
            module = item.dep.target.module
            member = graph._module2name.get(module)
            is_bn_out = item.dep.target.type == tp.ops.OPTYPE.BN and graph.is_out_channel_pruning_fn(item.dep.handler)
            if member in bns and is_bn_out and member not in members:
                members[member] = (member, tuple(int(i) for i in item.idxs), tuple(int(i) for i in item.root_idxs))
        members_t = tuple(members.values())
        for member, local, _ in members_t:
            assigned.update((member, i) for i in local)
        reason = _group_problem(graph, group, set(members), classifier)
        groups.append(CouplingGroup(len(groups), name, bn.num_features, members_t, not reason, reason))
    return tuple(groups)


def _arch_key(model: nn.Module) -> tuple:
    """What the group structure depends on: architecture and every BN / head layer size."""
    sizes = tuple((layer.name, layer.size) for layer in unit_layers(model) if layer.kind == "filter")
    return (getattr(model, "arch", type(model).__name__), getattr(model, "encoder", ""), sizes)


_GROUP_CACHE: dict[tuple, tuple[CouplingGroup, ...]] = {}


def coupling_groups(model: nn.Module, example_size: tuple[int, int] = (64, 64)) -> tuple[CouplingGroup, ...]:
    """The BN coupling groups of ``model`` (cached per architecture and layer sizes)."""
    key = (_arch_key(model), tuple(example_size))
    if key not in _GROUP_CACHE:
        _GROUP_CACHE[key] = _analyse_groups(model, tuple(example_size))
    return _GROUP_CACHE[key]


def unprunable_groups(model: nn.Module, example_size: tuple[int, int] = (64, 64)) -> pd.DataFrame:
    """The prunability probe: groups excluded from pruning, with the reason (columns group, root, size, reason)."""
    rows = [
        {"group": g.gid, "root": g.root, "size": g.size, "layers": len(g.members), "reason": g.reason}
        for g in coupling_groups(model, example_size)
        if not g.prunable
    ]
    return pd.DataFrame(rows, columns=["group", "root", "size", "layers", "reason"])


def head_group_ids(model: nn.Module, example_size: tuple[int, int] = (64, 64)) -> dict[str, int]:
    """Group id of each attention layer's heads (after the filter groups; one group per layer).

    Every MiT attention layer counts (gated or not) so that ids do not depend on gates.
    """
    start = len(coupling_groups(model, example_size))
    return {name: start + i for i, name in enumerate(attention_modules(model))}


def unit_table(model: nn.Module, example_size: tuple[int, int] = (64, 64)) -> pd.DataFrame:
    """One row per unit: layer, unit, kind, gamma (signed γ), group, group_channel.

    ``group`` is the coupling-group id (-1 where the group cannot be pruned exactly; single-head
    attention layers are -1 too), ``group_channel`` the unit's root index inside its group (the head
    index for heads).
    """
    layers = unit_layers(model)
    groups = coupling_groups(model, example_size)
    lookup: dict[tuple[str, int], tuple[int, int]] = {}
    for g in groups:
        for member, local, root in g.members:
            for i, r in zip(local, root):
                lookup[(member, i)] = (g.gid if g.prunable else -1, r)
    head_ids = head_group_ids(model, example_size)
    params = dict(model.named_parameters())
    frames = []
    for layer in layers:
        gamma = params[layer.param].detach().float().cpu().numpy()
        if layer.kind == "filter":
            gid_ch = [lookup.get((layer.name, i), (-1, i)) for i in range(layer.size)]
        else:
            gid = head_ids[layer.name] if layer.size > 1 else -1
            gid_ch = [(gid, i) for i in range(layer.size)]
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer.name,
                    "unit": range(layer.size),
                    "kind": layer.kind,
                    "gamma": gamma,
                    "group": [g for g, _ in gid_ch],
                    "group_channel": [c for _, c in gid_ch],
                }
            )
        )
    columns = ["layer", "unit", "kind", "gamma", "group", "group_channel"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


__all__ = [
    "KINDS",
    "CouplingGroup",
    "UnitLayer",
    "build_graph",
    "coupling_groups",
    "example_input",
    "gamma_vector",
    "head_group_ids",
    "unit_layers",
    "unit_table",
    "unprunable_groups",
]
