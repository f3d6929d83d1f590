"""Sensitivity page service: per-unit style sensitivity tables (docs/method.md §3).

* :func:`load_table` / :func:`run_tables` — a saved table (``npdg sensitivity`` output, or the
  ``RUN/sensitivity/iter_XXXXXX.csv`` tables sparse training writes);
* :func:`probe_dsp` — probe a model with source images × DSP styles (what NPDG uses);
* :func:`probe_oracle` — probe it with the same scenes rendered in held-out domains (a diagnostic
  of how well DSP stands in for the true shifts; never for training or selection);
* :func:`recombine` — the same statistics with another λ, without a forward pass;
* :func:`rank_agreement` — per-layer Spearman correlation between two tables (e.g. DSP vs oracle);
* :func:`probe_job` — either probe as a background job (:mod:`npdg.service.jobs`): one worker for
  all sessions asking for the same settings, the table persisted in the dashboard cache;
* :func:`unit_info` — everything the table says about one unit (scores, rank, γ, coupling group,
  strongest style-correlated partners).

Each call returns a new :class:`~npdg.sensitivity.SensitivityResult` whose table the caller may
change freely; the cached one is never handed out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from npdg.config import DEFAULT_LAMBDA, UNARY_MODES
from npdg.errors import ConfigError, DataError
from npdg.sensitivity import PARTNERS_COLUMN, SensitivityResult, parse_partners
from npdg.sensitivity import recombine as _recombine
from npdg.service import engine, file_key, jobs, lru, model_key, shared_dsp, shared_model
from npdg.service.data import HELDOUT_DOMAINS, SOURCE_DOMAIN

ProgressFn = Callable[[int, int], None]
#: Default probe size (H, W) on the dashboard.
DEFAULT_SIZE: tuple[int, int] = (128, 256)
_TABLES = lru(16)
_PROBES = lru(16)


def _copy(result: SensitivityResult) -> SensitivityResult:
    return SensitivityResult(result.table.copy(), dict(result.meta))


def load_table(path: str | Path) -> SensitivityResult:
    """A saved sensitivity table (``.csv`` or ``.parquet`` with its metadata), cached per file version."""
    return _copy(_TABLES.get(("table", file_key(path)), lambda: SensitivityResult.load(path)))


def run_tables(run_dir: str | Path) -> list[str]:
    """The sensitivity tables of a run folder, oldest first: ``RUN/sensitivity/*.csv|parquet`` (one
    per refresh of sparse training) and ``RUN/sensitivity.csv|parquet`` if present."""
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(f"not a run folder: {run}")
    found = sorted(p for p in (run / "sensitivity").glob("*") if p.suffix.lower() in (".csv", ".parquet")) \
        if (run / "sensitivity").is_dir() else []
    found += [run / f"sensitivity{ext}" for ext in (".csv", ".parquet") if (run / f"sensitivity{ext}").is_file()]
    return [str(p) for p in found]


def saved_table_path(model_dir: str | Path, source: str) -> Path | None:
    """The precomputed table of ``source`` (``dsp`` or ``oracle``) of a model folder, if any: zoo
    models ship ``sensitivity_dsp|oracle.csv``; a run's saved DSP tables (``npdg sensitivity``
    output or sparse-training refreshes, the newest) count for ``dsp``."""
    folder = Path(model_dir)
    path = folder / f"sensitivity_{source}.csv"
    if path.is_file():
        return path
    if source == "dsp" and folder.is_dir():
        found = run_tables(folder)
        if found:
            return Path(found[-1])
    return None


def probe_dsp(
    model_path: str | Path,
    dsp_path: str | Path,
    *,
    n_images: int = 8,
    n_styles: int = 4,
    size: tuple[int, int] = DEFAULT_SIZE,
    split: str = "train",
    lam: float = DEFAULT_LAMBDA,
    unary: str = "share",
    seed: int = 0,
    batch_size: int = 4,
    progress: ProgressFn | None = None,
) -> SensitivityResult:
    """Probe the model with ``n_images`` source scenes (spread evenly over ``split``) × ``n_styles``
    DSP styles drawn from ``seed`` — :func:`npdg.sensitivity.probe` as sparse training runs it."""
    from npdg.data.specs import open_dataset, spread_images

    key = ("dsp", model_key(model_path), file_key(dsp_path), int(n_images), int(n_styles), tuple(size), split,
           float(lam), unary, int(seed), int(batch_size))

    def compute() -> SensitivityResult:
        from npdg.sensitivity import probe

        images = spread_images(open_dataset(SOURCE_DOMAIN, split, tuple(size)), int(n_images))
        with engine():
            model, dsp = shared_model(model_path), shared_dsp(dsp_path)
            return probe(model, images.to(dsp.device), dsp, n_styles=n_styles, lam=lam, unary=unary,
                         batch_size=batch_size, progress=progress, seed=seed)

    return _copy(_PROBES.get(key, compute))


def probe_oracle(
    model_path: str | Path,
    *,
    domains: Sequence[str] = HELDOUT_DOMAINS,
    indices: Sequence[int] = tuple(range(4)),
    size: tuple[int, int] = DEFAULT_SIZE,
    split: str = "val",
    lam: float = DEFAULT_LAMBDA,
    unary: str = "share",
    batch_size: int = 2,
    progress: ProgressFn | None = None,
) -> SensitivityResult:
    """Probe the model with scenes ``indices`` rendered in each of ``domains`` (the "styles" are the
    true held-out looks; :func:`npdg.data.specs.domain_stack`, ``probe(dsp=None)``). A diagnostic that
    uses target domains: never feed it to training or selection (docs/method.md §3)."""
    from npdg.data.specs import domain_stack

    doms, idx = tuple(domains), tuple(int(i) for i in indices)
    key = ("oracle", model_key(model_path), doms, idx, tuple(size), split, float(lam), unary, int(batch_size))

    def compute() -> SensitivityResult:
        from npdg.sensitivity import probe

        images, _ = domain_stack(idx, doms, split=split, size=tuple(size))
        with engine():
            model = shared_model(model_path)
            device = next(model.parameters()).device
            result = probe(model, images.to(device), None, n_styles=len(doms), lam=lam, unary=unary,
                           batch_size=batch_size, progress=progress)
        return SensitivityResult(result.table, {**result.meta, "oracle_domains": list(doms), "split": split})

    return _copy(_PROBES.get(key, compute))


def recombine(result: SensitivityResult, lam: float) -> SensitivityResult:
    """The same statistics mixed with another λ: ``w = λ·w^U + (1 − λ)·w^B`` (no forward pass)."""
    return _recombine(result, lam)


def layer_summary(result: SensitivityResult) -> pd.DataFrame:
    """One row per layer (kind, size, mean/max scores, mean |γ|), in model order."""
    return result.layers


def rank_agreement(a: SensitivityResult, b: SensitivityResult, column: str = "combined") -> pd.DataFrame:
    """Per layer, Spearman's rank correlation of ``column`` between two tables of the same model:
    columns ``layer, kind, size, spearman`` (NaN for a layer constant in either table)."""
    key = ["layer", "unit"]
    m = a.table[key + ["kind", column]].merge(b.table[key + [column]], on=key, suffixes=("_a", "_b"))
    if len(m) != len(a.table) or len(m) != len(b.table):
        raise DataError("the two sensitivity tables cover different units (computed on different models?)")
    rows = []
    for layer, g in m.groupby("layer", sort=False):
        ra, rb = g[f"{column}_a"].rank(), g[f"{column}_b"].rank()
        rho = float(np.corrcoef(ra, rb)[0, 1]) if len(g) > 1 and ra.std() > 0 and rb.std() > 0 else float("nan")
        rows.append({"layer": layer, "kind": g["kind"].iloc[0], "size": len(g), "spearman": rho})
    return pd.DataFrame(rows, columns=["layer", "kind", "size", "spearman"])


#: Sensitivity tables persisted by :func:`probe_job` (CSV plus the JSON metadata sidecar).
TABLE_STORE = jobs.Store("sensitivity", ".csv", lambda result, path: result.save(path), SensitivityResult.load)
PROBE_SOURCES = ("dsp", "oracle")


def _probe_parts(model_path, source: str, n_images: int, n_styles: int, dsp_path, domains, unary: str) -> tuple:
    if unary not in UNARY_MODES:
        raise ConfigError(f"unary mode must be one of {', '.join(UNARY_MODES)}, got {unary!r}")
    if source not in PROBE_SOURCES:
        raise ConfigError(f"probe source must be one of {', '.join(PROBE_SOURCES)}, got {source!r}")
    if not 2 <= int(n_images) <= 64:
        raise ConfigError(f"images must be in 2 … 64, got {n_images}")
    if source == "dsp":
        if not 2 <= int(n_styles) <= 16:
            raise ConfigError(f"styles must be in 2 … 16 (the unary score is a variance across styles), got {n_styles}")
        return ("probe", "dsp", model_key(model_path), file_key(dsp_path), int(n_images), int(n_styles), unary)
    doms = tuple(domains)
    if len(doms) < 2:
        raise ConfigError("the oracle probe needs at least 2 domains (the unary score is a variance across them)")
    return ("probe", "oracle", model_key(model_path), doms, int(n_images), unary)


def probe_job(model_path: str | Path, source: str, *, n_images: int = 8, n_styles: int = 4, unary: str = "share",
              dsp_path: str | Path | None = None, domains: Sequence[str] = (SOURCE_DOMAIN, *HELDOUT_DOMAINS),
              lookup_only: bool = False) -> jobs.JobStatus | None:
    """A DSP (``source="dsp"``) or oracle probe of the model as a background job, persisted in the
    dashboard cache and shared by every session asking for the same settings. With
    ``lookup_only``, return the job only if it already exists (running, done or on disk)."""
    from npdg.service.styles import DEFAULT_DSP

    dsp_path = DEFAULT_DSP if dsp_path is None else dsp_path
    parts = _probe_parts(model_path, source, n_images, n_styles, dsp_path, domains, unary)
    label = (f"DSP probe ({int(n_images)} images × {int(n_styles)} styles)" if source == "dsp"
             else f"oracle probe ({int(n_images)} scenes × {len(tuple(domains))} domains)")
    if lookup_only:
        return jobs.lookup(parts, TABLE_STORE, label)
    if source == "dsp":
        def compute(progress):
            return probe_dsp(model_path, dsp_path, n_images=int(n_images), n_styles=int(n_styles), unary=unary,
                             progress=progress)
    else:
        def compute(progress):
            return probe_oracle(model_path, domains=tuple(domains), indices=tuple(range(int(n_images))), unary=unary,
                                progress=progress)
    return jobs.submit(parts, compute, label=label, store=TABLE_STORE)


def job_table(status: jobs.JobStatus | None) -> SensitivityResult | None:
    """The table of a finished :func:`probe_job` (a new copy), or None."""
    found = None if status is None else jobs.result(status.key)
    return None if found is None else _copy(found)


def find_table(model_path: str | Path, source: str, **probe) -> tuple[SensitivityResult | None, str]:
    """The table a page shows for a model and ``source``: the precomputed one next to the model
    (:func:`saved_table_path`), else a finished on-request probe with the settings ``probe`` (the
    keyword arguments of :func:`probe_job`); with where it came from, or (None, "none yet")."""
    path = saved_table_path(model_path, source)
    if path is not None:
        return load_table(path), f"precomputed: {path.name}"
    found = job_table(probe_job(model_path, source, lookup_only=True, **probe))
    return (found, "computed on request (dashboard cache)") if found is not None else (None, "none yet")


@dataclass(frozen=True)
class UnitInfo:
    """One unit in a sensitivity table: its row's scores, its rank in the layer (1 = most
    sensitive by ``combined``), the layers its coupling group spans, and its partners
    ``[(unit, |R|)]`` (empty when the table predates partners or the unit has none)."""

    layer: str
    unit: int
    kind: str
    unary: float
    binary: float
    w_unary: float
    w_binary: float
    combined: float
    gamma: float
    group: int
    rank: int
    layer_size: int
    group_layers: tuple[str, ...]
    partners: tuple[tuple[int, float], ...]
    has_partners: bool


def unit_info(result: SensitivityResult, layer: str, unit: int) -> UnitInfo:
    """What ``result`` says about unit ``unit`` of ``layer`` (ConfigError if it is not in the table)."""
    t = result.table
    rows = t[t["layer"].astype(str) == str(layer)]
    if rows.empty:
        raise ConfigError(f"layer {layer!r} is not in this sensitivity table")
    row = rows[rows["unit"] == int(unit)]
    if row.empty:
        raise ConfigError(f"unit {unit} is out of range: {layer!r} has units 0 … {len(rows) - 1}")
    r = row.iloc[0]
    rank = int((rows["combined"] > float(r["combined"])).sum()) + 1
    group = int(r["group"])
    group_layers = tuple(dict.fromkeys(t.loc[t["group"] == group, "layer"].astype(str))) if group >= 0 else (str(layer),)
    has = PARTNERS_COLUMN in t.columns
    partners = tuple(parse_partners(r[PARTNERS_COLUMN])) if has else ()
    return UnitInfo(str(layer), int(unit), str(r["kind"]), float(r["unary"]), float(r["binary"]), float(r["w_unary"]),
                    float(r["w_binary"]), float(r["combined"]), float(r["gamma"]), group, rank, len(rows), group_layers,
                    partners, has)


__all__ = ["DEFAULT_SIZE", "PROBE_SOURCES", "UNARY_MODES", "TABLE_STORE", "UnitInfo", "job_table", "layer_summary", "load_table",
           "find_table", "probe_dsp", "probe_job", "probe_oracle", "rank_agreement", "recombine", "run_tables", "saved_table_path", "unit_info"]
