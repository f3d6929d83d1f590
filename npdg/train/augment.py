"""Training-time augmentation on the device: random scale / crop / flip, and the photometric transform.

Random numbers come from a CPU generator so the step never waits on the device; labels are resized
with nearest neighbour (never inventing ids) and padded with 255 (ignored by the loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from npdg.labels import IGNORE


def _rand(gen: torch.Generator, n: int) -> list[float]:
    return torch.rand(n, generator=gen).tolist()


def random_scale_crop_flip(
    images: torch.Tensor,
    labels: torch.Tensor,
    crop: tuple[int, int],
    scale_range: tuple[float, float],
    hflip: bool,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: rescale by a factor in ``scale_range``, take a random ``crop``, flip with p = 0.5.

    Images are resized bilinearly, labels with nearest neighbour (never invents ids); a rescaled image
    smaller than the crop is padded with 0 (image) and 255 (label, ignored by the loss). Random numbers
    come from the CPU generator ``gen`` so the step never waits on the device.
    """
    b, _, h, w = images.shape
    ch, cw = crop
    lo, hi = scale_range
    u = _rand(gen, 4 * b)
    out_x, out_y = [], []
    for i in range(b):
        s = lo + (hi - lo) * u[4 * i]
        sh, sw = max(1, round(h * s)), max(1, round(w * s))
        x = images[i : i + 1]
        y = labels[i : i + 1, None].float()
        if (sh, sw) != (h, w):
            x = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=(sh, sw), mode="nearest")
        ph, pw = max(0, ch - sh), max(0, cw - sw)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), value=0.0)
            y = F.pad(y, (0, pw, 0, ph), value=float(IGNORE))
        top = int(u[4 * i + 1] * (x.shape[2] - ch + 1))
        left = int(u[4 * i + 2] * (x.shape[3] - cw + 1))
        x = x[:, :, top : top + ch, left : left + cw]
        y = y[:, :, top : top + ch, left : left + cw]
        if hflip and u[4 * i + 3] < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        out_x.append(x)
        out_y.append(y)
    return torch.cat(out_x), torch.cat(out_y)[:, 0].long()


@dataclass
class PhotometricAugment:
    """``photometric`` mode: colour jitter, Gaussian blur and sensor noise on the image batch.

    Per-sample brightness/contrast/saturation factors are drawn in ``[1 - s, 1 + s]`` from the CPU
    generator; the noise uses the device's global RNG (saved in checkpoints). Labels are untouched.
    """

    strength: float
    blur_prob: float
    noise_std: float
    gen: torch.Generator

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        b = images.shape[0]
        r = torch.rand(b, 5, generator=self.gen)
        f = (1 - self.strength + 2 * self.strength * r[:, :3]).to(images.device, non_blocking=True)
        bright, contrast, sat = (f[:, k].view(b, 1, 1, 1) for k in range(3))
        x = images * bright
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - gray) * sat + gray
        blur = (r[:, 3] < self.blur_prob).tolist()
        if any(blur):
            sigma = 0.5 + 1.5 * float(r[0, 4])
            k = torch.arange(-2, 3, dtype=x.dtype, device=x.device)
            k = torch.exp(-(k**2) / (2 * sigma**2))
            k = k / k.sum()
            mask = torch.tensor(blur, device=x.device).view(b, 1, 1, 1)
            xb = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5).repeat(3, 1, 1, 1), groups=3)
            xb = F.conv2d(F.pad(xb, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1).repeat(3, 1, 1, 1), groups=3)
            x = torch.where(mask, xb, x)
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn_like(x)
        return x.clamp_(0.0, 1.0), labels


