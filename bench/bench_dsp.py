"""Benchmark: DSP speed, content preservation and style diversity (issue 4, item 6).

- **speed**: stylized images per second at ``--size`` (default 256×512), batch of ``--batch`` images ×
  1 style, no gradient (as in a training batch transform without ascent).
- **content preservation**: Pearson correlation of Sobel edge magnitudes (grey level) between each
  source image and each of its stylizations; mean and min over ``--images`` × ``--styles``. The same
  figure for the held-out domains' renderings of the same scenes gives the scale (they share labels).
- **style diversity**: for ``--styles`` (16) samples of one image, the spread (std across samples) of
  the per-image RGB mean and std and of the DSP encoder's last-tap channel mean/std, averaged over
  images — against the spread of the same statistics across the 6 held-out domains of the same scenes.

Prints the machine, the command and the raw figures.

    python bench/bench_dsp.py --dsp assets/dsp_tiny [--size 256x512] [--images 8] [--styles 16]
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
from npdg.data.transforms import image_to_tensor, parse_size
from npdg.dsp.adain import style_stats
from npdg.dsp.model import DSP

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
    args = p.parse_args()
    size = parse_size(args.size)
    dsp = DSP.load(args.dsp, device=args.device)
    gpu = torch.cuda.get_device_name() if dsp.device.type == "cuda" else "none"
    print(f"machine: {platform.platform()}; {platform.machine()}; threads {torch.get_num_threads()}; gpu {gpu}; torch {torch.__version__}")
    print("command:", " ".join(sys.argv))
    print(f"dsp: {args.dsp} (encoder {dsp.spec.encoder}, C={dsp.encoder.channels}, d={dsp.latent_dim}, alpha={dsp.spec.alpha})")

    src = torch.stack([image_to_tensor(render_scene(SOURCE_DOMAIN, "val", i, size)[0]) for i in range(args.images)]).to(dsp.device)
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


if __name__ == "__main__":
    main()
