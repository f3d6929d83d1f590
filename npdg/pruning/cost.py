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
"""

from __future__ import annotations

import hashlib
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

_CACHE: OrderedDict[tuple, tuple[float, int, str]] = OrderedDict()
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
                "gflops_ratio": self.gflops_ratio, "params_ratio": self.params_ratio, "device": self.device}


def plan_hash(plan: PruningPlan | None) -> str:
    """A stable digest of a plan's JSON (``"dense"`` for no plan): the cache key of its structure."""
    if plan is None:
        return "dense"
    return hashlib.sha1(plan.to_json().encode()).hexdigest()


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


def _count(spec: ModelSpec, plans: tuple[PruningPlan, ...], size: tuple[int, int]) -> tuple[float, int, str]:
    """(FLOPs, parameters, device) of ``spec`` with ``plans`` replayed in order, meta first."""
    key = (spec, tuple(plan_hash(p) for p in plans), size)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    last_error: Exception | None = None
    for device in ("meta", "cpu"):
        try:
            model = _build(spec, device)
            for p in plans:
                replay_plan(model, p)
            value = (count_flops(model, size), count_params(model), device)
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
    dense_flops, dense_params, _ = _count(spec, base, size)
    flops, params, device = _count(spec, base + ((plan,) if plan is not None else ()), size)
    return PlanCost(size, flops / 1e9, int(params), dense_flops / 1e9, int(dense_params), device)


def clear_cache() -> None:
    """Forget every counted plan."""
    with _LOCK:
        _CACHE.clear()


__all__ = ["PlanCost", "clear_cache", "plan_cost", "plan_hash"]
