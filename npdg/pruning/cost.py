"""The inference cost of a pruning plan, computed from the plan alone (docs/method.md §5, "Cost").

:func:`plan_cost` answers "how many GFLOPs and parameters would this plan leave?" without touching
— or copying — the model the plan was selected on: it builds a fresh dense model of the same
architecture (``ModelSpec``), replays the plan on it with :func:`npdg.pruning.physical.replay_plan`
(the path ``load_model`` takes for pruned runs) and counts with :func:`npdg.cost.count_flops` and
:func:`npdg.cost.count_params`. The fresh model is built on PyTorch's ``meta`` device where that
works (no weight memory, no initialisation cost: FLOPs and shapes do not depend on values) and on
the CPU otherwise (smp's MiT encoders call ``.item()`` while being built, which ``meta`` refuses).
Results are cached by (spec, plan hash, size), so a dashboard slider that returns to a rate already
seen answers at once.

A new plan does not need the rebuild either: :class:`CostModel` counts the dense architecture once
per (spec, size) — each module's *own* FLOPs from torch's flop counter and its parameter shapes —
and keeps torch-pruning's dependency graph of that model. A plan then only changes channel counts:
the graph says which convs, linears and BNs lose which input or output channels for each coupling
group (``get_pruning_group``, under a millisecond), a head group shrinks its attention's ``q``,
``kv``, ``proj`` and attention products, and every conv/linear costs
``own FLOPs × (out/out₀) × ((in/groups)/(in₀/groups₀))`` — the flop counter's own formula, so the
result is the same integer (tested against the rebuilt model on random plans). Architectures with
FLOPs the counter attributes to any other module type are counted by the rebuild.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from npdg.cost import count_flops, count_params
from npdg.errors import ConfigError
from npdg.models.build import ModelSpec, build_model
from npdg.pruning.physical import replay_plan
from npdg.pruning.selection import PruningPlan

_CACHE: OrderedDict[tuple, tuple[float, int, str, str]] = OrderedDict()
_CACHE_SIZE = 128
_LOCK = threading.Lock()


@dataclass(frozen=True)
class PlanCost:
    """GFLOPs and parameters of the dense architecture and of the plan's pruned model at one size."""

    size: tuple[int, int]
    gflops: float
    params: int
    dense_gflops: float
    dense_params: int
    #: Where the counting model lived: ``meta`` (no weights allocated) or ``cpu``.
    device: str
    #: ``analytic`` (:class:`CostModel`, channel counts scaled) or ``rebuilt`` (plan replayed and traced).
    method: str = "rebuilt"

    @property
    def gflops_ratio(self) -> float:
        """Pruned / dense GFLOPs."""
        return self.gflops / self.dense_gflops if self.dense_gflops else float("nan")

    @property
    def params_ratio(self) -> float:
        """Pruned / dense parameters."""
        return self.params / self.dense_params if self.dense_params else float("nan")

    def to_dict(self) -> dict:
        return {"size": list(self.size), "gflops": self.gflops, "params": self.params,
                "dense_gflops": self.dense_gflops, "dense_params": self.dense_params,
                "gflops_ratio": self.gflops_ratio, "params_ratio": self.params_ratio, "device": self.device,
                "method": self.method}


def plan_hash(plan: PruningPlan | None) -> str:
    """A stable digest of a plan's JSON (``"dense"`` for no plan): the cache key of its structure."""
    if plan is None:
        return "dense"
    return plan.digest


