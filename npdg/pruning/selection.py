"""Selection: which units to prune, as a replayable :class:`PruningPlan` (docs/method.md §5).

Scores are per *group channel* (a channel of a torch-pruning coupling group, see
:mod:`npdg.models.units`) and per head:

* ``gamma`` (criteria ``npdg`` / ``slimming``, see ``npdg.recipes.modes``): |γ| — the mean |BN weight| over the group's BNs at that channel,
  or |head gate| (on a model whose gates were folded into ``proj`` when saved, the head's mean
  |proj column|, which the folding scaled by |g_h|). (npdg and slimming differ in how γ was sparse-trained, not in how it is read.)
* ``l1norm``: mean |w| of the filters that produce the channel (Li et al.'s L1 filter norm divided by
  the fan-in, so layers of different widths rank together); for a head, mean |w| of its ``proj``
  input columns.
* ``random``: uniform scores from a seeded generator.
* ``scores``: per-unit values given by the caller (e.g. the style sensitivity itself): a *proxy*
  criterion, labelled as such, not NPDG.

**Rate mode** prunes the fraction ``rate`` of the candidate units with the lowest score, globally.
Filters and heads are ranked separately, each at ``rate`` (|γ| of a BN and of a head gate are not on
one scale). **Threshold mode** prunes units whose score is below ``threshold``, capped at ``rate``.
Per group: at most ``max_layer_ratio`` of the channels go, at least ``round_to`` stay and the kept
count is rounded to a multiple of ``round_to`` (when the group size is one); every attention layer
keeps at least one head; single-head layers and unprunable groups are never candidates.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from npdg.config import DEFAULT_MAX_LAYER_RATIO, DEFAULT_RATE, DEFAULT_ROUND_TO
from npdg.errors import ConfigError, DataError
from npdg.models.gates import attention_modules, head_dim
from npdg.models.units import KINDS, CouplingGroup, coupling_groups, head_group_ids, unit_layers
from npdg.runs import atomic_write_text

#: How units are ranked (lowest first). Criterion names (npdg, slimming, ...) map onto these in
#: ``npdg.recipes.modes``.
SCORES: tuple[str, ...] = ("gamma", "l1norm", "random", "scores")
PLAN_FORMAT = "npdg-pruning-plan"
PLAN_VERSION = 1
PLAN_FILENAME = "pruning_plan.json"


def kept_indices(size: int, pruned: tuple[int, ...]) -> tuple[int, ...]:
    """The indices in ``range(size)`` that are not in ``pruned``, in order."""
    gone = set(pruned)
    return tuple(i for i in range(size) if i not in gone)


@dataclass(frozen=True)
class GroupPlan:
    """Pruned channels of one coupling group (root indices) or heads of one attention layer."""

    gid: int
    root: str  # root BN name (filters) or attention module name (heads)
    kind: str  # "filter" | "head"
    size: int
    pruned: tuple[int, ...]

    @property
    def kept(self) -> tuple[int, ...]:
        return kept_indices(self.size, self.pruned)


@dataclass(frozen=True)
class LayerPlan:
    """Kept and pruned units of one unit layer (BN or attention module), in local indices."""

    name: str
    kind: str
    size: int
    pruned: tuple[int, ...]

    @property
    def kept(self) -> tuple[int, ...]:
        return kept_indices(self.size, self.pruned)


@dataclass(frozen=True)
class PruningPlan:
    """A complete, architecture-tagged pruning decision; JSON round-trips and replays on a fresh model."""

    arch: str
    encoder: str
    num_classes: int
    aspp: str
    criterion: str
    rate: float
    threshold: float | None
    groups: tuple[GroupPlan, ...]
    layers: tuple[LayerPlan, ...]
    example_size: tuple[int, int] = (64, 64)
    round_to: int = DEFAULT_ROUND_TO
    max_layer_ratio: float = DEFAULT_MAX_LAYER_RATIO
    candidates: dict = field(default_factory=dict)  # kind -> number of candidate units
    note: str = ""

    # ---------------------------------------------------------------- summaries
    @property
    def num_pruned(self) -> dict[str, int]:
        """Pruned group channels / heads per kind."""
        out = {"filter": 0, "head": 0}
        for g in self.groups:
            out[g.kind] += len(g.pruned)
        return out

    @cached_property
    def digest(self) -> str:
        """sha1 of the plan's JSON: the cache key of its structure. Computed once per plan object
        (a plan is immutable; the JSON of a large plan takes ~20 ms, and a what-if asks for the key
        several times)."""
        return hashlib.sha1(self.to_json().encode()).hexdigest()

    @property
    def is_empty(self) -> bool:
        return not any(g.pruned for g in self.groups)

    def layer(self, name: str) -> LayerPlan:
        for lp in self.layers:
            if lp.name == name:
                return lp
        raise KeyError(name)

    # ---------------------------------------------------------------- checks
    def check_model(self, model: nn.Module, what: str = "model") -> None:
        """Refuse (ConfigError, naming the mismatch) a model of another architecture or already pruned."""
        for attr in ("arch", "encoder", "num_classes"):
            have, want = getattr(model, attr, None), getattr(self, attr)
            if have is not None and have != want:
                raise ConfigError(f"pruning plan is for {self.arch}/{self.encoder} ({self.num_classes} classes) but the {what} has {attr}={have!r}")
        spec = getattr(model, "spec", None)
        if spec is not None and spec.aspp != self.aspp:
            raise ConfigError(f"pruning plan is for ASPP variant {self.aspp!r} but the {what} uses {spec.aspp!r}")
        sizes = _layer_sizes(model)
        for lp in self.layers:
            if lp.name not in sizes:
                raise ConfigError(f"pruning plan layer {lp.name!r} does not exist in the {what}")
            if sizes[lp.name] != lp.size:
                raise ConfigError(f"pruning plan expects {lp.name} with {lp.size} units, the {what} has {sizes[lp.name]} (already pruned?)")

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        d = asdict(self)
        d = {"format": PLAN_FORMAT, "version": PLAN_VERSION, **d}
        d["groups"] = [{**asdict(g), "pruned": list(g.pruned)} for g in self.groups]
        d["layers"] = [{**asdict(lp), "pruned": list(lp.pruned), "kept": list(lp.kept)} for lp in self.layers]
        d["example_size"] = list(self.example_size)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict, source: str = "<plan>") -> PruningPlan:
        if not isinstance(d, dict) or d.get("format") != PLAN_FORMAT:
            raise DataError(f"{source} is not an npdg pruning plan (format {d.get('format') if isinstance(d, dict) else None!r})")
        if d.get("version") != PLAN_VERSION:
            raise DataError(f"{source}: pruning plan version {d.get('version')!r}, this npdg reads {PLAN_VERSION}")
        try:
            groups = tuple(GroupPlan(int(g["gid"]), g["root"], g["kind"], int(g["size"]), tuple(map(int, g["pruned"]))) for g in d["groups"])
            layers = tuple(LayerPlan(lp["name"], lp["kind"], int(lp["size"]), tuple(map(int, lp["pruned"]))) for lp in d["layers"])
            return cls(
                arch=d["arch"],
                encoder=d["encoder"],
                num_classes=int(d["num_classes"]),
                aspp=d.get("aspp", "smp"),
                criterion=d["criterion"],
                rate=float(d["rate"]),
                threshold=None if d.get("threshold") is None else float(d["threshold"]),
                groups=groups,
                layers=layers,
                example_size=tuple(int(v) for v in d.get("example_size", (64, 64))),
                round_to=int(d.get("round_to", 8)),
                max_layer_ratio=float(d.get("max_layer_ratio", 0.9)),
                candidates=dict(d.get("candidates", {})),
                note=str(d.get("note", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{source}: malformed pruning plan ({exc!r})") from None

    @classmethod
    def from_json(cls, text: str, source: str = "<plan>") -> PruningPlan:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source} is not valid JSON: {exc}") from None
        return cls.from_dict(d, source)

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON (a directory gets ``pruning_plan.json``), atomically."""
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILENAME
        atomic_write_text(self.to_json(), path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILENAME
        if not path.is_file():
            raise DataError(f"pruning plan not found: {path}")
        return cls.from_json(path.read_text(), str(path))


def _layer_sizes(model: nn.Module) -> dict[str, int]:
    """Unit-layer sizes, counting every MiT attention layer's heads whether gated or not."""
    sizes = {layer.name: layer.size for layer in unit_layers(model)}
    sizes.update({name: int(m.num_heads) for name, m in attention_modules(model).items()})
    return sizes


# ------------------------------------------------------------------------------------ scores


def _producer_l1(model: nn.Module, group: CouplingGroup) -> np.ndarray:
    """Mean |w| per root channel of the convs feeding the group's BNs (the conv right before each BN)."""
    modules = dict(model.named_modules())
    names = list(modules)
    acc = np.zeros(group.size)
    count = np.zeros(group.size)
    for member, local, root in group.members:
        producer = _conv_before(modules, names, member)
        if producer is None:
            continue
        w = producer.weight.detach().abs().float()
        per_out = w.reshape(w.shape[0], -1).mean(1).cpu().numpy()
        for i, r in zip(local, root):
            acc[r] += per_out[i]
            count[r] += 1
    return acc / np.maximum(count, 1)


def _conv_before(modules: dict[str, nn.Module], names: list[str], bn_name: str) -> nn.Module | None:
    """The last conv registered before ``bn_name`` with matching output width (smp's conv→BN order)."""
    width = modules[bn_name].num_features
    for name in reversed(names[: names.index(bn_name)]):
        m = modules[name]
        if isinstance(m, nn.Conv2d | nn.Linear) and getattr(m, "out_channels", getattr(m, "out_features", None)) == width:
            return m
    return None


def _unit_scores(scores: Mapping[str, Any], layer: str, size: int) -> np.ndarray:
    """The given per-unit scores of one layer as a float vector of its size (DataError otherwise)."""
    if layer not in scores:
        raise DataError(f"no per-unit score for layer {layer!r} (the scores were computed on another model?)")
    v = np.asarray(scores[layer], dtype=np.float64).reshape(-1)
    if v.size != size or not np.isfinite(v).all():
        raise DataError(f"scores for {layer!r} must be {size} finite numbers, got {v.size} values")
    return v


def _group_scores(model: nn.Module, group: CouplingGroup, score: str, rng: np.random.Generator,
                  scores: Mapping[str, Any] | None = None) -> np.ndarray:
    if score == "random":
        return rng.random(group.size)
    if score == "l1norm":
        return _producer_l1(model, group)
    modules = dict(model.named_modules())
    acc = np.zeros(group.size)
    count = np.zeros(group.size)
    for member, local, root in group.members:
        if scores is not None:
            gamma = _unit_scores(scores, member, modules[member].num_features)
        else:
            gamma = modules[member].weight.detach().abs().float().cpu().numpy()
        for i, r in zip(local, root):
            acc[r] += gamma[i]
            count[r] += 1
    return acc / np.maximum(count, 1)


def _head_scores(name: str, attn: nn.Module, score: str, rng: np.random.Generator,
                 scores: Mapping[str, Any] | None = None) -> np.ndarray:
    heads = int(attn.num_heads)
    if score == "random":
        return rng.random(heads)
    if scores is not None:
        return _unit_scores(scores, name, heads)
    gate = getattr(attn, "head_gate", None)
    if score == "l1norm" or gate is None:
        # Saved models carry their sparse-trained gates folded into proj's columns (g_h · W_h), so
        # without live gates the column norm is the |γ| proxy.
        w = attn.proj.weight.detach().abs().float()
        return w.reshape(w.shape[0], heads, head_dim(attn)).mean(dim=(0, 2)).cpu().numpy()
    return gate.detach().abs().float().cpu().numpy()


# ------------------------------------------------------------------------------------ selection


@dataclass
class _Candidate:
    gid: int
    root: str
    kind: str
    size: int
    scores: np.ndarray
    min_keep: int
    step: int  # kept count is a multiple of this


def _limits(size: int, kind: str, round_to: int, max_layer_ratio: float) -> tuple[int, int]:
    """(min kept, rounding step) for one group or attention layer."""
    if kind == "head":
        return 1, 1
    step = round_to if round_to > 1 and size % round_to == 0 else 1
    min_keep = max(math.ceil((1.0 - max_layer_ratio) * size), round_to, 1)
    min_keep = min(size, math.ceil(min_keep / step) * step)
    return min_keep, step


def _rounded(n_prune: int, cand: _Candidate) -> int:
    """Round the kept count to a multiple of the step (nearest), within [min_keep, size]."""
    keep = cand.size - n_prune
    keep = int(round(keep / cand.step)) * cand.step
    return cand.size - max(cand.min_keep, min(cand.size, keep))


def _collect(model, score, round_to, max_layer_ratio, example_size, seed, scores=None,
             kinds=KINDS) -> list[_Candidate]:
    rng = np.random.default_rng(seed)
    cands = []
    for g in coupling_groups(model, example_size):
        if not g.prunable or "filter" not in kinds:
            continue
        min_keep, step = _limits(g.size, "filter", round_to, max_layer_ratio)
        cands.append(_Candidate(g.gid, g.root, "filter", g.size, _group_scores(model, g, score, rng, scores), min_keep,
                                step))
    head_ids = head_group_ids(model, example_size)
    for name, attn in attention_modules(model).items():
        if attn.num_heads < 2 or "head" not in kinds:
            continue
        cands.append(_Candidate(head_ids[name], name, "head", int(attn.num_heads), _head_scores(name, attn, score, rng, scores), 1, 1))
    return cands


def _choose(cands: list[_Candidate], rate: float, threshold: float | None) -> dict[int, int]:
    """How many units each candidate group loses: greedy by score under the per-group caps, then rounded."""
    counts = {c.gid: 0 for c in cands}
    for kind in ("filter", "head"):
        pool = [c for c in cands if c.kind == kind]
        total = sum(c.size for c in pool)
        budget = int(math.floor(rate * total + 1e-9))
        entries = sorted((float(s), c.gid, i) for c in pool for i, s in enumerate(c.scores))
        caps = {c.gid: c.size - c.min_keep for c in pool}
        taken = 0
        for score, gid, _ in entries:
            if taken >= budget or (threshold is not None and score >= threshold):
                break
            if counts[gid] < caps[gid]:
                counts[gid] += 1
                taken += 1
    by_gid = {c.gid: c for c in cands}
    return {gid: _rounded(n, by_gid[gid]) if n else 0 for gid, n in counts.items()}


def _layer_plans(model, groups: list[GroupPlan], example_size) -> tuple[LayerPlan, ...]:
    """Translate group decisions (root indices) to every unit layer's local pruned indices."""
    pruned_roots = {g.gid: set(g.pruned) for g in groups if g.kind == "filter"}
    layers: list[LayerPlan] = []
    local: dict[str, list[int]] = {}
    for g in coupling_groups(model, example_size):
        gone = pruned_roots.get(g.gid, set())
        for member, loc, root in g.members:
            local.setdefault(member, []).extend(i for i, r in zip(loc, root) if r in gone)
    for layer in unit_layers(model):
        if layer.kind == "filter":
            layers.append(LayerPlan(layer.name, "filter", layer.size, tuple(sorted(local.get(layer.name, [])))))
    heads = {g.root: g for g in groups if g.kind == "head"}
    for name, attn in attention_modules(model).items():
        g = heads.get(name)
        layers.append(LayerPlan(name, "head", int(attn.num_heads), g.pruned if g else ()))
    return tuple(layers)


def check_rate(rate: float) -> float:
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not (0.0 <= float(rate) < 1.0):
        raise ConfigError(f"pruning rate must be in [0, 1), got {rate!r}")
    return float(rate)


def select(
    model: nn.Module,
    *,
    score: str = "gamma",
    scores: Mapping[str, Any] | None = None,
    label: str | None = None,
    rate: float = DEFAULT_RATE,
    threshold: float | None = None,
    round_to: int = DEFAULT_ROUND_TO,
    max_layer_ratio: float = DEFAULT_MAX_LAYER_RATIO,
    example_size: tuple[int, int] = (64, 64),
    seed: int = 0,
    kinds: tuple[str, ...] = KINDS,
    only_group: int | None = None,
) -> PruningPlan:
    """Choose the units to prune; returns a :class:`PruningPlan` (nothing is modified).

    ``score`` says how units are ranked (lowest pruned first, docs/method.md §5): ``gamma`` (|γ|),
    ``l1norm``, ``random``, or ``scores`` with ``scores`` given — a mapping layer name → per-unit
    values (e.g. ``SensitivityResult.weights()``, negated to prune the most sensitive units first);
    such a plan is a *proxy* criterion, not NPDG. ``label`` is the criterion name recorded in the
    plan (default: ``score``). ``kinds`` limits the candidates to filters and/or heads (``("head",)``
    prunes only the attention heads of a SegFormer). ``only_group`` prunes ``rate`` of ONE coupling
    group (or attention layer, by its group id) and nothing else — the per-layer sensitivity curves of
    docs/method.md §5. Threshold mode prunes units scoring below ``threshold``, capped at
    ``rate`` (a threshold above every score prunes exactly ``rate``, and the note says so). Raises
    :class:`ConfigError` for bad arguments and :class:`DataError` when the model has no prunable unit.
    """
    rate = check_rate(rate)
    if scores is not None:
        score = "scores"
    if score not in SCORES:
        raise ConfigError(f"unknown selection score (criterion) {score!r}; valid scores: {', '.join(SCORES)}")
    if score == "scores" and scores is None:
        raise ConfigError("score 'scores' needs the per-unit scores (scores=...)")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)
                                  or not math.isfinite(threshold) or threshold <= 0):
        raise ConfigError(f"threshold must be a positive number, got {threshold!r}")
    if isinstance(max_layer_ratio, bool) or not 0 < max_layer_ratio <= 1:
        raise ConfigError(f"max_layer_ratio must be in (0, 1], got {max_layer_ratio!r}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ConfigError(f"round_to must be an integer ≥ 1, got {round_to!r}")
    if not kinds or set(kinds) - set(KINDS):
        raise ConfigError(f"kinds must be a non-empty subset of {', '.join(KINDS)}, got {kinds!r}")
    cands = _collect(model, score, round_to, max_layer_ratio, tuple(example_size), seed, scores, tuple(kinds))
    name = f"{getattr(model, 'arch', type(model).__name__)}/{getattr(model, 'encoder', '')}"
    if not cands:
        raise DataError(f"the {name} model has no prunable units (no BN coupling group can be pruned exactly, no multi-head attention)")
    note = ""
    if threshold is not None:
        below = sum(int((c.scores < threshold).sum()) for c in cands)
        total = sum(c.size for c in cands)
        if below == 0:
            note = f"threshold {threshold} prunes nothing: no candidate unit has a score below it (smallest score {min(float(c.scores.min()) for c in cands):.4g})"
        elif below > rate * total:
            note = f"threshold {threshold} is above {below} of {total} candidate scores: capped at the rate {rate:g}"
    if only_group is not None:
        chosen = [c for c in cands if c.gid == int(only_group)]
        if not chosen:
            raise ConfigError(f"no prunable coupling group {only_group!r} in this model (groups "
                              f"{', '.join(str(c.gid) for c in cands[:8])}{' …' if len(cands) > 8 else ''})")
        cands = chosen
        note = (note + "; " if note else "") + f"only coupling group {only_group} ({chosen[0].root}) is pruned"
    counts = _choose(cands, rate, threshold)
    groups = []
    for c in cands:
        order = np.argsort(c.scores, kind="stable")
        groups.append(GroupPlan(c.gid, c.root, c.kind, c.size, tuple(sorted(int(i) for i in order[: counts[c.gid]]))))
    spec = getattr(model, "spec", None)
    return PruningPlan(
        arch=getattr(model, "arch", ""),
        encoder=getattr(model, "encoder", ""),
        num_classes=int(getattr(model, "num_classes", 0)),
        aspp=getattr(spec, "aspp", "smp"),
        criterion=label or score,
        rate=rate,
        threshold=None if threshold is None else float(threshold),
        groups=tuple(groups),
        layers=_layer_plans(model, groups, tuple(example_size)),
        example_size=tuple(example_size),
        round_to=round_to,
        max_layer_ratio=max_layer_ratio,
        candidates={kind: sum(c.size for c in cands if c.kind == kind) for kind in ("filter", "head")},
        note=note,
    )


__all__ = ["PLAN_FILENAME", "SCORES", "GroupPlan", "LayerPlan", "PruningPlan", "check_rate", "select"]
