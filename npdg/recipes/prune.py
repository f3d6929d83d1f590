"""The prune pipeline: sparse-train → select → prune physically → fine-tune → cost (docs/method.md §0, §3–§5).

:func:`prune_run` turns a finished run directory into a new run directory holding the pruned model
(``model.safetensors``), the plan (``pruning_plan.json``, replayed by
:func:`npdg.pruning.physical.load_model`, so ``eval --run``, ``cost`` and ``sensitivity`` accept
the directory), ``cost.json`` (``{"before", "after", "ratio"}``), ``prune.json`` (what was done)
and ``config.yaml`` (with the ``prune`` section it was made with). The sparse-training stage (sparse
criteria, ``prune.sparse_iters > 0``) is a run of its own inside the output, ``OUT/sparse``: every
write stays inside the chosen output folder, and the source run is never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from npdg.config import Config, PruneConfig, dump_config, load_config, validate
from npdg.cost import compare, cost_report
from npdg.dsp.model import DSP
from npdg.errors import ConfigError, DataError
from npdg.models import save_model, select_device
from npdg.pruning.physical import load_model, prune_model
from npdg.pruning.selection import PruningPlan, select
from npdg.recipes.dsp import finetune_stylizer
from npdg.recipes.modes import criterion as get_criterion
from npdg.recipes.sparse import sparse_train
from npdg.runs import atomic_write_json, prepare_run_dir
from npdg.train import train as train_loop

#: The demo DSP shipped in the repository (``prune.dsp: auto`` uses it when present).
#: ``prune.units`` → the unit kinds selection may take.
UNIT_KINDS = {"all": ("filter", "head"), "filters": ("filter",), "heads": ("head",)}
DEFAULT_DSP = Path(__file__).resolve().parents[2] / "assets" / "dsp_tiny"
SPARSE_DIR = "sparse"


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune_run` produced."""

    out_dir: Path
    plan: PruningPlan
    cost: dict
    sparse_dir: Path | None
    finetune_iters: int
    warnings: tuple[str, ...] = field(default_factory=tuple)


def resolve_dsp(dsp_dir: str | Path | None) -> Path | None:
    """``"auto"`` → ``assets/dsp_tiny`` if present; None / ``"none"`` → no DSP; a path must exist."""
    if dsp_dir is None or str(dsp_dir).lower() == "none":
        return None
    if str(dsp_dir) == "auto":
        return DEFAULT_DSP if DEFAULT_DSP.is_dir() else None
    path = Path(dsp_dir)
    if not path.is_dir():
        raise DataError(f"DSP directory not found: {path}")
    DSP.load(path)  # a broken DSP fails before the output folder is created
    return path


def check_paths(run_dir: Path, out_dir: Path) -> None:
    """The source run must be a model folder and must not overlap the output (symlinks resolved):
    ``--out`` equal to, containing or inside ``--run`` is refused, so ``--overwrite`` can never
    delete the source."""
    if not (run_dir / "model.safetensors").is_file():
        raise DataError(f"{run_dir} is not a run directory with a model (no model.safetensors)")
    src, out = run_dir.resolve(), out_dir.resolve()
    if out == src:
        raise ConfigError("--out must differ from --run (the source run is never modified)")
    if src.is_relative_to(out):
        raise ConfigError(f"--out {out_dir} contains the source run {run_dir}: choose an output folder outside it")
    if out.is_relative_to(src):
        raise ConfigError(f"--out {out_dir} lies inside the source run {run_dir}: choose an output folder outside it")


def _source_config(run_dir: Path) -> Config:
    path = run_dir / "config.yaml"
    return load_config(path if path.is_file() else None)