def _spec_of(model_or_spec: nn.Module | ModelSpec) -> tuple[ModelSpec, tuple[PruningPlan, ...]]:
    """The dense spec and the plans already applied to the model (a pruned run carries its own)."""
    if isinstance(model_or_spec, ModelSpec):
        return model_or_spec, ()
    spec = getattr(model_or_spec, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise ConfigError(f"plan_cost needs an npdg model (with a .spec) or a ModelSpec, got {type(model_or_spec).__name__}")
    own = getattr(model_or_spec, "pruning_plan", None)
    return spec, ((own,) if isinstance(own, PruningPlan) else ())


def _build(spec: ModelSpec, device: str) -> nn.Module:
    if device == "meta":
        with torch.device("meta"):
            return build_model(spec.arch, spec.encoder, spec.num_classes, aspp=spec.aspp).eval()
    return build_model(spec.arch, spec.encoder, spec.num_classes, aspp=spec.aspp).eval()


class _Unsupported(Exception):
    """The architecture has FLOPs or parameters :class:`CostModel` cannot scale: rebuild instead."""


@dataclass
class _Dims:
    """Channel counts of one module that pruning can change, dense (``*0``) and current."""

    kind: str  # conv | linear | bn | attn
    flops: int  # own FLOPs at the size, dense
    in0: int
    out0: int
    groups0: int = 1
    kernel: int = 1  # kh·kw
    bias: bool = False


def _own_flops(model: nn.Module, size: tuple[int, int]) -> dict[str, int]:
    """FLOPs of one ``[1, 3, H, W]`` forward per module *name*, each module's own (children removed)."""
    from torch.utils.flop_counter import FlopCounterMode

    from npdg.cost import _input

    with FlopCounterMode(display=False) as counter:
        model(_input(model, size))
    total = {}
    for key, ops in counter.get_flop_counts().items():
        if key != "Global":
            total[key.partition(".")[2] if "." in key else ""] = int(sum(ops.values()))
    own = dict(total)
    for name, value in total.items():
        parent = name
        while parent:  # the nearest module that ran (a ModuleList is never called itself)
            parent = parent.rpartition(".")[0]
            if parent in own:
                own[parent] -= value
                break
    return {k: v for k, v in own.items() if v}


class CostModel:
    """FLOPs and parameters of any plan on one architecture at one size, from channel counts.

    Built once per (spec, size) on a gate-free dense model (meta where possible); :meth:`count`
    never rebuilds or traces. Raises :class:`_Unsupported` at construction when some module with
    FLOPs is not a conv, a linear or an MiT attention (its cost could not be scaled exactly).
    """

    def __init__(self, spec: ModelSpec, size: tuple[int, int]):
        from npdg.models.gates import attention_modules, head_dim, remove_head_gates

        last: Exception | None = None
        for device in ("meta", "cpu"):
            try:
                model = _build(spec, device)
                remove_head_gates(model, fold=False)
                own = _own_flops(model, size)
                break
            except Exception as exc:  # smp's MiT cannot be built on meta
                last = exc
        else:
            raise _Unsupported(f"cannot count {spec.arch}/{spec.encoder}: {last}") from last
        self.device, self.model, self.size = device, model, size
        self.attn = {n: (int(m.num_heads), head_dim(m)) for n, m in attention_modules(model).items()}
        self.dims: dict[str, _Dims] = {}
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                self.dims[name] = _Dims("conv", own.pop(name, 0), m.in_channels, m.out_channels, m.groups,
                                        m.kernel_size[0] * m.kernel_size[1], m.bias is not None)
            elif isinstance(m, nn.Linear):
                self.dims[name] = _Dims("linear", own.pop(name, 0), m.in_features, m.out_features, 1, 1, m.bias is not None)
            elif isinstance(m, nn.BatchNorm2d):
                self.dims[name] = _Dims("bn", own.pop(name, 0), m.num_features, m.num_features, 1, 1, m.affine)
            elif name in self.attn:
                self.dims[name] = _Dims("attn", own.pop(name, 0), self.attn[name][0], self.attn[name][0])
        if own:
            raise _Unsupported(f"FLOPs in modules of other types: {sorted(own)[:3]}")
        self.dense_params = count_params(model)
        self._lock = threading.Lock()
        self._graph = self._build_graph() if any(d.kind == "bn" for d in self.dims.values()) else None

    def _build_graph(self):
        """torch-pruning's graph of the dense model (once, here: a plan's first count stays fast)."""
        from npdg.models.units import build_graph

        for p in self.model.parameters():
            p.requires_grad_(True)  # the tracer follows autograd
        return build_graph(self.model, (64, 64))

    def _filter_deltas(self, root: str, pruned: tuple[int, ...]) -> dict[tuple[str, bool], int]:
        """(module, output side?) → channels removed when group ``root`` loses ``pruned``."""
        import torch_pruning as tp

        with self._lock:
            if self._graph is None:
                self._graph = self._build_graph()
            graph = self._graph
            group = graph.get_pruning_group(self.model.get_submodule(root), tp.prune_batchnorm_out_channels, list(pruned))
        out: dict[tuple[str, bool], set] = {}
        for item in group:
            name = graph._module2name.get(item.dep.target.module)
            if name is None:
                continue  # concatenations, element-wise ops: no parameters, no FLOPs
            if name not in self.dims:
                raise _Unsupported(f"group {root} changes {name}, a {type(item.dep.target.module).__name__}")
            out.setdefault((name, graph.is_out_channel_pruning_fn(item.dep.handler)), set()).update(item.idxs)
        return {k: len(v) for k, v in out.items()}

    def count(self, plan: PruningPlan | None) -> tuple[int, int]:
        """(FLOPs, parameters) of the physically pruned model; the dense ones for ``None``."""
        removed_in: dict[str, int] = {}
        removed_out: dict[str, int] = {}
        heads: dict[str, int] = {}
        for g in (plan.groups if plan is not None else ()):
            if not g.pruned:
                continue
            if g.kind == "head":
                heads[g.root] = heads.get(g.root, 0) + len(g.pruned)
                continue
            for (name, out_side), n in self._filter_deltas(g.root, g.pruned).items():
                side = removed_out if out_side else removed_in
                side[name] = side.get(name, 0) + n
        for name, n in heads.items():  # q, kv rows and proj columns of the dropped heads
            hd = self.attn[name][1]
            for child, side, width in (("q", removed_out, hd), ("kv", removed_out, 2 * hd), ("proj", removed_in, hd)):
                key = f"{name}.{child}"
                side[key] = side.get(key, 0) + n * width
        flops, params = 0, self.dense_params
        for name, d in self.dims.items():
            if d.kind == "attn":
                flops += d.flops * (d.out0 - heads.get(name, 0)) // d.out0
                continue
            out = d.out0 - removed_out.get(name, 0)
            cin = d.in0 - removed_in.get(name, 0)
            if d.kind == "bn":
                out = min(out, cin)  # a BN's input and output are the same channels
                if d.bias:
                    params -= 2 * (d.out0 - out)
                continue
            groups = d.groups0
            if groups > 1:
                if not (groups == d.in0 == d.out0):
                    if name in removed_in or name in removed_out:
                        raise _Unsupported(f"grouped conv {name} is pruned")
                else:  # depthwise: one group per channel, in = out = groups
                    out = cin = groups = min(out, cin)
            per_out0, per_out = d.in0 // d.groups0, cin // groups
            flops += d.flops * out * per_out // (d.out0 * per_out0)
            params -= d.kernel * (d.out0 * per_out0 - out * per_out) + (d.out0 - out if d.bias else 0)
        return flops, params


_MODELS: OrderedDict[tuple, CostModel | None] = OrderedDict()


def _cost_model(spec: ModelSpec, size: tuple[int, int]) -> CostModel | None:
    """The cached :class:`CostModel` of (spec, size), or None where the rebuild must count."""
    key = (spec, size)
    with _LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return _MODELS[key]
    try:
        value = CostModel(spec, size)
    except _Unsupported:
        value = None
    with _LOCK:
        _MODELS[key] = value
        while len(_MODELS) > 8:
            _MODELS.popitem(last=False)
    return value


def _count(spec: ModelSpec, plans: tuple[PruningPlan, ...], size: tuple[int, int]) -> tuple[float, int, str, str]:
    """(FLOPs, parameters, device, method) of ``spec`` with ``plans`` applied in order: analytic
    (:class:`CostModel`) for one plan where the architecture allows, else replayed, meta first."""
    key = (spec, tuple(plan_hash(p) for p in plans), size)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    analytic = _cost_model(spec, size) if len(plans) <= 1 else None
    if analytic is not None:
        if plans:
            plans[0].check_model(analytic.model, "architecture")
        flops, params = analytic.count(plans[0] if plans else None)
        value = (float(flops), params, analytic.device, "analytic")
        with _LOCK:
            _CACHE[key] = value
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        return value
    last_error: Exception | None = None
    for device in ("meta", "cpu"):
        try:
            model = _build(spec, device)
            for p in plans:
                replay_plan(model, p)
            value = (count_flops(model, size), count_params(model), device, "rebuilt")
            break
        except ConfigError:
            raise  # the plan does not fit the architecture: no other device will change that
        except Exception as exc:
            last_error = exc
    else:
        raise RuntimeError(f"cannot count the cost of {spec.arch}/{spec.encoder}: {last_error}") from last_error
    with _LOCK:
        _CACHE[key] = value
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return value


def plan_cost(model_or_spec: nn.Module | ModelSpec, plan: PruningPlan | str | Path | None,
              size: tuple[int, int]) -> PlanCost:
    """GFLOPs and parameters of ``plan`` applied to the architecture of ``model_or_spec`` at ``size``.

    ``model_or_spec``: an npdg model (only its ``spec`` and, for an already pruned run, the
    ``pruning_plan`` it was loaded with are read — the model itself is never copied or modified) or
    a :class:`~npdg.models.ModelSpec`. ``plan``: a :class:`PruningPlan`, a plan JSON path, or None
    for the model as it is. The counts equal :func:`npdg.cost.count_flops` /
    :func:`npdg.cost.count_params` of the physically pruned model (head gates, which pruning folds
    away, are not counted). ``dense_*`` is the same for the model without ``plan``.
    Raises :class:`ConfigError` when the plan does not fit the architecture.
    """
    size = (int(size[0]), int(size[1]))
    if min(size) < 1:
        raise ConfigError(f"input size must be positive, got {size}")
    if plan is not None and not isinstance(plan, PruningPlan):
        plan = PruningPlan.load(plan)
    spec, base = _spec_of(model_or_spec)
    dense_flops, dense_params, _, _ = _count(spec, base, size)
    flops, params, device, method = _count(spec, base + ((plan,) if plan is not None else ()), size)
    return PlanCost(size, flops / 1e9, int(params), dense_flops / 1e9, int(dense_params), device, method)


def clear_cache() -> None:
    """Forget every counted plan."""
    with _LOCK:
        _CACHE.clear()
        _MODELS.clear()


__all__ = ["CostModel", "PlanCost", "clear_cache", "plan_cost", "plan_hash"]
