"""Style sensitivity of every prunable unit (docs/method.md §3): unary and binary probes with streaming hooks.

A probe batch is B source images × K DSP styles, the K styles of one image adjacent (what
``DSP.stylize`` returns). For each unit i (a BatchNorm channel, or an attention head) and its
output ``A[b, k, i, p]`` over positions p:

* **unary** (``unary="share"``, default): the share of the unit's variance explained by style,
  ``u_i = mean_{b,p} Var_k A / (Var_{b,k,p} A + 1e-8)`` ∈ [0, 1]; ``unary="raw"``: the numerator
  alone (the paper's "activation variance among different domains").
* **binary**: ``Δ = A − mean_k A`` (the style component); ``R`` = correlation matrix of the units' Δ
  over (b, k, p) within the layer; ``c_i = mean_{j≠i} |R_ij|``.
* **combined**: u and c min-max normalized within each layer to ``w^U``, ``w^B`` ∈ [0, 1];
  ``w = λ·w^U + (1 − λ)·w^B`` (λ = 0.4).

Cost: one forward per probe batch. Forward hooks reduce each activation at once to per-layer sums
(float64): the within-style sum of squares, a running mean / centred sum of squares (Chan's merge,
using the exact decomposition total = within-style + between-(image, position)), and the C×C
cross-product ``Δ Δᵀ`` computed with one matrix product. Activations are never stored, so memory
grows with Σ C_l², not with layers × activation size. Hooks are always removed, also on error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from npdg.config import DEFAULT_LAMBDA, UNARY_MODES, check_unit_interval
from npdg.errors import ConfigError, DataError
from npdg.models import SegModel
from npdg.models.gates import GATE_PARAM, attention_modules
from npdg.models.hooks import hooked, run_batches
from npdg.models.units import UnitLayer, unit_layers, unit_table
from npdg.runs import atomic_write, atomic_write_text

EPS_VAR = 1e-8
#: Units with less than this share of variance from style count as style-blind in the binary score.
STYLE_FLOOR = 1e-6
TABLE_COLUMNS: tuple[str, ...] = (
    "layer", "unit", "kind", "unary", "binary", "w_unary", "w_binary", "combined", "gamma", "group",
)
#: Optional column: each unit's strongest style-correlated partners, ``"j:|R_ij|;…"`` (see ``LayerStats.partners``).
PARTNERS_COLUMN = "partners"
#: How many partners a table keeps per unit.
PARTNERS_K = 5
#: First line of a CSV table in npdg's first format (still read): ``# npdg-sensitivity {json meta}``.
CSV_MAGIC = "# npdg-sensitivity "
#: Key of the metadata in a Parquet table's schema.
META_KEY = "npdg_sensitivity"
ProgressFn = Callable[[int, int], None]


# ==================================================================================================
# which units are probed
# ==================================================================================================
def probe_layers(model: nn.Module) -> list[UnitLayer]:
    """The units probed: ``unit_layers(model)`` (BN filters, gated heads) plus heads of every
    ungated MiT attention module (probed as if their gates were 1)."""
    layers = list(unit_layers(model))
    have = {layer.name for layer in layers}
    for name, attn in attention_modules(model).items():
        if name not in have:
            layers.append(UnitLayer(name, "head", int(attn.num_heads), f"{name}.{GATE_PARAM}"))
    return layers


def _gamma(model: nn.Module, layer: UnitLayer) -> np.ndarray:
    """γ of a layer's units (ungated heads: 1, the identity gate)."""
    try:
        p = model.get_parameter(layer.param)
    except AttributeError:
        return np.ones(layer.size)
    return p.detach().float().cpu().numpy().astype(np.float64)


