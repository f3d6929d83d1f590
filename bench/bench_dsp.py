"""Benchmark: DSP speed, content preservation and style diversity (issue 4, item 6).

- **speed**: stylized images per second at ``--size`` (default 256×512), batch of ``--batch`` images ×
  1 style, no gradient (as in a training batch transform without ascent).
- **content preservation**: Pearson correlation of Sobel edge magnitudes (grey level) between each
  source image and each of its stylizations; mean and min over ``--images`` × ``--styles``. The same
  figure for the held-out domains' renderings of the same scenes gives the scale (they share labels).
- **style diversity**: for ``--styles`` (16) samples of one image, the spread (std across samples) of
  the per-image RGB mean and std and of the DSP encoder's last-tap channel mean/std, averaged over
  images — against the spread of the same statistics across the 6 held-out domains of the same scenes.
- **ascent** (with ``--ascend-with RUN``): from ε ~ N(0, I), after 0, 1, 3, ... normalized ascent steps
  against the run's segmentor (``--ascent-steps``, cumulative, as ε accumulates steps between resets
  in a ``dsp`` training run): ‖ε‖, the segmentor's cross-entropy, edge correlation and the colour
  shift (distance of the RGB mean from the source image's) against that of the held-out renderings —
  how far ascent moves styles from the D-VAE's prior and from the looks of the held-out domains.

Prints the machine, the command and the raw figures.

    python bench/bench_dsp.py --dsp assets/dsp_tiny [--size 256x512] [--images 8] [--styles 16]
        [--ascend-with runs/table/dsp_s0 --ascent-steps 1,3,9 --step-size 1.0]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from npdg.data.synthetic import SOURCE_DOMAIN, domain_names, render_scene
from npdg.data.transforms import image_to_tensor, label_to_tensor, parse_size
from npdg.dsp.adain import style_stats
from npdg.dsp.model import DSP, per_sample_ce

SOBEL = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])


def edges(images: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the grey image, ``[N, H, W]``."""
    grey = images.mean(1, keepdim=True)
    k = torch.stack([SOBEL, SOBEL.T]).unsqueeze(1)
    g = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), k)
    return g.pow(2).sum(1).sqrt()


