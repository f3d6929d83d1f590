"""The science protocol of issue #15: does a pruned NPDG model generalize better than the dense one?

Rows, for every seed (docs/method.md §9):

- ``erm``, ``photometric``, ``dsp`` — base trainings of ``--base-iters`` from scratch;
- ``dsp_budget`` — DSP trained for base + sparse + fine-tune iterations: the dense model at the
  same total budget as the pruned pipeline;
- ``npdg``, ``slimming`` — from the ``dsp`` run: ``--sparse-iters`` of sparse training (λ_s
  ``--lambda-s``), prune at ``--rate``, ``--finetune-iters`` of DSP fine-tuning;
- ``l1norm``, ``random`` — from the ``dsp`` run: prune at ``--rate``, then sparse + fine-tune
  iterations of fine-tuning (the same budget);
- ablations (``--rows ablations``, one seed is enough): ``npdg_binary`` (λ = 0), ``npdg_lam0.2``,
  ``npdg_lam0.6``, ``npdg_lam0.8``, ``npdg_unary`` (λ = 1) — the unary/binary mix of the sensitivity
  weights (``npdg`` itself is λ = 0.4) — and ``npdg_r0.1``, ``npdg_r0.2``, ``npdg_r0.4``, which prune
  the ``npdg`` row's sparse-trained model at other rates. They go to ``ablations.md`` and the plot
  ``ablations.png`` (held-out, corruption and source mIoU against λ and r);
- the sparsity-weight study (``--rows lambda_s``): ``npdg_ls0.25``, ``slimming_ls0.25``,
  ``npdg_ls0.1``, ``slimming_ls0.1`` — λ_s a quarter and a tenth of the rule's (``lambda_s.md``).
- the probe study (``--rows probe``): ``npdg_rf4`` (the default, as the control from the same
  base), ``npdg_rf1`` (the first probe's weights throughout),
  ``npdg_rf16`` (16 probes instead of 4) and ``npdg_pi32`` (32 probe images instead of 8) — ``probe.md``.

Every pruned row also records the share of units it pruned per stage (stem, layer1–4 / block1–4,
decoder; the table's second part): the paper notes NPDG prunes mostly shallow layers.

Every run is scored on the ``test`` split, ``--scenes`` scenes per domain: the 6 held-out style
domains, the source, ``suburb`` (content shift, not averaged) and the 6 corruption domains of
``npdg.data.corruptions`` (a second, independent shift never used to choose anything). Per-scene
confusion matrices are kept (``scenes.npz`` in the run folder, copied to ``--results``/``<row>_s<seed>.npz``
so the table can be remade without the run folders), so the table gives, next to the
seed std, a paired bootstrap 95 % interval over scenes of each row minus ``dsp_budget``
(``npdg.significance``); ``--reference ROW`` takes the intervals against another row instead (say
``--table-only --reference slimming``: npdg − slimming) and writes ``table_vs_<ROW>.md``. Each run's figures go to ``--results``/``<row>_s<seed>.json`` (kept in the
repository): per-domain mIoU, the means, GFLOPs and parameters at 512×1024 (``npdg cost``), CPU
latency, the spread of BN |γ|, and the wall and CPU time of the training command (a resumed run
counts only its last part).

Resumable: a finished run (its results JSON present) is skipped; an interrupted training resumes
from its last checkpoint; a prune row that finished but was not scored is scored, not made again. A base the prune rows need whose run folder is gone (a fresh machine) is
retrained, and the log says whether the retraining reproduced its recorded result. Runs go under ``--out`` (git-ignored). Presets:

- ``cpu`` (default): 64×128, base 800, sparse 200, fine-tune 200 iterations, 3 seeds — about
  6 hours on the 2-core CPU (~2 h a seed: an erm step at 64×128 takes ~0.57 s there with the
  renderer, a DSP step ~3× that; the measured time of every run is in its JSON);
- ``gpu``: 128×256, base 3000, sparse 750, fine-tune 750 (several times the CPU preset), the main rows (dsp, dsp_budget, npdg,
  slimming, l1norm), the 3 seeds as 3 concurrent processes with 4 loader workers each — one command
  for a GPU machine with 16 cores;
- ``smoke``: 64×128, 6 + 3 + 3 iterations, 1 seed, 4 scenes — checks the whole pipeline in minutes;
- ``cpu_mitb0``: the ``cpu`` preset for SegFormer MiT-B0 (``configs/demo/segformer_mitb0.yaml``),
  pruning attention heads only (``--units heads``, as the zoo's ``mitb0-npdg``).

    python bench/protocol.py [--preset cpu] [--seeds 0 1 2] [--rows ...] [--out runs/protocol]
    python bench/protocol.py --preset cpu --seeds 0 --rows ablations
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from npdg.data.corruptions import CORRUPTIONS, DISTINCT, CorruptedDataset  # noqa: E402
from npdg.data.synthetic import SyntheticDataset, domain_names  # noqa: E402
from npdg.recipes.modes import CRITERIA  # noqa: E402
from npdg.runs import atomic_write_json, atomic_write_text  # noqa: E402
from npdg.significance import mean_miou, miou_of, paired_bootstrap, scene_confusions  # noqa: E402

PY = [sys.executable, "-m", "npdg"]
PRESETS = {
    "cpu": dict(size="64x128", base_iters=800, sparse_iters=200, finetune_iters=200, scenes=50, seeds=[0, 1, 2]),
    "gpu": dict(size="128x256", base_iters=3000, sparse_iters=750, finetune_iters=750, scenes=100, seeds=[0, 1, 2],
                rows=["dsp", "dsp_budget", "npdg", "slimming", "l1norm"], parallel=3, workers=4),
    "smoke": dict(size="64x128", base_iters=6, sparse_iters=3, finetune_iters=3, scenes=4, seeds=[0]),
    # the Transformer table (issue #15): SegFormer MiT-B0, attention heads pruned (as the zoo's mitb0-npdg)
    "cpu_mitb0": dict(size="64x128", base_iters=800, sparse_iters=200, finetune_iters=200, scenes=50, seeds=[0, 1, 2],
                      config="configs/demo/segformer_mitb0.yaml", units="heads"),
}
TRAIN_ROWS = ("erm", "photometric", "dsp", "dsp_budget")
PRUNE_ROWS = ("npdg", "slimming", "l1norm", "random")
SPARSE_CRITERIA = tuple(c.name for c in CRITERIA.values() if c.sparse_mode)  # npdg, npdg_unary, npdg_binary, slimming
#: The ablations (one seed is enough, issue #15): λ mixing unary (λ = 1, ``npdg_unary``) and binary
#: (λ = 0, ``npdg_binary``) sensitivity, and the rate r. An ``_r`` row prunes the ``npdg`` row's own
#: sparse-trained model at another rate (same sparse phase, only the fine-tune is new).
LAMBDA_ROWS = ("npdg_binary", "npdg_lam0.2", "npdg_lam0.6", "npdg_lam0.8", "npdg_unary")
RATE_ROWS = ("npdg_r0.1", "npdg_r0.2", "npdg_r0.4")
ABLATION_ROWS = LAMBDA_ROWS + RATE_ROWS
#: The sparsity-weight study (``--rows lambda_s``): npdg and slimming with λ_s a quarter and a tenth of
#: the γ-shrink rule's (``_lsX`` scales the rule's λ_s by X; a sparse criterion only). Does a gentler
#: sparse phase keep the source the full-strength one loses, and does npdg then gain on held-out?
LS_ROWS = ("npdg_ls0.25", "slimming_ls0.25", "npdg_ls0.1", "slimming_ls0.1")
#: The probe study (``--rows probe``): how often the sparse training re-probes the sensitivity weights
#: (``_rfN``: N times; the default is 4, ``_rf1`` keeps the first probe's weights throughout) and on how
#: many source images (``_piN``; default 8) — does a fresher or larger probe make npdg prune better?
#: ``npdg_rf4`` is the default again, the control made in the same sitting from the same base.
PROBE_ROWS = ("npdg_rf4", "npdg_rf1", "npdg_rf16", "npdg_pi32")
ROW_GROUPS = {"ablations": ABLATION_ROWS, "lambda_s": LS_ROWS, "probe": PROBE_ROWS}
ROW_PATTERN = re.compile(r"^(?P<crit>npdg_unary|npdg_binary|npdg|slimming|l1norm|random)"
                         r"(?:_lam(?P<lam>[01](?:\.\d+)?))?(?:_r(?P<rate>0\.\d+))?(?:_ls(?P<ls>\d+(?:\.\d+)?))?"
                         r"(?:_rf(?P<refresh>\d+))?(?:_pi(?P<probe>\d+))?$")
HELDOUT = tuple(domain_names("heldout"))
CORRUPT = tuple(f"corrupt_{c}" for c in CORRUPTIONS)
CORRUPT_DISTINCT = tuple(f"corrupt_{c}" for c in DISTINCT)
#: The row every other row's bootstrap interval is taken against unless ``--reference`` names another.
REFERENCE = "dsp_budget"
#: The per-scene confusions ``score`` writes into a run folder (and copies next to the results JSON).
SCENES = "scenes.npz"


def reference_of(args) -> str:
    """The row the intervals compare against: ``--reference`` (default ``dsp_budget``, the dense model
    trained as long as the pruned rows, docs/method.md)."""
    return getattr(args, "reference", None) or REFERENCE


def file_for(name: str, args) -> Path:
    """``--results``/``name``, or ``<stem>_vs_<ROW>.md`` under another ``--reference``: the committed
    tables against dsp_budget are never overwritten by a table against another row."""
    reference = reference_of(args)
    return args.results / (name if reference == REFERENCE else name.removesuffix(".md") + f"_vs_{reference}.md")


def parse_row(row: str) -> tuple[str, float | None, float | None]:
    """(criterion, λ or None, rate or None) of a prune row such as ``npdg``, ``npdg_lam0.2``, ``npdg_r0.1``."""
    m = ROW_PATTERN.match(row)
    if m is None or row in TRAIN_ROWS:
        raise ValueError(f"not a prune row: {row!r}")
    lam = None if m["lam"] is None else float(m["lam"])
    rate = None if m["rate"] is None else float(m["rate"])
    if (lam is not None or rate is not None) and m["crit"] != "npdg" or lam is not None and rate is not None:
        raise ValueError(f"{row!r}: _lam and _r vary npdg, one at a time")
    if m["ls"] is not None and (lam is not None or rate is not None or m["crit"] not in SPARSE_CRITERIA
                                or not 0 < float(m["ls"]) <= 10):
        raise ValueError(f"{row!r}: _lsX scales λ_s (0 < X <= 10) of a sparse criterion, alone")
    probe = [k for k in ("refresh", "probe") if m[k] is not None]
    if probe and (len(probe) > 1 or lam is not None or rate is not None or m["ls"] is not None
                  or not m["crit"].startswith("npdg") or m["probe"] is not None and int(m["probe"]) < 1):
        raise ValueError(f"{row!r}: _rfN (probe refreshes) and _piN (probe images >= 1) vary an npdg criterion, alone")
    return m["crit"], lam, rate


def probe_flags(row: str) -> list[str]:
    """The ``npdg prune`` flags of an ``_rfN`` / ``_piN`` row (none for every other row)."""
    m = ROW_PATTERN.match(row)
    if m is None:
        return []
    return ([] if m["refresh"] is None else ["--refresh", m["refresh"]]) + \
        ([] if m["probe"] is None else ["--probe-images", m["probe"]])


def lambda_scale(row: str) -> float:
    """The factor an ``_lsX`` row applies to the protocol's λ_s (1 for every other row)."""
    m = ROW_PATTERN.match(row)
    return 1.0 if m is None or m["ls"] is None else float(m["ls"])


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(cmd: list[str]) -> dict[str, float]:
    """Run one npdg command; its wall time and the CPU time of its process (user + system, all
    threads — unaffected by a pause with ``kill -STOP``, unlike the wall time)."""
    print("$ " + " ".join(cmd), flush=True)
    t0, c0 = time.perf_counter(), _children_cpu()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": _children_cpu() - c0}


