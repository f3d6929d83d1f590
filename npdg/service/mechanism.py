"""The mechanism test for the Prune page: mask by sensitivity, re-estimate BN, score (docs/method.md §9).

:func:`mechanism_job` runs :func:`npdg.pruning.mechanism.mechanism_test` on a model as a background
job (shared by every session and persisted in the dashboard cache), or presents the results shipped
next to a zoo model (``mechanism.csv``, written by ``bench/bench_mechanism.py --ship``). The shared
model is never changed: every configuration is a masked copy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from npdg.errors import ConfigError
from npdg.pruning import mechanism
from npdg.service import engine, engine_device, jobs, model_key, shared_dsp, shared_model
from npdg.service.data import DOMAIN_NAMES, DOMAIN_ROLES, SOURCE_DOMAIN, scene_batch

#: Results shipped next to a zoo model, with a ``.json`` sidecar naming the settings.
SHIPPED = "mechanism.csv"
#: The page's own (smaller) run: a few minutes on a 2-core CPU.
PAGE_RATES = (0.1, 0.2, 0.3)
PAGE_SELECTIONS = ("most_combined", "most_unary", "most_binary", "least_combined", "random")


def _run_config(model_path: str | Path):
    """The run config next to the model file (None without one)."""
    from npdg.config import load_run_config
    from npdg.models.store import resolve_model_path

    return load_run_config(resolve_model_path(model_path).parent)


def model_size(model_path: str | Path) -> tuple[int, int]:
    """The input size the model was trained at (its run config's ``data.size``; 128×256 without one)."""
    cfg = _run_config(model_path)
    return tuple(int(v) for v in cfg.data.size) if cfg is not None and cfg.data.size else (128, 256)


def model_dsp(model_path: str | Path) -> Path:
    """The DSP the model was trained with (its config's ``dsp.path``), else the repository's."""
    from npdg.recipes.prune import DEFAULT_DSP

    cfg = _run_config(model_path)
    if cfg is not None and cfg.dsp.path:
        path = Path(cfg.dsp.path)
        path = path if path.is_absolute() else Path(__file__).resolve().parents[2] / path
        if path.is_dir():
            return path
    return Path(DEFAULT_DSP)


def shipped(model_path: str | Path) -> tuple[pd.DataFrame, dict] | None:
    """The shipped results of a model folder and their settings, or None."""
    from npdg.models.store import resolve_model_path

    folder = resolve_model_path(model_path).parent
    path = folder / SHIPPED
    side = path.with_suffix(".json")
    if not path.is_file() or not side.is_file():
        return None
    try:
        frame, meta = pd.read_csv(path), json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    if not set(mechanism.RESULT_COLUMNS) <= set(frame.columns):
        return None
    return frame[mechanism.RESULT_COLUMNS], meta


def _tables(model_path: str | Path) -> dict[str, pd.DataFrame]:
    from npdg.sensitivity import SensitivityResult
    from npdg.service.sensitivity import saved_table_path

    out = {}
    for source in ("dsp", "oracle"):
        path = saved_table_path(model_path, source)
        if path is not None:
            out[source] = SensitivityResult.load(path).table
    return out


def mechanism_job(model_path: str | Path, *, rates: Sequence[float] = PAGE_RATES,
                  selections: Sequence[str] = PAGE_SELECTIONS, seeds: Sequence[int] = (0, 1, 2),
                  n_images: int = 4, calib_images: int = 16, lookup_only: bool = False):
    """The mechanism test of one model as a job (a frame of :data:`mechanism.RESULT_COLUMNS`):
    shipped results when the model folder has them, else computed on ``n_images`` test scenes per
    domain with BN re-estimated on ``calib_images`` source train scenes and their DSP stylizations.
    ``lookup_only``: only an existing job. Raises ConfigError when the model has no saved DSP
    sensitivity table."""
    rates = mechanism.check_rates(rates)
    ship = shipped(model_path)
    if ship is not None:
        return jobs.preset(("mechanism-shipped", model_key(model_path)), ship[0], label="mechanism test — precomputed")
    if int(n_images) < 1 or int(calib_images) < 1:
        raise ConfigError(f"n_images and calib_images must be >= 1, got {n_images}, {calib_images}")
    parts = ("mechanism", model_key(model_path), rates, tuple(selections), tuple(seeds), int(n_images), int(calib_images))
    label = f"mechanism test ({len(rates)} rates, {len(selections)} selections, {int(n_images)} scenes per domain)"
    if lookup_only:
        return jobs.lookup(parts, jobs.FRAME_STORE, label)
    tables = _tables(model_path)
    if "dsp" not in tables:
        raise ConfigError("this model has no saved DSP sensitivity table: compute it on the Sensitivity page first")
    selections = [s for s in selections if s != "most_oracle" or "oracle" in tables]

    def compute(progress) -> pd.DataFrame:
        from npdg.data.specs import is_averaged
        from npdg.evaluate import domain_result
        from npdg.service.pruning import confusions

        size = model_size(model_path)
        calib_idx = [int(i * 2000 / int(calib_images)) for i in range(int(calib_images))]
        images, _ = scene_batch(SOURCE_DOMAIN, "train", calib_idx, size)

        def score(net) -> pd.DataFrame:
            cms = confusions(net, None, tuple(DOMAIN_NAMES), "test", int(n_images), size, None)
            return pd.DataFrame([{"domain": d, "role": DOMAIN_ROLES.get(d, "real"), "averaged": is_averaged(d, SOURCE_DOMAIN),
                                  "miou": domain_result(d, cm, int(n_images)).miou} for d, cm in cms.items()])

        import copy

        with engine():  # the shared model is only read here: a private copy does the rest, unlocked
            model = copy.deepcopy(shared_model(model_path))
            calib = mechanism.calibration_batches(images.to(engine_device()), shared_dsp(model_dsp(model_path)))
        return mechanism.mechanism_test(model, tables, calib, score, rates=rates, selections=selections,
                                        seeds=seeds, progress=lambda d, t: progress(d, t))

    return jobs.submit(parts, compute, label=label, store=jobs.FRAME_STORE)


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`npdg.pruning.mechanism.summary` of a result frame: per (selection, rate), the source
    and held-out means, their deltas against the re-estimated dense model, and the gap."""
    return mechanism.summary(frame)


__all__ = ["PAGE_RATES", "PAGE_SELECTIONS", "SHIPPED", "mechanism_job", "model_dsp", "model_size", "shipped", "summary"]
