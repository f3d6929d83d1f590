"""``python -m npdg dsp ...``: train a DSP and look at what it does.

* ``dsp train``  — stage 1 (tiny autoencoder) + stage 2 (D-VAE + decoder) into a run folder that
  ends with the deployable ``dsp.safetensors`` + ``dsp.json``;
* ``dsp sample`` — a grid: one row per image with the input, K random stylizations and, with
  ``--ascend-with``, the K stylizations after ε ascent against a segmentor.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from npdg.cli.common import model_arg, progress_bar, seed_arg, size_arg
from npdg.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser("dsp", help="differentiable style perturbation: train, sample",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="dsp_command", metavar="SUBCOMMAND", required=True)

    t = sub.add_parser("train", help="train a DSP (style autoencoder + D-VAE)")
    t.add_argument("--config", type=Path, default=None, help="YAML config (e.g. configs/dsp/tiny.yaml); "
                   "with --resume the run's own config.yaml is the default")
    t.add_argument("--out", type=Path, required=True, help="run folder; receives dsp.safetensors + dsp.json")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.iters=100 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    t.add_argument("--overwrite", action="store_true", help="replace an existing OUT (only a DSP run folder npdg made)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("sample", help="stylize images with a trained DSP and save a grid")
    s.add_argument("--dsp", type=Path, required=True, help="folder with dsp.safetensors + dsp.json")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", type=Path, nargs="+", help="image file(s), any mode (RGBA, grey, 16-bit)")
    src.add_argument("--synthetic", type=int, metavar="N", help="N images of the synthetic source domain (val)")
    s.add_argument("--n-styles", type=int, default=4, help="stylizations per image (K)")
    s.add_argument("--alpha", type=float, default=None, help="style strength in [0, 1] (default: the DSP's)")
    s.add_argument("--size", type=str, default=None, metavar="HxW", help="resize inputs to H x W first")
    s.add_argument("--ascend-with", type=Path, default=None, metavar="RUN_OR_CHECKPOINT",
                   help="a segmentor (run folder or weights) to ascend ε against; image files without "
                        "labels use the segmentor's own prediction on the clean image as labels")
    s.add_argument("--steps", type=int, default=5, help="ascent steps (with --ascend-with)")
    s.add_argument("--step-size", type=float, default=None, help="ascent step size (default per rule)")
    s.add_argument("--rule", choices=("normalized", "asm"), default="normalized", help="ascent rule")
    s.add_argument("--seed", type=int, default=0, help="seed of the random styles")
    s.add_argument("--out", type=Path, required=True, help="grid.png, or a folder (grid + one PNG per tile)")
    s.set_defaults(func=_cmd_sample)


def _cmd_train(args: argparse.Namespace) -> int:
    from npdg.dsp.train import train_dsp

    args.resume_hint = f"python -m npdg dsp train --out {args.out} --resume"
    if args.config is None and not args.resume:
        raise ConfigError("dsp train needs --config FILE (or --resume to continue OUT with its own config)")
    bar, update = progress_bar("dsp train", enabled=not args.no_progress)

    def progress(step: int, total: int, losses: dict) -> None:
        update(step, total)
        bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items() if k != "stage"}, refresh=False)

    try:
        result = train_dsp(args.config, args.out, args.overrides, resume=args.resume, overwrite=args.overwrite,
                           progress=progress)
    finally:
        bar.close()
    losses = ", ".join(f"{k} {v:.4g}" for k, v in result.last_losses.items() if k != "stage")
    print(f"trained DSP: {result.iters_done} iterations in {result.seconds:.0f} s ({losses}); "
          f"wrote {result.dsp_dir / 'dsp.safetensors'} and dsp.json")
    return 0


def _load_inputs(args: argparse.Namespace, size) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(image [3,H,W] float, label [H,W] or None) per input."""
    from npdg.data.transforms import image_to_tensor, resize_image

    items: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    if args.image:
        from npdg.data.io import read_rgb

        for path in args.image:
            arr = read_rgb(path)
            if size is not None:
                arr = resize_image(arr, size)
            items.append((image_to_tensor(arr), None))
        return items
    if args.synthetic < 1:
        raise ConfigError(f"--synthetic must be at least 1, got {args.synthetic}")
    from npdg.data.synthetic import SOURCE_DOMAIN, SyntheticDataset

    ds = SyntheticDataset(SOURCE_DOMAIN, "val", size=size or (128, 256), length=args.synthetic)
    for i in range(args.synthetic):
        sample = ds[i]
        items.append((sample["image"].float(), sample["label"].long()))
    return items


def _cmd_sample(args: argparse.Namespace) -> int:
    from npdg.data.io import write_png
    from npdg.dsp.explore import style_grid
    from npdg.dsp.model import DSP
    from npdg.viz import grid

    if args.n_styles < 1:
        raise ConfigError(f"--n-styles must be at least 1, got {args.n_styles}")
    if args.steps < 0:
        raise ConfigError(f"--steps must be >= 0, got {args.steps}")
    if args.out.exists() and args.out.is_file() and args.out.suffix.lower() != ".png":
        raise ConfigError(f"--out {args.out} is a file; give grid.png or a folder")
    dsp = DSP.load(args.dsp)
    size = size_arg(args.size) if args.size else (None if args.image else dsp.spec.image_size)
    seed_arg(args.seed + len(args.image or []) + (args.synthetic or 0))
    items = _load_inputs(args, size)
    segmentor = None
    if args.ascend_with is not None:
        from npdg.pruning.physical import load_model

        segmentor = load_model(model_arg(args.ascend_with)).eval()
    rows, titles, ncols = [], [], 0
    for idx, (image, label) in enumerate(items):  # one call per image: image files may differ in size
        g = style_grid(dsp, image[None], None if label is None else label[None], segmentor, args.n_styles,
                       args.steps if segmentor is not None else 0, step_size=args.step_size, rule=args.rule,
                       seed=args.seed + idx, alpha=args.alpha)
        if g.ascended is not None:
            print(f"image {idx}: segmentor CE {float(g.ce_before.mean()):.3f} (random styles) -> "
                  f"{float(g.ce_after.mean()):.3f} (after {args.steps} ascent steps)")
        tiles, names, ncols = g.tiles()
        rows.append(tiles)
        titles += names
    picture = grid([t for row in rows for t in row], ncols, titles)
    out: Path = args.out
    if out.suffix.lower() == ".png":
        write_png(out, picture)
        print(f"wrote {out} ({len(rows)} images x {ncols} columns)")
        return 0
    k = args.n_styles
    write_png(out / "grid.png", picture)
    for i, row in enumerate(rows):
        write_png(out / f"{i:03d}_input.png", row[0])
        for j in range(k):
            write_png(out / f"{i:03d}_{j:02d}.png", row[1 + j])
            if segmentor is not None:
                write_png(out / f"{i:03d}_{j:02d}_ascended.png", row[1 + k + j])
    print(f"wrote {out / 'grid.png'} and {len(rows)} x {1 + k} tiles into {out}")
    return 0