def train(row: str, seed: int, args, out: Path) -> dict[str, float]:
    iters = args.base_iters + (args.sparse_iters + args.finetune_iters if row == "dsp_budget" else 0)
    mode = "dsp" if row == "dsp_budget" else row
    cmd = PY + ["train", "--config", args.config, "--out", str(out), "--no-progress", "--no-eval", "--device", args.device,
                "--set", f"train.mode={mode}", "--set", f"train.seed={seed}", "--set", f"train.iters={iters}",
                "--set", f"data.size={args.size}", "--set", f"train.crop={args.size}"]
    if mode == "dsp":
        cmd += ["--set", f"dsp.path={args.dsp}", "--set", f"dsp.step_size={dsp_step(seed, args)}"]
    for kv in args.set:
        cmd += ["--set", kv]
    resume = (out / "checkpoints" / "last.pt").is_file()
    return run(cmd + (["--resume"] if resume else ["--overwrite"]))


def prune(row: str, seed: int, args, out: Path, base: Path) -> dict[str, float]:
    """Sparse-train (sparse criteria), prune and fine-tune ``base`` as ``row`` says; an ``_r`` row
    starts from the ``npdg`` row's sparse-trained model (its sparse phase is not repeated)."""
    crit, lam, rate = parse_row(row)
    sparse = crit in SPARSE_CRITERIA and rate is None
    cmd = PY + ["prune", "--run", str(base), "--out", str(out), "--criterion", crit,
                "--rate", str(args.rate if rate is None else rate),
                "--finetune-iters", str(args.finetune_iters + (args.sparse_iters if crit not in SPARSE_CRITERIA else 0)),
                "--seed", str(seed), "--dsp", args.dsp, "--cost-size", "512x1024", "--device", args.device,
                "--overwrite", "--no-progress", "--units", args.units]
    if sparse:
        cmd += ["--sparse-iters", str(args.sparse_iters), "--lambda-s", str(lambda_s(args) * lambda_scale(row))]
    if lam is not None:
        cmd += ["--lam", str(lam)]
    cmd += probe_flags(row)
    if finished_as(out, cmd):  # pruned before an interruption, never scored: score it, do not redo it
        print(f"{out.name}: a finished prune run with these settings is there; scoring it", flush=True)
        return {"wall_s": None, "cpu_s": None}
    (out / SCENES).unlink(missing_ok=True)  # the protocol's own file, which npdg prune --overwrite keeps
    return run(cmd)