def prune_run(run_dir: str | Path, out_dir: str | Path, prune: PruneConfig | None = None, *, device: str = "auto",
              overwrite: bool = False, progress: Callable | None = None,
              log: Callable[[str], None] = print) -> PruneResult:
    """Prune the model of ``run_dir`` into the new run directory ``out_dir`` as ``prune`` says
    (None → the defaults of :class:`npdg.config.PruneConfig`); see the module docstring."""
    p = validate(Config(prune=prune or PruneConfig())).prune
    crit = get_criterion(p.criterion)
    if crit.score == "scores":
        raise ConfigError(f"criterion {p.criterion!r} ranks by per-unit scores: use npdg.pruning.selection.select(scores=...)")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_paths(run_dir, out_dir)
    cfg = _source_config(run_dir)
    dsp = resolve_dsp(p.dsp)
    sparse = crit.sparse_mode is not None and p.sparse_iters > 0
    if sparse and get_criterion(p.criterion).sparse_mode != "slimming" and dsp is None:
        raise ConfigError(f"criterion {p.criterion!r} needs a DSP (--dsp DIR) for its sensitivity probe")
    out = prepare_run_dir(out_dir, overwrite=overwrite, kind="prune")  # the only place --overwrite acts
    warnings: list[str] = []
    source = run_dir
    sparse_dir: Path | None = None
    if sparse:
        sparse_dir = out.root / SPARSE_DIR
        log(f"sparse training ({crit.sparse_mode}, {p.sparse_iters} iterations) → {sparse_dir}")
        ls = p.lambda_s if p.lambda_s is not None else cfg.sparsity.lambda_s
        probe = () if p.probe_images is None else (f"sparsity.probe_images={p.probe_images}",)
        source = sparse_train(run_dir, sparse_dir, crit.sparse_mode, p.sparse_iters, dsp, ls,
                              refresh=cfg.sparsity.refresh if p.refresh is None else p.refresh,
                              lam=cfg.sparsity.lam if p.lam is None else p.lam, device=device, progress=progress,
                              overrides=probe)
    elif crit.sparse_mode is not None and cfg.train.mode != crit.sparse_mode:
        warnings.append(f"criterion {p.criterion!r} without sparse training (--sparse-iters 0) on a {cfg.train.mode!r} "
                        "run: γ is used as it is, not sparse-trained")
        log("warning: " + warnings[-1])

    dense = load_model(source)
    threshold = p.threshold
    plan = select(dense, score=crit.score, label=p.criterion, rate=p.rate, threshold=threshold, round_to=p.round_to,
                  max_layer_ratio=p.max_layer_ratio, seed=p.seed, kinds=UNIT_KINDS[p.units])
    if plan.note:
        warnings.append(plan.note)
        log("note: " + plan.note)
    log(f"pruning {plan.num_pruned['filter']}/{plan.candidates.get('filter', 0)} filter channels and "
        f"{plan.num_pruned['head']}/{plan.candidates.get('head', 0)} heads")
    pruned = prune_model(dense, plan)

    ft_cfg = replace(cfg, train=replace(cfg.train, mode="erm", iters=max(1, p.finetune_iters),
                                        warmup_iters=min(cfg.train.warmup_iters, p.finetune_iters),
                                        lr=p.lr if p.lr is not None else cfg.train.lr),
                     dsp=replace(cfg.dsp, path=str(dsp) if dsp is not None else None), prune=p)
    if p.finetune_iters > 0:
        styl = finetune_stylizer(ft_cfg, pruned, select_device(device))
        log(f"fine-tuning {p.finetune_iters} iterations ({'DSP batches' if styl else 'plain CE'}) → {out_dir}")
        train_loop(ft_cfg, out.root, device=device, model=pruned, batch_transforms=(styl,) if styl else (),
                   progress=progress, evaluate_at_end=False, log=log, run_prepared=True)
    else:
        dump_config(ft_cfg, out.config)
        save_model(pruned, out.weights, extra_meta={"pruned_from": str(run_dir)})
    plan.save(out.root / "pruning_plan.json")

    dev = select_device(device)
    sizes = dict(batches=p.cost_batches, repeats=p.cost_repeats)
    before = cost_report(dense.to(dev), p.cost_size, checkpoint=run_dir / "model.safetensors", **sizes)
    after_model = load_model(out.root, device=dev)  # proves the directory reloads
    after = cost_report(after_model, p.cost_size, checkpoint=out.weights, **sizes)
    cost = compare(before, after)
    atomic_write_json(cost, out.root / "cost.json")
    summary = {
        "source": str(run_dir), "criterion": p.criterion, "rate": p.rate, "threshold": threshold,
        "sparse_iters": p.sparse_iters, "finetune_iters": p.finetune_iters, "dsp": str(dsp) if dsp else None,
        "pruned": plan.num_pruned, "candidates": plan.candidates, "warnings": warnings, "ratio": cost["ratio"],
    }
    atomic_write_json(summary, out.root / "prune.json")
    log(f"GFLOPs {before.gflops:.3f} → {after.gflops:.3f}, params {before.params / 1e6:.2f} M → "
        f"{after.params / 1e6:.2f} M; wrote {out_dir}")
    return PruneResult(out.root, plan, cost, sparse_dir, p.finetune_iters, tuple(warnings))


def result_dict(result: PruneResult) -> dict:
    d = asdict(result)
    d["out_dir"] = str(result.out_dir)
    d["sparse_dir"] = None if result.sparse_dir is None else str(result.sparse_dir)
    d["plan"] = result.plan.to_dict()
    return d


__all__ = ["DEFAULT_DSP", "PruneResult", "check_paths", "prune_run", "resolve_dsp", "result_dict"]
