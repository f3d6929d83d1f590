"""Per-scene confusion matrices and paired bootstrap confidence intervals over scenes.

A difference between two methods on a benchmark is worth reporting only with its uncertainty. Seeds
give one part (the std over training runs); the other is which scenes were drawn. The paired
bootstrap resamples *scenes* with replacement — the same resample for both methods, so a scene that
is hard for both does not widen the interval — and recomputes the metric from the summed confusion
matrices of the resampled scenes (mIoU is not a mean of per-scene scores; docs/method.md §6). The
interval of (A − B) over the resamples is the percentile interval (docs/method.md §9).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from npdg.errors import ConfigError
from npdg.labels import IGNORE


@torch.no_grad()
def scene_confusions(model: nn.Module, dataset: Dataset, num_classes: int, batch_size: int = 8,
                     device: str | torch.device = "cpu",
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """``[N, C, C]`` int64 confusion matrices (rows: ground truth, columns: prediction) of ``model``
    on every scene of ``dataset``, whole-image inference at the dataset's size, label 255 ignored."""
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    out = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    done = 0
    try:
        for batch in loader:
            x = batch["image"].to(device)
            y = batch["label"].to(device).long()
            pred = model(x).argmax(1)
            valid = y != IGNORE
            idx = torch.where(valid, y * num_classes + pred, torch.full_like(y, num_classes * num_classes))
            for i in range(idx.shape[0]):
                counts = torch.bincount(idx[i].flatten(), minlength=num_classes * num_classes + 1)
                out.append(counts[: num_classes * num_classes].view(num_classes, num_classes).cpu().numpy())
            done += x.shape[0]
            if progress is not None:
                progress(done, len(dataset))
    finally:
        model.train(was_training)
    return np.stack(out).astype(np.int64)


def miou_of(confusion: np.ndarray) -> float:
    """mIoU of a summed ``[C, C]`` matrix over the classes present in ground truth or prediction."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else float("nan")


def mean_miou(scenes: Mapping[str, np.ndarray], domains: Sequence[str], idx: np.ndarray | None = None) -> float:
    """Mean over ``domains`` of each domain's mIoU from its scenes' summed confusions (the scenes
    ``idx`` of every domain — the same indices in each, as the domains render the same scenes)."""
    vals = []
    for d in domains:
        cms = scenes[d] if idx is None else scenes[d][idx]
        vals.append(miou_of(cms.sum(0)))
    return float(np.mean(vals))


def paired_bootstrap(a: Sequence[Mapping[str, np.ndarray]], b: Sequence[Mapping[str, np.ndarray]],
                     domains: Sequence[str], n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """The difference ``A − B`` of the mean mIoU over ``domains``, averaged over paired seeds, with
    a paired bootstrap percentile interval over scenes.

    ``a`` and ``b``: one mapping domain → ``[N, C, C]`` per seed (seed i of A paired with seed i of
    B; every domain with the same N scenes). Each resample draws N scene indices with replacement
    once and uses them for every domain, seed and both methods. Returns ``{"diff", "low", "high",
    "n_boot", "scenes"}``.
    """
    if len(a) != len(b) or not a:
        raise ConfigError(f"paired bootstrap needs the same number (≥ 1) of seeds on both sides, got {len(a)} and {len(b)}")
    if not 0 < level < 1 or n_boot < 1:
        raise ConfigError(f"level must be in (0, 1) and n_boot ≥ 1, got {level}, {n_boot}")
    sizes = {m[d].shape[0] for side in (a, b) for m in side for d in domains}
    if len(sizes) != 1:
        raise ConfigError(f"every domain and seed needs the same number of scenes, got {sorted(sizes)}")
    n = sizes.pop()
    diff = float(np.mean([mean_miou(x, domains) - mean_miou(y, domains) for x, y in zip(a, b)]))
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for k in range(n_boot):
        idx = rng.integers(0, n, n)
        boots[k] = np.mean([mean_miou(x, domains, idx) - mean_miou(y, domains, idx) for x, y in zip(a, b)])
    tail = (1 - level) / 2
    low, high = np.quantile(boots, [tail, 1 - tail])
    return {"diff": diff, "low": float(low), "high": float(high), "n_boot": int(n_boot), "scenes": int(n)}


__all__ = ["mean_miou", "miou_of", "paired_bootstrap", "scene_confusions"]