def finished_as(out: Path, cmd: list[str]) -> bool:
    """Whether ``out`` holds a finished ``npdg prune`` run of ``cmd``: its summary and model written,
    its source that of ``--run`` and its recorded prune section the one ``cmd``'s flags make (parsed
    by the command's own parser and ``npdg.cli.prune.prune_config``)."""
    from npdg.cli.prune import prune_config, register
    from npdg.config import load_config

    if not all((out / f).is_file() for f in ("prune.json", "model.safetensors", "config.yaml")):
        return False
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(cmd[len(PY):])
    return (load_config(out / "config.yaml").prune == prune_config(args)
            and json.loads((out / "prune.json").read_text()).get("source") == str(args.run))


def base_of(row: str, seed: int, args) -> Path:
    """The run a prune row starts from (made first when missing): ``dsp``, or for an ``_r`` row the
    ``npdg`` row's sparse-trained model."""
    if parse_row(row)[2] is not None:
        sparse = args.out / f"npdg_s{seed}" / "sparse"
        if not (args.results / f"npdg_s{seed}.json").is_file() or trained_to(sparse) != args.sparse_iters:
            do_row("npdg", seed, args, rebuild=True)
        return sparse
    base = args.out / f"dsp_s{seed}"
    if not (args.results / f"dsp_s{seed}.json").is_file() or trained_to(base) != args.base_iters:
        do_row("dsp", seed, args, rebuild=True)
    return base


