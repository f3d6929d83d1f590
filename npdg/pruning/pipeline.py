"""The prune pipeline: sparse-train → select → prune physically → fine-tune → cost (METHOD §0, 3–5).

:func:`prune_run` turns a finished run directory into a new run directory holding the pruned model
(``model.safetensors``), the plan (``pruning_plan.json``, replayed by :func:`npdg.models.load_model`
so ``eval --run``, ``cost`` and ``sensitivity`` accept the directory), ``cost.json``
(``{"before", "after", "ratio"}``), ``prune.json`` (what was done) and ``config.yaml``. The sparse
training stage (npdg / slimming, ``sparse_iters > 0``) is a run of its own, kept as ``OUT/sparse``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from npdg.errors import ConfigError, DataError
from npdg.pruning.selection import CRITERIA, PruningPlan, check_rate, select

DEFAULT_DSP = Path(__file__).resolve().parents[2] / "assets" / "dsp_tiny"
SPARSE_CRITERIA = ("npdg", "npdg_unary", "npdg_binary", "slimming")


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune_run` produced."""

    out_dir: Path
    plan: PruningPlan
    cost: dict
    sparse_dir: Path | None
    finetune_iters: int
    warnings: tuple[str, ...] = field(default_factory=tuple)


def _resolve_dsp(dsp_dir: str | Path | None) -> Path | None:
    """``"auto"`` → ``assets/dsp_tiny`` if present; None → no DSP; a path must exist."""
    if dsp_dir == "auto":
        return DEFAULT_DSP if DEFAULT_DSP.is_dir() else None
    if dsp_dir is None:
        return None
    path = Path(dsp_dir)
    if not path.is_dir():
        raise DataError(f"DSP directory not found: {path}")
    return path


def _check_inputs(run_dir: Path, out_dir: Path, criterion: str, rate: float, threshold, overwrite: bool) -> None:
    check_rate(rate)
    if criterion not in CRITERIA + ("npdg_unary", "npdg_binary"):
        raise ConfigError(f"unknown pruning criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float) or threshold <= 0):
        raise ConfigError(f"threshold must be a positive number, got {threshold!r}")
    if not (run_dir / "model.safetensors").is_file():
        raise DataError(f"{run_dir} is not a run directory with a model (no model.safetensors)")
    if out_dir.resolve() == run_dir.resolve():
        raise ConfigError("--out must differ from --run (the source run is never modified)")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"output directory {out_dir} already exists; pass --overwrite to replace it")


def _load_cfg(run_dir: Path):
    from npdg.config import load_config

    path = run_dir / "config.yaml"
    return load_config(path if path.is_file() else None)


