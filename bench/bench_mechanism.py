"""Benchmark: the mechanism test of NPDG, no training (issue #15; docs/method.md §9).

On each trained model: soft-mask the most style-sensitive units (by combined w, unary only, binary
only), the least sensitive, or random ones (3 seeds), at several rates; re-estimate every
BatchNorm's statistics on clean + DSP-stylized source images (no gradient step); score source and
held-out mIoU on the ``test`` split. The dense model is scored before and after the same
re-estimation, and every delta is against the re-estimated dense model. ``gap`` = Δheld-out −
Δsource: positive means the masking helped the held-out domains more than it cost the source.

``most_oracle`` ranks by the table probed with the held-out domains' own renderings (a diagnostic
upper bound: it has seen the held-out styles; the other selections have not).

Resumable: each model's rows are written to ``--out`` (JSON) as soon as it is done, and a model
already there is skipped. Prints the machine, the command and the raw figures.

    python bench/bench_mechanism.py [--models r18-dsp r18-npdg-sparse] [--rates 0.05 0.1 0.2 0.3]
        [--eval-images 16] [--calib-images 64] [--out bench/results/mechanism.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from npdg.config import load_run_config  # noqa: E402
from npdg.data.specs import is_averaged  # noqa: E402
from npdg.data.synthetic import DOMAINS, SOURCE_DOMAIN, SyntheticDataset, domain_names  # noqa: E402
from npdg.dsp.model import DSP  # noqa: E402
from npdg.evaluate import evaluate  # noqa: E402
from npdg.pruning import mechanism  # noqa: E402
from npdg.pruning.physical import load_model  # noqa: E402
from npdg.runs import atomic_write_json  # noqa: E402
from npdg.sensitivity import SensitivityResult  # noqa: E402

ZOO = ROOT / "assets" / "zoo"


def scorer(size: tuple[int, int], n_images: int, split: str, amp: str):
    """``score(model)`` → per-domain mIoU on the first ``n_images`` of ``split`` in every domain."""
    datasets = {d: SyntheticDataset(d, split, size, length=n_images) for d in domain_names()}

    def score(model) -> pd.DataFrame:
        result = evaluate(model, datasets, batch_size=16, amp=amp, source=SOURCE_DOMAIN)
        rows = [{"domain": d, "role": DOMAINS[d].role, "averaged": is_averaged(d, SOURCE_DOMAIN), "miou": r.miou}
                for d, r in result.results.items()]
        return pd.DataFrame(rows)

    return score


def calibration(dsp: DSP, size: tuple[int, int], n_images: int, batch: int) -> list[torch.Tensor]:
    """``n_images`` source *train* scenes spread over the split, with their DSP stylizations."""
    ds = SyntheticDataset(SOURCE_DOMAIN, "train", size)
    idx = [int(i * len(ds) / n_images) for i in range(n_images)]
    images = torch.stack([ds[i]["image"] for i in idx])
    return mechanism.calibration_batches(images, dsp, batch_size=batch, seed=0)


def run_model(name: str, args) -> pd.DataFrame:
    folder = ZOO / name
    cfg = load_run_config(folder)
    size = tuple(cfg.data.size)
    model = load_model(folder / "model.safetensors").eval()
    tables = {src: SensitivityResult.load(folder / f"sensitivity_{src}.csv").table
              for src in ("dsp", "oracle") if (folder / f"sensitivity_{src}.csv").is_file()}
    dsp = DSP.load(ROOT / (cfg.dsp.path or "assets/dsp_tiny"))
    calib = calibration(dsp, size, args.calib_images, args.calib_batch)
    selections = [s for s in args.selections if s != "most_oracle" or "oracle" in tables]
    t0 = time.perf_counter()
    last = [t0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 30 or done == total:
            print(f"  {name}: {done}/{total} configurations, {now - t0:.0f} s", flush=True)
            last[0] = now

    frame = mechanism.mechanism_test(model, tables, calib, scorer(size, args.eval_images, args.split, args.amp),
                                     rates=args.rates, selections=selections, seeds=args.seeds, progress=progress)
    return frame.assign(model=name, seconds=time.perf_counter() - t0)


def print_summary(name: str, frame: pd.DataFrame) -> None:
    s = mechanism.summary(frame)
    print(f"\n{name}: mean mIoU (%) on source and the 6 held-out domains; Δ against the re-estimated dense model")
    print(f"{'selection':<16} {'rate':>5} {'n':>2} {'source':>7} {'held':>7} {'Δsrc':>7} {'Δheld':>7} {'±':>5} {'gap':>7} "
          f"{'±':>5} {'kept h−s':>8}")
    for r in s.itertuples():
        tag = r.selection + ("" if r.recalibrated else " (as is)")
        print(f"{tag:<16} {r.rate:5.2f} {r.seeds:2d} {100 * r.source:7.2f} {100 * r.heldout:7.2f} "
              f"{100 * r.d_source:+7.2f} {100 * r.d_heldout:+7.2f} {100 * r.d_heldout_std:5.2f} {100 * r.gap:+7.2f} "
              f"{100 * r.gap_std:5.2f} {100 * r.rel_gap:+8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["r18-dsp", "r18-npdg-sparse", "r18-erm"])
    ap.add_argument("--rates", nargs="+", type=float, default=[0.05, 0.1, 0.2, 0.3])
    ap.add_argument("--selections", nargs="+", default=list(mechanism.SELECTIONS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of the random selection")
    ap.add_argument("--eval-images", type=int, default=16, help="test scenes per domain")
    ap.add_argument("--calib-images", type=int, default=64, help="source train scenes for BN re-estimation (each also stylized)")
    ap.add_argument("--calib-batch", type=int, default=8)
    ap.add_argument("--split", default="test")
    ap.add_argument("--amp", default="off", help="evaluation precision (off = fp32; bf16 where native)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mechanism.json")
    ap.add_argument("--ship", action="store_true",
                    help="also write each model's rows next to it (assets/zoo/NAME/mechanism.csv + .json), "
                         "which the Prune page's Mechanism tab shows")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.system()} {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"python {platform.python_version()}, {torch.get_num_threads()} threads")
    print("command: python bench/bench_mechanism.py " + " ".join(sys.argv[1:]))
    done = json.loads(args.out.read_text()) if args.out.is_file() else {"rows": [], "settings": {}}
    settings = {k: v for k, v in vars(args).items() if k not in ("models", "out", "threads", "ship")}
    if done["rows"] and done.get("settings") != settings:
        sys.exit(f"error: {args.out} holds results made with other settings {done.get('settings')}; "
                 "give another --out or the same settings")
    done["settings"] = settings
    have = {r["model"] for r in done["rows"]}
    for name in args.models:
        if name not in have:
            frame = run_model(name, args)
            done["rows"].extend(frame.to_dict("records"))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(done, args.out)
        rows = pd.DataFrame([r for r in done["rows"] if r["model"] == name])
        print_summary(name, rows)
        print(f"  ({rows['seconds'].iloc[0]:.0f} s on this machine)")
        if args.ship:
            ship(name, rows, settings)


def ship(name: str, rows: pd.DataFrame, settings: dict) -> None:
    """The model's rows as ``assets/zoo/NAME/mechanism.csv`` (+ ``.json``: the settings and the command),
    recorded in its card."""
    from npdg.recipes.zoo import ship_files
    from npdg.runs import atomic_write_text

    folder = ZOO / name
    atomic_write_text(rows[mechanism.RESULT_COLUMNS].to_csv(index=False), folder / "mechanism.csv")
    atomic_write_json({"settings": settings, "command": "python bench/bench_mechanism.py " + " ".join(sys.argv[1:]),
                       "seconds": float(rows["seconds"].iloc[0])}, folder / "mechanism.json")
    ship_files(name, [folder / "mechanism.csv", folder / "mechanism.json"])  # SHA-256 in the card
    print(f"  shipped {folder / 'mechanism.csv'}")


if __name__ == "__main__":
    main()
