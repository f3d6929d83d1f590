"""Corruption domains (npdg.data.corruptions) and per-scene bootstrap intervals (npdg.significance)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from npdg.data.corruptions import CORRUPTIONS, DISTINCT, CorruptedDataset, corrupt
from npdg.data.synthetic import SyntheticDataset, render_scene
from npdg.errors import ConfigError
from npdg.evaluate import ConfusionMatrix
from npdg.significance import mean_miou, miou_of, paired_bootstrap, scene_confusions

SIZE = (64, 128)


def test_every_corruption_keeps_the_labels_and_changes_the_image():
    image, label = render_scene("source", "test", 3, SIZE)
    for name in CORRUPTIONS:
        out = corrupt(image, name, np.random.default_rng(0))
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert np.abs(out.astype(int) - image.astype(int)).mean() > 2, name
        sample = CorruptedDataset(name, "test", SIZE, length=5)[3]
        assert torch.equal(sample["label"], torch.from_numpy(label.astype(np.int64)))
        assert sample["domain"] == f"corrupt_{name}"
    # exact definitions where they are exact
    np.testing.assert_array_equal(corrupt(image, "channels", None), image[..., [2, 0, 1]])
    sol = corrupt(image, "solarize", None)
    np.testing.assert_array_equal(sol[image <= 127], image[image <= 127])
    np.testing.assert_array_equal(sol[image > 127], 255 - image[image > 127])
    # impulse noise is seeded per scene: the same scene gives the same pixels
    ds = CorruptedDataset("impulse", "test", SIZE, length=4)
    assert torch.equal(ds[2]["image"], ds[2]["image"]) and not torch.equal(ds[1]["image"], ds[2]["image"])
    with pytest.raises(ConfigError, match="unknown corruption"):
        corrupt(image, "fog", None)
    with pytest.raises(ConfigError):
        CorruptedDataset("jpeg", "test", SIZE, length=0)


def test_hue_is_the_channel_permutation_up_to_rounding_so_the_set_has_five_distinct_shifts():
    """A known flaw, documented in npdg.data.corruptions: a 120° HSV hue rotation maps R → G → B → R,
    which is the BRG permutation, so ``hue`` repeats ``channels`` (and DISTINCT leaves it out)."""
    image, _ = render_scene("source", "test", 3, SIZE)
    diff = np.abs(corrupt(image, "hue", None).astype(int) - corrupt(image, "channels", None).astype(int))
    assert diff.mean() < 1.5 and diff.max() <= 8
    assert "hue" not in DISTINCT and set(DISTINCT) == set(CORRUPTIONS) - {"hue"}
    for a in DISTINCT:  # the five kept ones really differ from one another
        for b in DISTINCT:
            if a < b:
                d = np.abs(corrupt(image, a, np.random.default_rng(0)).astype(int)
                           - corrupt(image, b, np.random.default_rng(0)).astype(int)).mean()
                assert d > 2, (a, b)


class _Fixed(nn.Module):
    """Predicts the label of ``SyntheticDataset`` scenes with a fixed share of pixels flipped."""

    def __init__(self, num_classes: int = 19):
        super().__init__()
        self.num_classes = num_classes
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, _, h, w = x.shape
        logits = torch.zeros(b, self.num_classes, h, w)
        cls = (x[:, 0] * 18).round().long().clamp(0, 18)  # some image-dependent prediction
        return logits.scatter_(1, cls.unsqueeze(1), 1.0)


def test_scene_confusions_sum_to_the_dataset_confusion():
    ds = SyntheticDataset("night", "test", SIZE, length=3)
    model = _Fixed()
    per = scene_confusions(model, ds, 19, batch_size=2)
    assert per.shape == (3, 19, 19) and per.dtype == np.int64
    cm = ConfusionMatrix(19)
    for i in range(3):
        s = ds[i]
        with torch.no_grad():
            cm.update(model(s["image"][None]).argmax(1)[0], s["label"])
    np.testing.assert_array_equal(per.sum(0), cm.numpy())
    assert miou_of(per.sum(0)) == pytest.approx(cm.miou())


def _fake(n: int, good: float, rng) -> dict[str, np.ndarray]:
    """Per-scene 2-class confusions with accuracy ~``good``."""
    out = {}
    for d in ("a", "b"):
        cms = np.zeros((n, 2, 2), dtype=np.int64)
        for i in range(n):
            hit = rng.binomial(100, good + rng.normal(0, 0.05))
            cms[i] = [[hit, 100 - hit], [100 - hit, hit]]
        out[d] = cms
    return out


def test_paired_bootstrap_brackets_the_difference_and_separates_real_gaps():
    rng = np.random.default_rng(0)
    a = [_fake(40, 0.8, rng) for _ in range(2)]
    b = [_fake(40, 0.6, rng) for _ in range(2)]
    ci = paired_bootstrap(a, b, ("a", "b"), n_boot=300)
    assert ci["low"] <= ci["diff"] <= ci["high"] and ci["low"] > 0 and ci["scenes"] == 40
    same = paired_bootstrap(a, a, ("a", "b"), n_boot=50)
    assert same["diff"] == same["low"] == same["high"] == 0.0  # paired: identical sides never differ
    assert mean_miou(a[0], ("a",)) == pytest.approx(miou_of(a[0]["a"].sum(0)))
    with pytest.raises(ConfigError):
        paired_bootstrap(a, b[:1], ("a",))
    with pytest.raises(ConfigError):
        paired_bootstrap([{"a": a[0]["a"][:5]}], [{"a": a[0]["a"]}], ("a",))