def trained_to(run: Path) -> int | None:
    """The iteration the weights of ``run`` were saved at (``model.safetensors`` metadata), or None
    without weights. The training loop refreshes that file at every checkpoint, so its presence alone
    does not say a training finished: an interrupted base must be resumed, not pruned."""
    from safetensors import safe_open

    path = run / "model.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        it = (f.metadata() or {}).get("iter")
    return int(it) if it is not None and it.isdigit() else None


def sparse_of(out: Path, crit: str) -> dict:
    """λ_s and the λ the sparse phase of run ``out`` used (from its ``sparse/config.yaml``; the
    ``npdg_unary`` / ``npdg_binary`` modes force λ), or nothing for a criterion without one."""
    from npdg.config import load_config
    from npdg.recipes.modes import mode

    path = out / "sparse" / "config.yaml"
    if crit not in SPARSE_CRITERIA or not path.is_file():
        return {}
    s = load_config(path).sparsity
    return {"lambda_s": s.lambda_s, **({"lam": mode(crit).lam_for(s.lam)} if crit != "slimming" else {})}


def stage_shares(out: Path) -> dict[str, float] | None:
    """Share of the candidate units pruned in each stage of the model (``stem``, ``layer1``…, ``decoder``),
    from the run's ``pruning_plan.json`` — where the criterion prunes (the paper: mostly shallow layers)."""
    from npdg.pruning.selection import PruningPlan

    path = out / "pruning_plan.json"
    if not path.is_file():
        return None
    pruned: dict[str, int] = {}
    size: dict[str, int] = {}
    for lp in PruningPlan.load(path).layers:
        stage = stage_of(lp.name)
        pruned[stage] = pruned.get(stage, 0) + len(lp.pruned)
        size[stage] = size.get(stage, 0) + lp.size
    return {s: pruned[s] / size[s] for s in size if size[s]}


def stage_of(layer: str) -> str:
    """The stage a unit layer belongs to: ``encoder.layer2.0.bn1`` → ``layer2``; ``encoder.block1…`` → ``block1``;
    the encoder's first BN → ``stem``; anything outside the encoder → ``decoder``."""
    parts = layer.split(".")
    parts = parts[1:] if parts[0] == "net" else parts  # npdg models wrap the smp one as ``net``
    if parts[0] != "encoder":
        return "decoder"
    named = next((p for p in parts[1:] if re.fullmatch(r"(layer|block)\d+", p)), None)
    return named or "stem"


def lambda_s(args) -> float:
    """The sparsity weight: given, or the γ-shrink rule 0.05 × 60 / sparse iterations."""
    return 0.05 * 60 / max(1, args.sparse_iters) if args.lambda_s == "auto" else float(args.lambda_s)


def dsp_step(seed: int, args) -> float:
    """The DSP ascent step: given, or chosen by the zoo's source-only rule against this seed's erm run
    (recorded in ``--results``/``dsp_step_s<seed>.json``)."""
    if args.dsp_step != "auto":
        return float(args.dsp_step)
    path = args.results / f"dsp_step_s{seed}.json"
    if not path.is_file():
        from npdg.recipes.zoo import choose_ascent_step

        if not (args.results / f"erm_s{seed}.json").is_file():
            do_row("erm", seed, args)
        h, w = (int(v) for v in args.size.split("x"))
        choice = choose_ascent_step(args.out / f"erm_s{seed}", device=args.device, size=(h, w), dsp_dir=ROOT / args.dsp)
        args.results.mkdir(parents=True, exist_ok=True)
        atomic_write_json(choice, path)
    return float(json.loads(path.read_text())["chosen"])


def gamma_spread(model) -> dict[str, float]:
    """Mean and std of |γ| over every BN unit: how far training moved γ from their init of 1."""
    import torch

    g = torch.cat([m.weight.detach().abs().flatten() for m in model.modules()
                   if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.weight is not None])
    return {"gamma_abs_mean": float(g.mean()), "gamma_abs_std": float(g.std())}


def score(out: Path, args) -> dict:
    """Per-scene confusions of every domain (saved to ``scenes.npz``), per-domain mIoU and costs."""
    import torch

    from npdg.pruning.physical import load_model

    torch.manual_seed(0)
    model = load_model(out / "model.safetensors").eval()
    h, w = (int(v) for v in args.size.split("x"))
    device = "cuda" if args.device in ("cuda", "auto") and torch.cuda.is_available() else "cpu"
    scenes = {}
    for d in ("source", *HELDOUT, "suburb"):
        scenes[d] = scene_confusions(model, SyntheticDataset(d, "test", (h, w), length=args.scenes), 19, device=device)
    for c in CORRUPTIONS:
        scenes[f"corrupt_{c}"] = scene_confusions(model, CorruptedDataset(c, "test", (h, w), args.scenes), 19, device=device)
    np.savez_compressed(out / SCENES, **scenes)
    cost_path = out / "cost.json"
    if not cost_path.is_file() or "after" not in json.loads(cost_path.read_text()):
        run(PY + ["cost", "--run", str(out), "--size", "512x1024", "--batches", "1", "--repeats", "3",
                  "--json", str(out / "cost_dense.json")])
        after = json.loads((out / "cost_dense.json").read_text())
    else:
        after = json.loads(cost_path.read_text())["after"]
    return {
        "miou": {d: miou_of(s.sum(0)) for d, s in scenes.items()},
        "heldout_mean": mean_miou(scenes, HELDOUT),
        "corrupt_mean": mean_miou(scenes, CORRUPT),
        "gflops": after["gflops"], "params": after["params"],
        "latency_ms_b1": after.get("latency_ms", {}).get("batch1"),
        **gamma_spread(model),
    }