def edge_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the edge maps of ``a[i]`` and ``b[i]`` (per pair)."""
    ea, eb = edges(a).flatten(1), edges(b).flatten(1)
    ea, eb = ea - ea.mean(1, keepdim=True), eb - eb.mean(1, keepdim=True)
    return (ea * eb).sum(1) / (ea.norm(dim=1) * eb.norm(dim=1) + 1e-12)


def image_stats(images: torch.Tensor, dsp: DSP) -> torch.Tensor:
    """Per image: RGB mean (3), RGB std (3), encoder channel mean/std averaged (2) → ``[N, 8]``."""
    rgb_mu, rgb_sd = images.mean((2, 3)), images.std((2, 3))
    with torch.no_grad():
        mu, sigma = style_stats(dsp.encoder.encode(images))
    return torch.cat([rgb_mu, rgb_sd, mu.mean(1, keepdim=True), sigma.mean(1, keepdim=True)], 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsp", default="assets/dsp_tiny")
    p.add_argument("--size", default="256x512")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--styles", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--ascend-with", metavar="RUN", help="segmentor run for the ascent figures")
    p.add_argument("--ascent-steps", default="1,3,9", help="cumulative ascent steps to report")
    p.add_argument("--step-size", type=float, default=1.0, help="normalized ascent step size")
    args = p.parse_args()
    size = parse_size(args.size)
    dsp = DSP.load(args.dsp, device=args.device)
    gpu = torch.cuda.get_device_name() if dsp.device.type == "cuda" else "none"
    print(f"machine: {platform.platform()}; {platform.machine()}; threads {torch.get_num_threads()}; gpu {gpu}; torch {torch.__version__}")
    print("command:", " ".join(sys.argv))
    print(f"dsp: {args.dsp} (encoder {dsp.spec.encoder}, C={dsp.encoder.channels}, d={dsp.latent_dim}, alpha={dsp.spec.alpha})")

    scenes = [render_scene(SOURCE_DOMAIN, "val", i, size) for i in range(args.images)]
    src = torch.stack([image_to_tensor(image) for image, _ in scenes]).to(dsp.device)
    heldout = domain_names("heldout")

    # speed
    x = src[: args.batch] if len(src) >= args.batch else src.repeat((args.batch + len(src) - 1) // len(src), 1, 1, 1)[: args.batch]
    with torch.no_grad():
        dsp.stylize(x, n_styles=1, seed=0)
        times = []
        for r in range(args.repeats):
            if dsp.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            dsp.stylize(x, n_styles=1, seed=r)
            if dsp.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    best, med = min(times), float(np.median(times))
    print(f"speed: {args.repeats} batches of {len(x)} at {size[0]}x{size[1]}: median {med:.3f} s/batch -> "
          f"{len(x) / med:.1f} styles/s (best {len(x) / best:.1f})")

    # content preservation and diversity
    with torch.no_grad():
        styled = dsp.stylize(src, n_styles=args.styles, seed=0)  # [B*K, 3, H, W]
    pairs = src.repeat_interleave(args.styles, 0)
    corr = edge_correlation(pairs.cpu(), styled.cpu())
    dom = torch.stack([
        torch.stack([image_to_tensor(render_scene(d, "val", i, size)[0]) for d in heldout]) for i in range(args.images)
    ])  # [B, D, 3, H, W]
    dom_corr = edge_correlation(src.cpu().repeat_interleave(len(heldout), 0), dom.flatten(0, 1))
    print(f"content preservation (Sobel edge correlation, source vs stylized): mean {corr.mean():.3f}, "
          f"min {corr.min():.3f} over {len(corr)} pairs")
    print(f"  reference, source vs held-out renderings of the same scenes: mean {dom_corr.mean():.3f}, min {dom_corr.min():.3f}")

    names = ["R mean", "G mean", "B mean", "R std", "G std", "B std", "feat mean", "feat std"]
    s_stats = image_stats(styled, dsp).view(args.images, args.styles, -1).std(1).mean(0)
    d_stats = image_stats(dom.flatten(0, 1).to(dsp.device), dsp).view(args.images, len(heldout), -1).std(1).mean(0)
    print(f"style diversity: std across {args.styles} DSP samples vs across {len(heldout)} held-out domains (mean over {args.images} images)")
    for n, a, b in zip(names, s_stats.tolist(), d_stats.tolist()):
        print(f"  {n:9s}  DSP {a:.4f}   held-out {b:.4f}   ratio {a / max(b, 1e-12):.2f}")
    if args.ascend_with:
        labels = torch.stack([label_to_tensor(label) for _, label in scenes])
        ascent_report(dsp, src, labels.to(dsp.device), dom, args)


def colour_shift(src: torch.Tensor, styled: torch.Tensor) -> torch.Tensor:
    """Per pair: L2 distance between the per-image RGB means of ``src[i]`` and ``styled[i]`` (a colour cast)."""
    return (styled.mean((2, 3)) - src.mean((2, 3))).norm(dim=1)


def ascent_report(dsp: DSP, src: torch.Tensor, labels: torch.Tensor, dom: torch.Tensor, args) -> None:
    """‖ε‖, segmentor CE, edge correlation and colour shift after cumulative ascent steps (one style per image)."""
    from npdg.pruning.physical import load_model

    seg = load_model(args.ascend_with, device=dsp.device).eval()
    targets = sorted({0, *(int(s) for s in args.ascent_steps.split(","))})
    eps = dsp.sample_eps(len(src), seed=0)
    n_dom = dom.shape[1]
    ref = colour_shift(src.cpu().repeat_interleave(n_dom, 0), dom.flatten(0, 1))
    print(f"ascent against {args.ascend_with} (normalized, step {args.step_size}; d = {dsp.latent_dim}, "
          f"E‖ε‖ under the prior ≈ {dsp.latent_dim ** 0.5:.1f}); {len(src)} images, one style each")
    print(f"  colour shift (‖RGB mean − source RGB mean‖) of the held-out renderings: mean {ref.mean():.3f}, "
          f"90th percentile {ref.quantile(0.9):.3f}")
    print("  steps  |eps|   CE     edge corr  colour shift (mean / max)")
    done = 0
    for n in targets:
        if n > done:
            eps = dsp.ascend(src, labels, seg, eps, steps=n - done, step_size=args.step_size)
            done = n
        with torch.no_grad():
            styled = dsp.stylize(src, eps)
            ce = per_sample_ce(seg(styled), labels.long()).mean()
        corr = edge_correlation(src.cpu(), styled.cpu()).mean()
        shift = colour_shift(src.cpu(), styled.cpu())
        print(f"  {n:5d}  {eps.norm(dim=1).mean():5.2f}  {ce:5.2f}  {corr:9.3f}  {shift.mean():.3f} / {shift.max():.3f}")


if __name__ == "__main__":
    main()