def prune_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    criterion: str = "npdg",
    rate: float = 0.3,
    threshold: float | None = None,
    sparse_iters: int = 0,
    finetune_iters: int = 0,
    dsp_dir: str | Path | None = "auto",
    lambda_s: float | None = None,
    lr: float | None = None,
    round_to: int = 8,
    max_layer_ratio: float = 0.9,
    cost_size: tuple[int, int] = (512, 1024),
    cost_batches: tuple[int, ...] = (1,),
    cost_repeats: int = 5,
    device: str = "auto",
    overwrite: bool = False,
    seed: int = 0,
    progress: Callable | None = None,
    log: Callable[[str], None] = print,
) -> PruneResult:
    """Prune the model of ``run_dir`` into the new run directory ``out_dir`` (see module docstring)."""
    from npdg.cost import compare, cost_report
    from npdg.models import load_model, save_model, select_device
    from npdg.pruning.physical import prune_model
    from npdg.runs import prepare_run_dir

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    _check_inputs(run_dir, out_dir, criterion, rate, threshold, overwrite)
    if sparse_iters < 0 or finetune_iters < 0:
        raise ConfigError(f"iteration counts must be ≥ 0 (sparse {sparse_iters}, fine-tune {finetune_iters})")
    cfg = _load_cfg(run_dir)
    dsp = _resolve_dsp(dsp_dir)
    warnings: list[str] = []
    source = run_dir
    sparse_tmp: Path | None = None
    if criterion in SPARSE_CRITERIA and sparse_iters > 0:
        if criterion != "slimming" and dsp is None:
            raise ConfigError(f"criterion {criterion!r} needs a DSP (--dsp DIR) for its sensitivity probe")
        from npdg.pruning.sparsity import sparse_train

        sparse_tmp = out_dir.parent / f".{out_dir.name}.sparse"
        log(f"sparse training ({criterion}, {sparse_iters} iterations) → {sparse_tmp}")
        ls = lambda_s if lambda_s is not None else cfg.sparsity.lambda_s
        source = sparse_train(run_dir, sparse_tmp, criterion, sparse_iters, dsp, ls, refresh=cfg.sparsity.refresh,
                              lam=cfg.sparsity.lam, device=device, progress=progress, overwrite=True)
    elif criterion in SPARSE_CRITERIA and cfg.train.mode not in SPARSE_CRITERIA:
        warnings.append(f"criterion {criterion!r} without sparse training (--sparse-iters 0) on a {cfg.train.mode!r} run: "
                        "γ is used as it is, not sparse-trained")
        log("warning: " + warnings[-1])

    dense = load_model(source)
    select_criterion = "gamma" if criterion in ("npdg_unary", "npdg_binary") else criterion
    plan = select(dense, criterion=select_criterion, rate=rate, threshold=threshold, round_to=round_to,
                  max_layer_ratio=max_layer_ratio, seed=seed)
    plan = replace(plan, criterion=criterion)
    if plan.note:
        warnings.append(plan.note)
        log("note: " + plan.note)
    log(f"pruning {plan.num_pruned['filter']}/{plan.candidates.get('filter', 0)} filter channels and "
        f"{plan.num_pruned['head']}/{plan.candidates.get('head', 0)} heads")
    pruned = prune_model(dense, plan)

    ft_cfg = replace(cfg, train=replace(cfg.train, mode="erm", iters=max(1, finetune_iters),
                                        warmup_iters=min(cfg.train.warmup_iters, finetune_iters),
                                        lr=lr if lr is not None else cfg.train.lr),
                     dsp=replace(cfg.dsp, path=str(dsp) if dsp is not None else None))
    if finetune_iters > 0:
        _finetune(ft_cfg, pruned, out_dir, dsp, device, progress, log)
    else:
        from npdg.config import dump_config

        run = prepare_run_dir(out_dir, overwrite=True)
        dump_config(ft_cfg, run.root / "config.yaml")
        save_model(pruned, run.weights, extra_meta={"pruned_from": str(run_dir)})
    plan.save(out_dir / "pruning_plan.json")

    dev = select_device(device)
    before = cost_report(dense.to(dev), cost_size, batches=cost_batches, repeats=cost_repeats, checkpoint=run_dir / "model.safetensors")
    after_model = load_model(out_dir, device=dev)  # proves the directory reloads
    after = cost_report(after_model, cost_size, batches=cost_batches, repeats=cost_repeats, checkpoint=out_dir / "model.safetensors")
    cost = compare(before, after)
    (out_dir / "cost.json").write_text(json.dumps(cost, indent=2))
    sparse_dir = None
    if sparse_tmp is not None:
        sparse_dir = out_dir / "sparse"
        shutil.move(str(sparse_tmp), str(sparse_dir))
    summary = {
        "source": str(run_dir), "criterion": criterion, "rate": rate, "threshold": threshold,
        "sparse_iters": sparse_iters, "finetune_iters": finetune_iters, "dsp": str(dsp) if dsp else None,
        "pruned": plan.num_pruned, "candidates": plan.candidates, "warnings": warnings, "ratio": cost["ratio"],
    }
    (out_dir / "prune.json").write_text(json.dumps(summary, indent=2))
    log(f"GFLOPs {before.gflops:.3f} → {after.gflops:.3f}, params {before.params / 1e6:.2f} M → {after.params / 1e6:.2f} M; wrote {out_dir}")
    return PruneResult(out_dir, plan, cost, sparse_dir, finetune_iters, tuple(warnings))


def _finetune(cfg, model, out_dir: Path, dsp: Path | None, device: str, progress, log) -> None:
    """Fine-tune the pruned model into ``out_dir`` (CE on [clean, DSP] batches, or plain CE)."""
    from npdg.models import select_device
    from npdg.train import train

    transforms = ()
    if dsp is not None:  # cfg.dsp.path names it; the transform loads it
        from npdg.dsp.model import dsp_batch_transform

        transforms = (dsp_batch_transform(cfg, model, select_device(device)),)
    log(f"fine-tuning {cfg.train.iters} iterations ({'DSP batches' if dsp else 'plain CE'}) → {out_dir}")
    train(cfg, out_dir, overwrite=True, device=device, model=model, batch_transforms=transforms,
          progress=progress, evaluate_at_end=False, log=log)


def result_dict(result: PruneResult) -> dict:
    d = asdict(result)
    d["out_dir"] = str(result.out_dir)
    d["sparse_dir"] = None if result.sparse_dir is None else str(result.sparse_dir)
    d["plan"] = result.plan.to_dict()
    return d


__all__ = ["PruneResult", "prune_run", "result_dict"]