def do_row(row: str, seed: int, args, rebuild: bool = False) -> dict:
    """Train (or prune) and score one row for one seed, or return its finished result. ``rebuild``
    retrains a finished row whose run folder is gone (a base the prune rows need, on a fresh machine);
    the new result replaces the old, and whether the retraining reproduced it is printed."""
    path = args.results / f"{row}_s{seed}.json"
    old = json.loads(path.read_text()) if path.is_file() else None
    if old is not None and not rebuild:
        return old
    out = args.out / f"{row}_s{seed}"
    if row in TRAIN_ROWS:
        spent = train(row, seed, args, out)
    else:
        spent = prune(row, seed, args, out, base_of(row, seed, args))
    result = {"row": row, "seed": seed, "settings": settings_of(args), "train_wall_s": spent["wall_s"],
              "train_cpu_s": spent["cpu_s"], **score(out, args)}
    if row in ("dsp", "dsp_budget"):
        result["dsp_step"] = dsp_step(seed, args)
    if row not in TRAIN_ROWS:
        crit, lam, rate = parse_row(row)
        result.update(criterion=crit, rate=args.rate if rate is None else rate, stages=stage_shares(out))
        result.update(sparse_of(out if rate is None else base_of(row, seed, args).parent, crit))
    args.results.mkdir(parents=True, exist_ok=True)
    _keep_scenes(out, path.with_suffix(".npz"))
    atomic_write_json(result, path)
    if old is not None:
        print(f"{row} s{seed} rebuilt: held-out {100 * old['heldout_mean']:.2f} before, "
              f"{100 * result['heldout_mean']:.2f} now", flush=True)
    return result


def _keep_scenes(out: Path, dest: Path) -> None:
    """Copy the run's per-scene confusions next to its results JSON (committed, a few tens of kB), so the
    bootstrap intervals can be recomputed without the git-ignored run folders."""
    tmp = dest.with_suffix(".tmp.npz")
    shutil.copyfile(out / SCENES, tmp)
    tmp.replace(dest)