# ==================================================================================================
# streaming statistics
# ==================================================================================================
class LayerStats:
    """Running float64 sums of one layer's units over probe batches.

    ``update(x)`` takes a view ``[C, b, K, *P]`` (any strides) of one batch's activations.
    """

    def __init__(self, name: str, size: int, n_styles: int):
        self.name, self.size, self.k = name, size, n_styles
        self.count = 0  # elements per unit seen: Σ b·K·P
        self.mean = torch.zeros(size, dtype=torch.float64)
        self.m2 = torch.zeros(size, dtype=torch.float64)  # centred total sum of squares
        self.cross = torch.zeros(size, size, dtype=torch.float64)  # Σ Δ_i Δ_j; its diagonal is the within-style SS

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        c, b, k = x.shape[:3]
        if c != self.size or k != self.k:
            raise DataError(f"layer {self.name}: expected {self.size} units × {self.k} styles, got {c} × {k}")
        x = x.float()
        m = x.mean(dim=2, keepdim=True)  # per (image, position) mean over styles, [C, b, 1, *P]
        delta = torch.empty((c, b, k, *x.shape[3:]), dtype=torch.float32, device=x.device)
        torch.sub(x, m, out=delta)  # unit-major and contiguous, so a [C, n] view needs no copy
        d = delta.view(c, -1)
        n = d.shape[1]
        cross = d @ d.T
        m = m.reshape(c, -1)
        mu_b = m.mean(dim=1)
        between = (m - mu_b[:, None]).square().sum(dim=1) * k  # K·Σ_{b,p} (mean_k A − μ)²
        ss_b = torch.diagonal(cross).double() + between.double()
        self._merge(n, mu_b.double().cpu(), ss_b.cpu(), cross.double().cpu())

    def _merge(self, n: int, mu_b: torch.Tensor, ss_b: torch.Tensor, cross: torch.Tensor) -> None:
        """Chan et al.'s parallel merge of (count, mean, M2) plus the cross-product sum."""
        total = self.count + n
        delta = mu_b - self.mean
        self.mean += delta * (n / total)
        self.m2 += ss_b + delta.square() * (self.count * n / total)
        self.cross += cross
        self.count = total

    def unary(self, mode: str = "share") -> np.ndarray:
        """Share of variance explained by style (``share``) or mean within-style variance (``raw``)."""
        within = torch.diagonal(self.cross) / max(self.count, 1)
        if mode == "raw":
            return within.numpy()
        return (within / (self.m2 / max(self.count, 1) + EPS_VAR)).clamp(0.0, 1.0).numpy()

    def correlation(self) -> torch.Tensor:
        """``|R|``, the absolute Δ correlation matrix ``[C, C]`` with a zero diagonal (units without
        style variance: zero rows and columns)."""
        d = torch.diagonal(self.cross)
        # a unit whose style share is below STYLE_FLOOR has no style component, only float rounding
        d = torch.where(d > STYLE_FLOOR * self.m2, d, torch.zeros_like(d))
        scale = d.sqrt()
        denom = scale[:, None] * scale[None, :]
        r = torch.where(denom > 0, self.cross / denom.clamp_min(1e-300), torch.zeros_like(denom)).abs()
        r.fill_diagonal_(0.0)
        return r

    def binary(self) -> np.ndarray:
        """``c_i = mean_{j≠i} |R_ij|`` of the Δ correlation matrix (units without style variance: 0)."""
        if self.size < 2:
            return np.zeros(self.size)
        return (self.correlation().sum(dim=1) / (self.size - 1)).clamp(0.0, 1.0).numpy()

    def partners(self, k: int = PARTNERS_K) -> list[str]:
        """Per unit, its ``k`` strongest style-correlated partners in the layer as ``"j:|R_ij|;…"``
        (strongest first; partners with ``|R_ij| = 0`` left out) — what the binary score averages,
        kept small instead of the full C×C matrix."""
        k = min(int(k), self.size - 1)
        if k < 1:
            return [""] * self.size
        vals, idx = self.correlation().topk(k, dim=1)
        return [";".join(f"{int(j)}:{float(v):.3f}" for j, v in zip(row_i, row_v) if v > 0)
                for row_i, row_v in zip(idx.tolist(), vals.tolist())]


