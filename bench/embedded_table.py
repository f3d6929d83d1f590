"""Reproduce the README's embedded-benchmark tables: train/prune every row, evaluate, tabulate.

Rows are training modes (``erm``, ``photometric``, ``dsp_random``, ``dsp``, ...) trained from the same
config, iterations and seed, or pruning criteria (``prune:npdg``, ``prune:slimming``, ``prune:l1norm``,
``prune:random``) applied to the run of ``--prune-base`` (default ``dsp``) with ``npdg prune``. Every
run goes to ``OUT/<row>_s<seed>/`` through the ordinary CLI commands (printed before they run), and a
finished run (``eval/final.json`` present) is reused, so an interrupted table resumes. The table
reports the source val mIoU, each held-out domain, their mean (content-shift ``suburb`` is shown
but not averaged), and for pruned rows GFLOPs, parameters and CPU latency at the training size.

    python bench/embedded_table.py --rows erm,photometric,dsp_random,dsp --dsp assets/dsp_tiny --out runs/table
    python bench/embedded_table.py --rows erm,dsp,prune:slimming,prune:l1norm,prune:random,prune:npdg \
        --sparse-iters 60 --finetune-iters 60 --lambda-s 0.05 --out runs/table

Every criterion gets the same iterations after its base run (``--sparse-iters`` + ``--finetune-iters``;
l1norm/random spend them all on fine-tuning), and the training rows are measured with ``npdg cost``
too when prune rows are asked for, so the table compares mIoU, GFLOPs, parameters and latency.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from npdg.data.synthetic import DOMAINS, domain_names
from npdg.recipes.modes import CRITERIA, MODES

PY = [sys.executable, "-m", "npdg"]
SPARSE = tuple(c.name for c in CRITERIA.values() if c.sparse_mode)


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


def train_row(mode: str, seed: int, args, out: Path) -> None:
    cmd = PY + ["train", "--config", args.config, "--out", str(out), "--no-progress",
                "--set", f"train.mode={mode}", "--set", f"train.seed={seed}"]
    if MODES[mode].needs_dsp:  # dsp, dsp_random, npdg*: not erm, photometric or slimming
        cmd += ["--set", f"dsp.path={args.dsp}"]
    for kv in args.set:
        cmd += ["--set", kv]
    run(cmd + (["--resume"] if (out / "checkpoints" / "last.pt").is_file() else ["--overwrite"]))


def dense_cost(out: Path, args) -> None:
    """Measure a training row's (dense) model with ``npdg cost`` into OUT/cost_dense.json (once)."""
    path = out / "cost_dense.json"
    if not path.is_file():
        run(PY + ["cost", "--run", str(out), "--size", args.cost_size, "--batches", "1", "--repeats", "5", "--json", str(path)])


def prune_row(criterion: str, seed: int, args, out: Path, base: Path) -> None:
    """``npdg prune`` one criterion. Every criterion gets the same number of iterations after the base
    run: sparse + fine-tune for npdg/slimming, all of them as fine-tuning for l1norm/random."""
    sparse = criterion in SPARSE
    finetune = args.finetune_iters + (0 if sparse else args.sparse_iters)
    cmd = PY + ["prune", "--run", str(base), "--out", str(out), "--criterion", criterion, "--rate", str(args.rate),
                "--finetune-iters", str(finetune), "--seed", str(seed), "--dsp", args.dsp,
                "--cost-size", args.cost_size, "--overwrite"]
    if sparse:
        cmd += ["--sparse-iters", str(args.sparse_iters)]
        if args.lambda_s is not None:
            cmd += ["--lambda-s", str(args.lambda_s)]
    run(cmd)
    run(PY + ["eval", "--run", str(out), "--data", "synthetic", "--limit", str(args.limit), "--no-progress",
              "--json", str(out / "eval" / "final.json")])


