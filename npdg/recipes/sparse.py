"""Sparse training of a finished run (docs/method.md §4): continue its weights in a sparse mode."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from npdg.config import apply_overrides, load_config
from npdg.errors import ConfigError, DataError
from npdg.pruning.physical import load_model
from npdg.recipes.modes import MODES
from npdg.recipes.train import train


def sparse_modes() -> list[str]:
    """The training modes that add the γ penalty (slimming, npdg, npdg_unary, npdg_binary)."""
    return [m.name for m in MODES.values() if m.sparsity is not None]


def sparse_train(run_dir: str | Path, out_dir: str | Path, criterion: str, iters: int, dsp_dir: str | Path | None,
                 lambda_s: float, refresh: int = 4, lam: float | None = None, device: str = "auto",
                 progress: Callable | None = None, *, overwrite: bool = False, resume: bool = False,
                 evaluate: bool = False,
                 overrides: Sequence[str] = (), log: Callable[[str], None] | None = None) -> Path:
    """Sparse-train the weights of ``run_dir`` for ``iters`` iterations into the run dir ``out_dir``.

    The run's own ``config.yaml`` supplies data and optimizer settings; ``criterion`` (a sparse
    training mode: slimming | npdg | npdg_unary | npdg_binary), ``iters``, ``dsp_dir``, ``lambda_s``,
    ``refresh`` and ``lam`` (None → the run's ``sparsity.lam``) replace the corresponding keys,
    ``overrides`` (``section.key=value``) anything else. Returns ``out_dir`` (its
    ``model.safetensors`` holds the sparse weights, head gates folded). ``resume`` continues an
    interrupted ``out_dir`` from its last checkpoint.
    """
    if criterion not in sparse_modes():
        raise ConfigError(f"sparse-training criterion must be one of {', '.join(sparse_modes())}, got {criterion!r}")
    if int(iters) < 1:
        raise ConfigError(f"sparse-training iterations must be >= 1, got {iters}")
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DataError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    cfg = replace(
        cfg,
        train=replace(cfg.train, mode=criterion, iters=int(iters), warmup_iters=min(cfg.train.warmup_iters, int(iters))),
        dsp=replace(cfg.dsp, path=str(dsp_dir) if dsp_dir is not None else cfg.dsp.path),
        sparsity=replace(cfg.sparsity, lambda_s=float(lambda_s), refresh=int(refresh),
                         lam=float(lam) if lam is not None else cfg.sparsity.lam),
    )
    cfg = apply_overrides(cfg, list(overrides))
    model = load_model(run_dir)
    train(cfg, out_dir, overwrite=overwrite, resume=resume, device=device, model=model, progress=progress,
          evaluate_at_end=evaluate, log=log)
    return Path(out_dir)


__all__ = ["sparse_modes", "sparse_train"]