def minmax(values: np.ndarray) -> np.ndarray:
    """Min-max normalize to [0, 1]; a constant vector (incl. one unit) maps to zeros."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values
    lo, hi = float(values.min()), float(values.max())
    if not math.isfinite(lo) or not math.isfinite(hi) or hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.zeros_like(values)
    return (values - lo) / (hi - lo)


class _BNHook:
    """Forward hook of a BN module: output ``[b·K, C, H, W]`` → stats on view ``[C, b, K, H·W]``."""

    def __init__(self, stats: LayerStats):
        self.stats = stats

    def __call__(self, _module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        n, c = out.shape[:2]
        k = self.stats.k
        self.stats.update(out.detach().reshape(n // k, k, c, -1).permute(2, 0, 1, 3))


class _HeadHook:
    """Forward pre-hook of ``attn.proj``: input ``[b·K, N, heads·D]`` → view ``[heads, b, K, N, D]``.

    Registered after the gate hook (if any), so it sees the gated head outputs."""

    def __init__(self, stats: LayerStats):
        self.stats = stats

    def __call__(self, _module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        n, tokens, width = x.shape
        k, heads = self.stats.k, self.stats.size
        self.stats.update(x.reshape(n // k, k, tokens, heads, width // heads).permute(3, 0, 1, 2, 4))


def _attach(model: nn.Module, layers: Sequence[UnitLayer], n_styles: int) -> tuple[dict[str, LayerStats], list]:
    """Register one hook per layer; returns the stats and the handles (caller removes them)."""
    stats, handles = {}, []
    modules = dict(model.named_modules())
    try:
        for layer in layers:
            if layer.name not in modules:
                raise DataError(f"layer {layer.name!r} is not a module of this model")
            module = modules[layer.name]
            s = stats[layer.name] = LayerStats(layer.name, layer.size, n_styles)
            if layer.kind == "head":
                handles.append(module.proj.register_forward_pre_hook(_HeadHook(s)))
            else:
                handles.append(module.register_forward_hook(_BNHook(s)))
    except Exception:
        for h in handles:
            h.remove()
        raise
    return stats, handles


# ==================================================================================================
# result
# ==================================================================================================
@dataclass(frozen=True)
class SensitivityResult:
    """Per-unit sensitivity table plus per-layer summaries.

    ``table`` columns: layer, unit, kind, unary, binary, w_unary, w_binary, combined, gamma, group and
    (in tables written since they were kept) ``partners`` (``unary``/``binary`` raw statistics;
    ``w_*`` their per-layer min-max normalization; ``combined``
    = λ·w_unary + (1−λ)·w_binary, the weight w of the sparsity term). ``meta`` records the model
    (arch, encoder), λ, unary mode, images and styles.
    """

    table: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> pd.DataFrame:
        """One row per layer: kind, size, mean/max of the scores, mean |γ|, in model order."""
        t = self.table.assign(abs_gamma=self.table["gamma"].abs())
        g = t.groupby("layer", sort=False)
        out = g.agg(
            kind=("kind", "first"),
            size=("unit", "size"),
            unary_mean=("unary", "mean"),
            binary_mean=("binary", "mean"),
            combined_mean=("combined", "mean"),
            combined_max=("combined", "max"),
            gamma_abs_mean=("abs_gamma", "mean"),
        )
        return out.reset_index()

    def weights(self) -> dict[str, torch.Tensor]:
        """Layer name → combined weight w per unit (float32, unit order)."""
        out = {}
        for name, rows in self.table.groupby("layer", sort=False):
            rows = rows.sort_values("unit")
            out[str(name)] = torch.tensor(rows["combined"].to_numpy(), dtype=torch.float32)
        return out

    def check_model(self, model: nn.Module, layers: Sequence | None = None) -> None:
        """Raise DataError unless this table's layers and sizes are exactly ``model``'s units."""
        want = {(l.name, l.size) for l in (layers if layers is not None else probe_layers(model))}
        have = {(str(k), int(v)) for k, v in self.table.groupby("layer", sort=False)["unit"].size().items()}
        spec = getattr(model, "spec", None)
        for key in ("arch", "encoder"):
            mine, theirs = getattr(spec, key, None), self.meta.get(key)
            if mine is not None and theirs is not None and str(mine) != str(theirs):
                raise DataError(f"the sensitivity table was computed on a {self.meta.get('arch')}/"
                                f"{self.meta.get('encoder')} model, not this {spec.arch}/{spec.encoder}")
        if want != have:
            missing = sorted(n for n, _ in want - have)[:3]
            extra = sorted(n for n, _ in have - want)[:3]
            raise DataError(f"the sensitivity table does not match this model's units (model-only layers/sizes: "
                            f"{missing or '-'}; table-only: {extra or '-'})")

    def save(self, path: str | Path) -> Path:
        """Write the table as plain ``.csv`` or ``.parquet`` (atomically) plus the metadata sidecar
        ``<name>.json``; Parquet also carries the metadata in its schema (key ``npdg_sensitivity``).

        The CSV has no comment line, so ``pd.read_csv(path)`` with default arguments gives the table.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".parquet"):
            raise ConfigError(f"sensitivity table must be .csv or .parquet, got {path.name!r}")
        meta = json.dumps(self.meta)
        if suffix == ".csv":
            atomic_write(path, lambda fh: self.table.to_csv(fh, index=False), binary=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(self.table, preserve_index=False)
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY.encode(): meta.encode()})
            atomic_write(path, lambda fh: pq.write_table(table, fh))
        atomic_write_text(meta + "\n", sidecar(path))
        return path

    @classmethod
    def load(cls, path: str | Path) -> SensitivityResult:
        """Read a table written by :meth:`save` — or by npdg before the sidecar existed (a CSV whose
        first line is ``# npdg-sensitivity {meta}``; Parquet with pandas attrs); DataError if missing
        or not a sensitivity table."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"sensitivity table not found: {path}")
        try:
            meta = None
            if path.suffix.lower() == ".parquet":
                import pyarrow.parquet as pq

                schema_meta = pq.read_schema(path).metadata or {}
                if META_KEY.encode() in schema_meta:
                    meta = json.loads(schema_meta[META_KEY.encode()].decode())
                table = pd.read_parquet(path)
                if meta is None and "npdg_sensitivity" in table.attrs:  # old files: pandas attrs
                    meta = json.loads(table.attrs["npdg_sensitivity"])
                table.attrs = {}
            else:
                with open(path) as f:
                    first = f.readline()
                    if first.startswith(CSV_MAGIC):  # old format: metadata in a comment line
                        meta = json.loads(first[len(CSV_MAGIC):])
                    else:
                        f.seek(0)
                    table = pd.read_csv(f)
            if meta is None and sidecar(path).is_file():
                meta = json.loads(sidecar(path).read_text())
        except Exception as exc:
            raise DataError(f"cannot read sensitivity table {path}: {exc}") from None
        if not isinstance(meta, dict):
            raise DataError(f"{path} is not an npdg sensitivity table (no metadata: {sidecar(path).name} is missing)")
        missing = [c for c in TABLE_COLUMNS if c not in table.columns]
        if missing:
            raise DataError(f"{path} is not an npdg sensitivity table: missing column(s) {', '.join(missing)}")
        return cls(table, meta)


def parse_partners(value: Any) -> list[tuple[int, float]]:
    """A ``partners`` cell (``"j:r;j:r"``, empty or NaN) as ``[(unit, |R|), …]``, strongest first."""
    if not isinstance(value, str) or not value.strip():
        return []
    out = []
    for item in value.split(";"):
        j, _, r = item.partition(":")
        try:
            out.append((int(j), float(r)))
        except ValueError:
            raise DataError(f"malformed partners entry {item!r} (expected 'unit:correlation')") from None
    return out


def sidecar(path: str | Path) -> Path:
    """The metadata file of a table: ``sens.csv`` → ``sens.json``."""
    path = Path(path)
    return path.with_suffix(".json")


# ==================================================================================================
# the probe
# ==================================================================================================
def _check_args(n_styles: int, lam: float, unary: str, batch_size: int) -> None:
    if int(n_styles) < 2:
        raise ConfigError(f"the probe needs at least 2 styles per image (variance over styles), got {n_styles}")
    check_unit_interval("lambda", lam)
    if unary not in UNARY_MODES:
        raise ConfigError(f"unary must be one of {', '.join(UNARY_MODES)}, got {unary!r}")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _styled_batches(images: torch.Tensor, dsp, n_styles: int, batch_size: int, seed: int):
    """Yield ``[b·K, 3, H, W]`` probe batches: DSP styles of ``batch_size`` images at a time, or
    slices of pre-stylized ``images`` (``dsp is None``: rows already grouped K per image)."""
    if dsp is None:
        if images.shape[0] % n_styles:
            raise ConfigError(f"pre-stylized images: {images.shape[0]} rows is not a multiple of n_styles={n_styles}")
        step = batch_size * n_styles
        for start in range(0, images.shape[0], step):
            yield images[start:start + step]
        return
    gen = torch.Generator().manual_seed(int(seed))
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start:start + batch_size]
        with torch.no_grad():
            yield dsp.stylize(chunk, n_styles=n_styles, generator=gen)


def _groups(model: nn.Module) -> dict[tuple[str, int], int] | None:
    """(layer, unit) → torch-pruning group id from ``unit_table``, or None for non-npdg models."""
    if not isinstance(model, SegModel):
        return None
    ut = unit_table(model)
    return {(str(l), int(u)): int(g) for l, u, g in zip(ut["layer"], ut["unit"], ut["group"])}


def build_table(stats: dict[str, LayerStats], layers: Sequence[UnitLayer], model: nn.Module, lam: float,
                unary: str, groups: dict[tuple[str, int], int] | None) -> pd.DataFrame:
    """Assemble the tidy per-unit table from finished per-layer statistics."""
    parts = []
    for layer in layers:
        s = stats[layer.name]
        if s.count == 0:
            raise DataError(f"layer {layer.name!r} never ran during the probe (is it used in forward?)")
        u, c = s.unary(unary), s.binary()
        wu, wb = minmax(u), minmax(c)
        units = np.arange(layer.size)
        grp = [groups.get((layer.name, int(i)), -1) for i in units] if groups else [-1] * layer.size
        parts.append(pd.DataFrame({
            "layer": layer.name, "unit": units, "kind": layer.kind, "unary": u, "binary": c,
            "w_unary": wu, "w_binary": wb, "combined": lam * wu + (1.0 - lam) * wb,
            "gamma": _gamma(model, layer), "group": np.asarray(grp, dtype=np.int64),
            PARTNERS_COLUMN: s.partners(),
        }))
    if not parts:
        raise DataError("this model has no prunable units (no BatchNorm filters or attention heads) to probe")
    return pd.concat(parts, ignore_index=True)


def probe(
    model: nn.Module,
    images: torch.Tensor,
    dsp=None,
    n_styles: int = 4,
    lam: float = DEFAULT_LAMBDA,
    unary: str = "share",
    batch_size: int = 4,
    progress: ProgressFn | None = None,
    layers: Sequence | None = None,
    seed: int = 0,
    with_groups: bool = True,
) -> SensitivityResult:
    """Probe the style sensitivity of every unit of ``model``.

    ``images``: source images ``[B, 3, H, W]`` in [0, 1]; ``dsp`` (a loaded :class:`npdg.dsp.DSP`)
    gives each ``n_styles`` styles (ε ~ N(0, I) from ``seed``). With ``dsp=None``, ``images`` are
    already stylized, ``[B·K, 3, H, W]`` with the K styles of one image adjacent. ``batch_size``
    source images (× K) go through the model per forward. ``layers`` defaults to
    :func:`probe_layers`. The model runs in eval mode under ``no_grad``; its mode is restored and
    every hook removed afterwards.
    """
    _check_args(n_styles, lam, unary, batch_size)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ConfigError(f"probe images must be a tensor [B, 3, H, W], got {getattr(images, 'shape', images)!r}")
    layers = [UnitLayer(u.name, u.kind, u.size, u.param) for u in (layers if layers is not None else probe_layers(model))]
    if not layers:
        raise DataError("this model has no prunable units (no BatchNorm filters or attention heads) to probe")
    device = _model_device(model)
    n_img = images.shape[0] if dsp is not None else images.shape[0] // n_styles
    total = math.ceil(n_img / batch_size)
    stats, handles = _attach(model, layers, int(n_styles))
    with hooked(model, handles):
        run_batches(model, _styled_batches(images, dsp, int(n_styles), int(batch_size), seed), device, total, progress)
    groups = _groups(model) if with_groups else None
    table = build_table(stats, layers, model, float(lam), unary, groups)
    spec = getattr(model, "spec", None)
    meta = {
        "arch": getattr(spec, "arch", None), "encoder": getattr(spec, "encoder", None),
        "lam": float(lam), "unary": unary, "images": int(n_img), "styles": int(n_styles), "seed": int(seed),
        "size": [int(images.shape[-2]), int(images.shape[-1])],
    }
    return SensitivityResult(table, meta)


def recombine(result: SensitivityResult, lam: float) -> SensitivityResult:
    """The same statistics with another λ (no new forward pass)."""
    check_unit_interval("lambda", lam)
    t = result.table.copy()
    t["combined"] = lam * t["w_unary"] + (1.0 - lam) * t["w_binary"]
    return SensitivityResult(t, {**result.meta, "lam": float(lam)})


__all__ = [
    "DEFAULT_LAMBDA", "LayerStats", "PARTNERS_COLUMN", "PARTNERS_K", "SensitivityResult", "sidecar", "TABLE_COLUMNS", "UNARY_MODES",
    "build_table", "minmax", "parse_partners", "probe", "probe_layers", "recombine",
]