def row_metrics(out: Path) -> dict:
    """Per-domain mIoU (%) from eval/final.json, the held-out mean, and costs (cost.json of a pruned
    run, cost_dense.json of a measured training run) if any."""
    res = json.loads((out / "eval" / "final.json").read_text())["results"]
    m = {d: 100 * r["miou"] for d, r in res.items() if r.get("miou") is not None}
    held = [m[d] for d in domain_names("heldout") if d in m]
    m["mean held-out"] = float(np.mean(held)) if held else float("nan")
    pruned, dense = out / "cost.json", out / "cost_dense.json"
    if pruned.is_file() or dense.is_file():
        after = json.loads(pruned.read_text())["after"] if pruned.is_file() else json.loads(dense.read_text())
        m["GFLOPs"], m["params (M)"] = after["gflops"], after["params"] / 1e6
        m["latency b1 (ms)"] = after["latency_ms"].get("batch1", float("nan"))
    return m


def markdown(rows: dict[str, list[dict]]) -> str:
    cols = ["source"] + domain_names("heldout") + ["mean held-out", "suburb"]
    extra = [c for c in ("GFLOPs", "params (M)", "latency b1 (ms)") if any(c in m for ms in rows.values() for m in ms)]
    lines = ["| row | " + " | ".join(cols + extra) + " |", "|---" * (len(cols) + len(extra) + 1) + "|"]
    for name, ms in rows.items():
        cells = []
        for c in cols + extra:
            vals = [m[c] for m in ms if c in m]
            if not vals:
                cells.append("–")
            elif len(vals) > 1:
                cells.append(f"{np.mean(vals):.1f} ± {np.std(vals):.1f}")
            else:
                cells.append(f"{vals[0]:.2f}" if c in ("params (M)", "GFLOPs") else f"{vals[0]:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo/deeplabv3plus_r18.yaml")
    p.add_argument("--rows", default="erm,photometric,dsp_random,dsp")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; >1 seed reports mean ± std")
    p.add_argument("--dsp", default="assets/dsp_tiny")
    p.add_argument("--out", default="runs/table")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides for training rows")
    p.add_argument("--prune-base", default="dsp", help="training row whose run the prune:* rows start from")
    p.add_argument("--rate", type=float, default=0.3)
    p.add_argument("--sparse-iters", type=int, default=60)
    p.add_argument("--finetune-iters", type=int, default=60)
    p.add_argument("--lambda-s", type=float, default=0.05, help="sparsity weight of the npdg/slimming rows (README table: 0.05)")
    p.add_argument("--costs", action="store_true", help="measure GFLOPs/params/latency of the training rows (automatic when prune:* rows are asked for)")
    p.add_argument("--limit", type=int, default=50, help="images per domain for pruned rows' evaluation")
    p.add_argument("--cost-size", default="128x256")
    args = p.parse_args()
    print(f"machine: {platform.platform()}; python {platform.python_version()}")
    print("command:", " ".join(sys.argv), flush=True)
    t_start = time.perf_counter()
    out_root = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = args.rows.split(",")
    measure_dense = args.costs or any(r.startswith("prune:") for r in rows)
    table: dict[str, list[dict]] = {}
    for row in rows:
        table[row] = []
        for seed in seeds:
            out = out_root / f"{row.replace(':', '_')}_s{seed}"
            if not (out / "eval" / "final.json").is_file():
                if row.startswith("prune:"):
                    base = out_root / f"{args.prune_base}_s{seed}"
                    if not (base / "eval" / "final.json").is_file():
                        train_row(args.prune_base, seed, args, base)
                    prune_row(row.split(":", 1)[1], seed, args, out, base)
                else:
                    train_row(row, seed, args, out)
            if measure_dense and not row.startswith("prune:"):
                dense_cost(out, args)
            table[row].append(row_metrics(out))
    text = markdown(table)
    print(text)
    (out_root / "table.md").write_text(text + "\n")
    print(f"total {time.perf_counter() - t_start:.0f} s (finished runs reused)")
    print(f"suburb = content shift ({DOMAINS['suburb'].description}); not in the held-out mean")


if __name__ == "__main__":
    main()