def sparse_phase(rows: list[str], seeds: list[int], args) -> str:
    """Markdown: each sparse row's model right after its sparse phase (dense, before pruning and
    fine-tuning) against the row's final model and the reference row (``dsp_budget``) — does the sparse phase itself cost
    the source, or the pruning? Scores ``<row>_s<seed>/sparse`` (kept as ``<row>_s<seed>.sparse.json``
    and ``.sparse.npz``); a row whose sparse folder is gone and was never scored is skipped."""
    reference = reference_of(args)
    lines = ["| row | seed | λ_s | held-out: sparse phase → final | source: sparse phase → final | "
             f"corruptions: sparse phase → final | BN \\|γ\\| std after the sparse phase | {reference} held-out / source |",
             "|---|---|---|---|---|---|---|---|"]
    for seed in seeds:
        ref = args.results / f"{reference}_s{seed}.json"
        for row in rows:
            final = args.results / f"{row}_s{seed}.json"
            crit, _, rate = parse_row(row) if row not in TRAIN_ROWS else (row, None, None)
            if crit not in SPARSE_CRITERIA or rate is not None or not final.is_file() or not ref.is_file():
                continue
            path, folder = args.results / f"{row}_s{seed}.sparse.json", args.out / f"{row}_s{seed}" / "sparse"
            if not path.is_file():
                if not (folder / "model.safetensors").is_file():
                    continue
                result = score(folder, args)
                _keep_scenes(folder, path.with_suffix(".npz"))
                atomic_write_json(result, path)
            a, b, r = (json.loads(f.read_text()) for f in (path, final, ref))
            lines.append(f"| {row} | {seed} | {b.get('lambda_s', float('nan')):.4g} | "
                         f"{100 * a['heldout_mean']:.1f} → {100 * b['heldout_mean']:.1f} | "
                         f"{100 * a['miou']['source']:.1f} → {100 * b['miou']['source']:.1f} | "
                         f"{100 * a['corrupt_mean']:.1f} → {100 * b['corrupt_mean']:.1f} | {a['gamma_abs_std']:.3f} | "
                         f"{100 * r['heldout_mean']:.1f} / {100 * r['miou']['source']:.1f} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def settings_of(args) -> dict:
    keys = ("preset", "size", "base_iters", "sparse_iters", "finetune_iters", "rate", "dsp", "scenes", "config", "units",
            "set")
    return {**{k: getattr(args, k) for k in keys}, "lambda_s": lambda_s(args), "lambda_s_given": args.lambda_s,
            "dsp_step_given": args.dsp_step}


def ms(vals: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± sample std`` (ddof 1) of ``scale × vals``; the value alone for one seed."""
    v = scale * np.asarray(vals, dtype=float)
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}" if len(v) > 1 else f"{v[0]:.{digits}f}"


def table(results: dict[str, list[dict]], args) -> str:
    """Markdown: per-domain mean ± std over seeds (sample std, ddof 1), the means, the bootstrap interval
    against the reference row (``--reference``, default dsp_budget), costs (GFLOPs and batch-1 CPU latency
    at the cost size, as ``npdg cost`` measured)."""
    reference = reference_of(args)
    cols = ["source", *HELDOUT, "held-out", f"Δ vs {reference} [95 % CI]", "corruptions", "Δ corr. [95 % CI]",
            "suburb", "GFLOPs", "params (M)", "CPU ms (b1)", "BN \\|γ\\| std"]
    lines = ["| row | seeds | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]

    ref = results.get(reference) or [json.loads(f.read_text()) for s in args.seeds  # e.g. for the ablations
                                      if (f := args.results / f"{reference}_s{s}.json").is_file()]
    for row, rs in results.items():
        if not rs:
            continue
        cells = [ms([r["miou"][d] for r in rs]) for d in ("source", *HELDOUT)]
        cells.append(ms([r["heldout_mean"] for r in rs]))
        cells.append(_ci(row, rs, ref, HELDOUT, args))
        cells.append(ms([r["corrupt_mean"] for r in rs]))
        cells.append(_ci(row, rs, ref, CORRUPT, args))
        cells.append(ms([r["miou"]["suburb"] for r in rs]))
        cells.append(ms([r["gflops"] for r in rs], 1.0, 2))
        cells.append(ms([r["params"] / 1e6 for r in rs], 1.0, 2))
        cells.append(ms([r.get("latency_ms_b1", float("nan")) for r in rs], 1.0, 0))
        cells.append(ms([r["gamma_abs_std"] for r in rs], 1.0, 3))
        lines.append(f"| {row} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def corruption_table(results: dict[str, list[dict]]) -> str:
    """Markdown: mIoU of every corruption domain (the second, independent shift), mean ± std over seeds;
    the mean of the six (``corrupt_mean``, as recorded) and of the five distinct ones (``hue`` repeats
    ``channels``: npdg.data.corruptions)."""
    lines = ["| row | seeds | " + " | ".join(c.removeprefix("corrupt_") for c in CORRUPT)
             + " | mean of 6 | mean of the 5 distinct (no hue) |", "|---" * (len(CORRUPT) + 4) + "|"]
    for row, rs in results.items():
        if rs:
            cells = [ms([r["miou"][d] for r in rs]) for d in CORRUPT] + [ms([r["corrupt_mean"] for r in rs])]
            cells.append(ms([np.mean([r["miou"][d] for d in CORRUPT_DISTINCT]) for r in rs]))
            lines.append(f"| {row} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def stage_table(results: dict[str, list[dict]], args) -> str:
    """Markdown: the share of units each pruned row removed per stage, mean over the seeds that know it
    (where it prunes; read from the run folder's plan for a results JSON written before it was recorded)."""
    for rs in results.values():
        for x in rs:
            if "stages" not in x and x["row"] not in TRAIN_ROWS:
                x["stages"] = stage_shares(args.out / f"{x['row']}_s{x['seed']}")
    # the seeds whose plan is known (a JSON of the first sittings whose run folder is gone has none)
    rows = {r: kept for r, rs in results.items() if (kept := [x for x in rs if x.get("stages")])}
    stages = sorted({s for rs in rows.values() for x in rs for s in x["stages"]},
                    key=lambda s: (s != "stem", s == "decoder", s))
    if not rows:
        return ""
    lines = ["| row | seeds | " + " | ".join(stages) + " |", "|---" * (len(stages) + 2) + "|"]
    for r, rs in rows.items():
        cells = [f"{100 * np.mean([x['stages'].get(s, np.nan) for x in rs]):.0f} %" for s in stages]
        lines.append(f"| {r} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ablation_plot(args, seed: int, path: Path) -> Path | None:
    """The paper's two ablation curves on the embedded benchmark, one seed: held-out, corruption and
    source mIoU of npdg against λ (0 = binary only, 1 = unary only) and against r, with the dense
    ``dsp_budget`` model as a line; written with matplotlib (a captum dependency) to ``path``."""
    def load(row: str) -> dict | None:
        f = args.results / f"{row}_s{seed}.json"
        if not f.is_file():
            return None
        r = json.loads(f.read_text())
        if row != REFERENCE and "rate" not in r:  # a JSON written before rate and λ were recorded
            crit, _, rate = parse_row(row)
            r.update(rate=r["settings"]["rate"] if rate is None else rate,
                     **sparse_of(args.out / f"{row}_s{seed}", crit))
        return r

    ref = load(REFERENCE)
    lam = sorted((r["lam"], r) for r in filter(None, map(load, ("npdg", *LAMBDA_ROWS))) if "lam" in r)
    rate = sorted((r["rate"], r) for r in filter(None, map(load, ("npdg", *RATE_ROWS))))
    if len(lam) < 2 and len(rate) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharey="row", sharex="col")
    rows = ((("heldout_mean", "held-out styles (mean of 6)", "C3"), ("corrupt_mean", "corruptions (mean of 6)", "C0")),
            (("source", "source", "C7"),))
    for i, keys in enumerate(rows):
        for ax, pts in ((axes[i, 0], lam), (axes[i, 1], rate)):
            for key, label, colour in keys:
                ys = [100 * (r["miou"]["source"] if key == "source" else r[key]) for _, r in pts]
                ax.plot([x for x, _ in pts], ys, "o-", color=colour, label=label)
                if ref is not None:
                    ax.axhline(100 * (ref["miou"]["source"] if key == "source" else ref[key]), color=colour, ls=":",
                               lw=1)
            ax.grid(alpha=0.3)
        axes[i, 0].set_ylabel("mIoU (%), test split")
        axes[i, 0].legend(fontsize=8, loc="best")
    axes[1, 0].set_xlabel("λ (0 = binary only, 1 = unary only)")
    axes[1, 1].set_xlabel("rate r")
    fig.suptitle(f"npdg ablations, seed {seed}, {args.preset} preset (dotted: dense dsp_budget, equal iterations)",
                 fontsize=10)
    return _save_figure(fig, path)


def _save_figure(fig, path: Path) -> Path:
    """Lay out, write atomically (a temporary file, then a rename) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def gamma_plot(results: dict[str, list[dict]], args, path: Path) -> Path | None:
    """Held-out (and source) mIoU against the spread of BN |γ| (std over every BN channel of the final
    model), one point per run: do γ that spread out go with better generalization? (issue #15: a base
    trained from scratch leaves γ at 1 ± 0.01, so a γ ranking there ranks noise.)"""
    pts = [(row, r) for row, rs in results.items() for r in rs if r.get("gamma_abs_std") is not None]
    if len(pts) < 2:
        return None
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for i, row in enumerate(dict.fromkeys(row for row, _ in pts)):
        mine = [r for rw, r in pts if rw == row]
        x = [r["gamma_abs_std"] for r in mine]
        axes[0].scatter(x, [100 * r["heldout_mean"] for r in mine], color=f"C{i}", label=row)
        axes[1].scatter(x, [100 * r["miou"]["source"] for r in mine], color=f"C{i}")
    for ax, title in zip(axes, ("held-out styles (mean of 6)", "source")):
        ax.set_xscale("log")
        ax.set_xticks([0.01, 0.02, 0.04, 0.08], ["0.01", "0.02", "0.04", "0.08"])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("std of BN |γ| in the final model (log)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mIoU (%), test split")
    axes[0].legend(fontsize=8, ncol=2)
    fig.suptitle(f"γ spread against mIoU, {args.preset} preset, one point per run and seed", fontsize=10)
    return _save_figure(fig, path)


def _scenes_path(row: str, seed: int, args) -> Path | None:
    """The run's per-scene confusions: the copy kept next to its JSON, else the run folder's, else None."""
    for path in (args.results / f"{row}_s{seed}.npz", args.out / f"{row}_s{seed}" / SCENES):
        if path.is_file():
            return path
    return None


def _scenes(row: str, seed: int, args) -> dict[str, np.ndarray]:
    with np.load(_scenes_path(row, seed, args)) as z:
        return {k: z[k] for k in z.files}


def _ci(row: str, rs: list[dict], ref: list[dict], domains, args) -> str:
    """``row − reference`` mean mIoU over ``domains`` with its paired bootstrap 95 % interval over the
    scenes of the seeds both have (npdg.significance.paired_bootstrap)."""
    reference = reference_of(args)
    if row == reference or not ref:
        return "–"
    seeds = sorted({r["seed"] for r in rs} & {r["seed"] for r in ref})
    here = [s for s in seeds if _scenes_path(row, s, args) and _scenes_path(reference, s, args)]
    if not here:
        return "(scenes not here)"
    a = [_scenes(row, s, args) for s in here]
    b = [_scenes(reference, s, args) for s in here]
    ci = paired_bootstrap(a, b, domains, n_boot=args.boot)
    text = f"{100 * ci['diff']:+.1f} [{100 * ci['low']:+.1f}, {100 * ci['high']:+.1f}]"
    # runs scored before their scenes were kept, whose run folders are gone: say which seeds the interval has
    return text if here == seeds else text + f" (seed{'s' if len(here) > 1 else ''} {', '.join(map(str, here))})"


def _parallel(args) -> None:
    """Each seed in its own process (``--seeds S --parallel 1``), ``args.parallel`` at a time."""
    argv = list(sys.argv[1:])
    base = [sys.executable, str(Path(__file__).resolve())]
    strip = {"--seeds", "--parallel"}
    kept, skip = [], False
    for a in argv:
        if skip and not a.startswith("--"):
            continue
        skip = a in strip
        if not skip:
            kept.append(a)
    pending = [base + kept + ["--seeds", str(s), "--parallel", "1"] for s in args.seeds]
    running: list[subprocess.Popen] = []
    while pending or running:
        while pending and len(running) < args.parallel:
            cmd = pending.pop(0)
            print("$ " + " ".join(cmd), flush=True)
            running.append(subprocess.Popen(cmd, cwd=ROOT))
        time.sleep(2)
        for p in [p for p in running if p.poll() is not None]:
            running.remove(p)
            if p.returncode:
                sys.exit(f"error: a seed's process failed ({p.returncode}): {' '.join(p.args)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=list(PRESETS), default="cpu")
    ap.add_argument("--rows", nargs="+")
    ap.add_argument("--parallel", type=int, help="run the seeds as this many concurrent processes (GPU)")
    ap.add_argument("--workers", type=int, help="data-loader worker processes of every training")
    ap.add_argument("--seeds", nargs="+", type=int)
    ap.add_argument("--size")
    ap.add_argument("--base-iters", type=int)
    ap.add_argument("--sparse-iters", type=int)
    ap.add_argument("--finetune-iters", type=int)
    ap.add_argument("--scenes", type=int, help="test scenes per domain")
    ap.add_argument("--rate", type=float, default=0.3)
    ap.add_argument("--lambda-s", default="auto",
                    help="sparsity weight; auto = 0.05 × 60 / sparse iterations (a γ with w̃ = 1 shrinks by ≈ 0.25 over "
                         "the sparse phase, the rule that gave 0.05 for 60 iterations; no held-out data)")
    ap.add_argument("--dsp", default="assets/dsp_tiny")
    ap.add_argument("--dsp-step", default="auto",
                    help="DSP ascent step size; auto = npdg.recipes.zoo.choose_ascent_step against the seed's erm run "
                         "(source val scenes only)")
    ap.add_argument("--config", help="the base trainings' config (default configs/demo/deeplabv3plus_r18.yaml)")
    ap.add_argument("--units", choices=["all", "filters", "heads"], help="which units the pruned rows prune (default all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra overrides of every training")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--reference", default=REFERENCE,
                    help="the row the Δ columns and their intervals compare against (default dsp_budget); another "
                         "reference writes table_vs_<row>.md and leaves table.md alone")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "protocol")
    ap.add_argument("--results", type=Path, help="per-run JSONs (default bench/results/protocol/<preset>)")
    ap.add_argument("--table-only", action="store_true", help="tabulate the finished runs, train nothing")
    ap.add_argument("--sparse-phase", action="store_true",
                    help="also score each sparse row's model right after its sparse phase (before pruning) and "
                         "tabulate it against the final model (sparse_phase.md)")
    args = ap.parse_args()
    defaults = {"rows": [*TRAIN_ROWS, *PRUNE_ROWS], "parallel": 1, "workers": None,
                "config": "configs/demo/deeplabv3plus_r18.yaml", "units": "all", **PRESETS[args.preset]}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.workers:
        args.set = [f"train.num_workers={args.workers}", *args.set]
    args.results = args.results or ROOT / "bench" / "results" / "protocol" / args.preset
    args.out = args.out / args.preset
    group = args.rows[0] if len(args.rows) == 1 and args.rows[0] in ROW_GROUPS else None
    if group:
        args.rows = list(ROW_GROUPS[group])
    unknown = [r for r in [*args.rows, args.reference] if r not in TRAIN_ROWS and not ROW_PATTERN.match(r)]
    if unknown:
        ap.error(f"unknown rows {unknown}; valid: {', '.join(TRAIN_ROWS + PRUNE_ROWS)}, "
                 + ", ".join(f"{g} (= {' '.join(rs)})" for g, rs in ROW_GROUPS.items())
                 + ", npdg_lamX, npdg_rX or CRITERION_lsX")
    for r in args.rows:
        if r not in TRAIN_ROWS:
            try:
                parse_row(r)
            except ValueError as exc:
                ap.error(str(exc))
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores; python {platform.python_version()}")
    print("command: python bench/protocol.py " + " ".join(sys.argv[1:]), flush=True)
    t0 = time.perf_counter()
    if args.parallel > 1 and len(args.seeds) > 1 and not args.table_only:
        _parallel(args)
        args.table_only = True
    results: dict[str, list[dict]] = {}
    for seed in args.seeds:  # seed-major: a finished seed is a complete table row set
        for row in args.rows:
            path = args.results / f"{row}_s{seed}.json"
            if args.table_only and not path.is_file():
                continue
            results.setdefault(row, []).append(do_row(row, seed, args))
    text = table({r: results.get(r, []) for r in args.rows}, args)
    corrupt = corruption_table({r: results.get(r, []) for r in args.rows})
    text += ("\n\nPer corruption domain (test split):\n\n" + corrupt) if corrupt else ""
    stages = stage_table({r: results.get(r, []) for r in args.rows}, args)
    text += ("\n\nShare of the units pruned per stage:\n\n" + stages) if stages else ""
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    if args.sparse_phase:
        phase = sparse_phase(args.rows, args.seeds, args)
        if phase:
            print("\nEach sparse row right after its sparse phase (dense) and after pruning + fine-tuning:\n\n" + phase)
            atomic_write_text(phase + "\n", file_for("sparse_phase.md", args))
    group = next((g for g, rs in ROW_GROUPS.items() if set(args.rows) <= set(rs)), None)
    main_rows = group is None and set(args.rows) <= {*TRAIN_ROWS, *PRUNE_ROWS}
    # the main table (and its plot) only from main rows: a mixed row set must not overwrite it
    atomic_write_text(text + "\n", file_for(f"{group}.md" if group else "table.md" if main_rows else "other_rows.md", args))
    if main_rows and args.reference == REFERENCE:
        plot = gamma_plot(results, args, args.results / "gamma_spread.png")
        print(f"plot: {plot}" if plot else "plot: not enough runs yet")
    if group == "ablations":
        plot = ablation_plot(args, args.seeds[0], args.results / "ablations.png")
        print(f"plot: {plot}" if plot else "plot: not enough ablation rows yet")
    print(f"total {time.perf_counter() - t0:.0f} s this call (finished runs reused); test split, {args.scenes} scenes per domain")


if __name__ == "__main__":
    main()
