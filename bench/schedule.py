"""Does the gap between pruned and dense close with a longer schedule? (issue #15, docs/method.md §9)

``bench/protocol.py`` runs the same rows at one schedule per results folder (``--sparse-iters`` and
``--finetune-iters`` after the ``dsp`` base; ``dsp_budget`` trains for the sum). This script sets the
folders side by side: for every row, the held-out, corruption and source mIoU against the number of
iterations after the base, and each pruned row's difference to the dense ``dsp_budget`` *of the same
schedule*, with the paired bootstrap interval over scenes where the per-scene confusions were kept. It
trains nothing; it reads the per-run JSONs (and ``.npz``) the protocol wrote, and writes ``schedule.md``
and ``schedule.png`` to ``--out``.

    python bench/schedule.py --dirs bench/results/protocol/cpu bench/results/protocol/cpu_long \\
        bench/results/protocol/cpu_xlong --seeds 0 --out bench/results/protocol/schedule
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import protocol  # noqa: E402

from npdg.runs import atomic_write_text  # noqa: E402

ROWS = ("dsp_budget", "npdg", "slimming", "l1norm", "random")


def after_base(r: dict) -> int:
    """Iterations after the base: the sparse phase plus the fine-tune (the budget ``dsp_budget`` adds)."""
    s = r["settings"]
    return int(s["sparse_iters"]) + int(s["finetune_iters"])


def load(dirs: list[Path], rows: list[str], seeds: list[int]) -> list[dict]:
    """One entry per (folder, row) with every requested seed's JSON there: the schedule, the runs and the
    folder (for the kept scenes). A folder whose runs disagree on the schedule is an error."""
    found = []
    for d in dirs:
        if not d.is_dir():
            raise SystemExit(f"error: no results folder {d}")
        for row in rows:
            rs = [json.loads(f.read_text()) for s in seeds if (f := d / f"{row}_s{s}.json").is_file()]
            if not rs:
                continue
            its = {after_base(r) for r in rs}
            if len(its) > 1:
                raise SystemExit(f"error: {d}: the {row} runs have different schedules {sorted(its)}")
            found.append({"dir": d, "row": row, "iters": its.pop(), "runs": rs})
    return found


#: The two shifts: the JSON's mean and the domains the interval resamples.
SHIFTS = {"heldout_mean": protocol.HELDOUT, "corrupt_mean": protocol.CORRUPT}


def interval(entry: dict, ref: dict | None, key: str, boot: int) -> str:
    """The row minus the same folder's dsp_budget on one shift (``key`` of SHIFTS): protocol._ci, the
    paired bootstrap over the kept scenes; the difference of the means alone where none were kept."""
    if entry["row"] == protocol.REFERENCE:
        return "–"
    if ref is None:
        return "(no dsp_budget)"
    args = argparse.Namespace(results=entry["dir"], out=entry["dir"] / "no-run-folders", boot=boot)
    ci = protocol._ci(entry["row"], entry["runs"], ref["runs"], SHIFTS[key], args)
    if ci == "(scenes not here)":
        diff = np.mean([r[key] for r in entry["runs"]]) - np.mean([r[key] for r in ref["runs"]])
        return f"{100 * diff:+.1f} (scenes not kept)"
    return ci


def table(found: list[dict], boot: int) -> str:
    """Markdown: one line per row and schedule, sorted by row, then by the iterations after the base."""
    refs = {e["dir"]: e for e in found if e["row"] == protocol.REFERENCE}
    cols = ["row", "after the base", "seeds", "source", "held-out", "Δ held-out vs dsp_budget [95 % CI]",
            "corruptions (6)", "Δ corr. [95 % CI]", "GFLOPs", "BN \\|γ\\| std", "results"]
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    order = {r: i for i, r in enumerate(dict.fromkeys(e["row"] for e in found))}
    for e in sorted(found, key=lambda e: (order[e["row"]], e["iters"])):
        rs, ref = e["runs"], refs.get(e["dir"])
        cells = [e["row"], str(e["iters"]), str(len(rs)), protocol.ms([r["miou"]["source"] for r in rs]),
                 protocol.ms([r["heldout_mean"] for r in rs]),
                 interval(e, ref, "heldout_mean", boot),
                 protocol.ms([r["corrupt_mean"] for r in rs]),
                 interval(e, ref, "corrupt_mean", boot),
                 protocol.ms([r["gflops"] for r in rs], 1.0, 1), protocol.ms([r["gamma_abs_std"] for r in rs], 1.0, 3),
                 f"`{e['dir'].relative_to(ROOT) if e['dir'].is_relative_to(ROOT) else e['dir']}`"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(found: list[dict], path: Path, title: str) -> Path | None:
    """Held-out, corruption and source mIoU against the iterations after the base, a line per row
    (the dense dsp_budget dotted); None with fewer than two schedules."""
    if len({e["iters"] for e in found}) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bases = {e["runs"][0]["settings"]["base_iters"] for e in found}
    base = f"{bases.pop()}-iteration" if len(bases) == 1 else "dsp"
    keys = (("heldout_mean", "held-out styles (mean of 6)"), ("corrupt_mean", "corruptions (mean of 6)"),
            ("source", "source"))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharex=True)
    rows = list(dict.fromkeys(e["row"] for e in found))
    for i, row in enumerate(rows):
        pts = sorted((e["iters"], e["runs"]) for e in found if e["row"] == row)
        for ax, (key, label) in zip(axes, keys):
            ys = [100 * np.mean([r["miou"][key] if key in r["miou"] else r[key] for r in rs]) for _, rs in pts]
            ax.plot([x for x, _ in pts], ys, "o" + (":" if row == protocol.REFERENCE else "-"), color=f"C{i}",
                    label=row)
            ax.set_title(label, fontsize=10)
    xs = sorted({e["iters"] for e in found})
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(f"iterations after the {base} base")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mIoU (%), test split")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return protocol._save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dirs", nargs="+", type=Path, required=True, help="protocol results folders, one per schedule")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS,
                    help="dsp_budget and the pruned rows (the dsp base has no schedule after itself)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    found = load(args.dirs, args.rows, args.seeds)
    if not found:
        raise SystemExit("error: none of the rows has a run in those folders for those seeds")
    text = table(found, args.boot)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(text + "\n", args.out / "schedule.md")
    seeds = ", ".join(map(str, args.seeds))
    path = plot(found, args.out / "schedule.png",
                f"the same rows at longer schedules, seed{'s' if len(args.seeds) > 1 else ''} {seeds} "
                "(dotted: dense dsp_budget, equal iterations)")
    print(f"plot: {path}" if path else "plot: one schedule only, no plot")


if __name__ == "__main__":
    main()
