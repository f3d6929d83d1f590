"""The synthetic multi-domain street scenes: determinism, shared content, real domain gap, contract."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from npdg.data import SAMPLE_KEYS
from npdg.data.synthetic import (
    DEFAULT_LENGTHS,
    DOMAINS,
    SOURCE_DOMAIN,
    DomainInfo,
    SyntheticDataset,
    domain_names,
    render_scene,
    render_scene_full,
)
from npdg.data.transforms import RandomCrop
from npdg.errors import ConfigError
from npdg.labels import NUM_CLASSES, class_id

SMALL = (64, 128)
MID = (128, 256)
HELDOUT = ["photo", "night", "fog", "rain", "overcast", "toon"]
APPEARANCE = [SOURCE_DOMAIN, *HELDOUT]


def _digest(domain: str, split: str, index: int, size=SMALL) -> str:
    image, label = render_scene(domain, split, index, size)
    return hashlib.sha256(image.tobytes() + label.tobytes()).hexdigest()


# --- registry ------------------------------------------------------------------------------------
def test_domain_registry_order_and_roles():
    assert list(DOMAINS) == [SOURCE_DOMAIN, *HELDOUT, "suburb"]
    assert all(isinstance(d, DomainInfo) and d.name == n and d.description for n, d in DOMAINS.items())
    assert domain_names("source") == ["source"]
    assert domain_names("heldout") == HELDOUT
    assert domain_names("content_shift") == ["suburb"]
    assert domain_names() == list(DOMAINS)
    with pytest.raises(ConfigError, match="heldout"):
        domain_names("target")


# --- determinism ---------------------------------------------------------------------------------
def test_same_call_twice_gives_identical_bytes():
    for d in ("source", "fog", "suburb"):
        a, la = render_scene(d, "train", 5, SMALL)
        b, lb = render_scene(d, "train", 5, SMALL)
        assert a.dtype == np.uint8 and a.shape == (*SMALL, 3) and la.dtype == np.uint8 and la.shape == SMALL
        assert a.tobytes() == b.tobytes() and la.tobytes() == lb.tobytes()


def test_fresh_process_gives_identical_bytes():
    cases = [("source", "train", 3), ("night", "val", 1), ("photo", "test", 7), ("suburb", "train", 2)]
    code = (
        "import hashlib\nfrom npdg.data.synthetic import render_scene\n"
        f"for d, s, i in {cases!r}:\n"
        "    im, lab = render_scene(d, s, i, (64, 128))\n"
        "    print(hashlib.sha256(im.tobytes() + lab.tobytes()).hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [_digest(*c) for c in cases]


# --- content is shared, appearance differs ---------------------------------------------------------
@pytest.mark.parametrize("index", [0, 11])
def test_labels_identical_across_appearance_domains_and_images_differ(index):
    ref_img, ref_lab = render_scene(SOURCE_DOMAIN, "train", index, SMALL)
    for d in HELDOUT:
        img, lab = render_scene(d, "train", index, SMALL)
        np.testing.assert_array_equal(lab, ref_lab, err_msg=f"label of {d} differs from source")
        diff = np.abs(img.astype(np.int16) - ref_img.astype(np.int16)).mean()
        assert diff > 20.0, f"{d} looks too much like source (mean abs diff {diff:.1f})"


def test_depth_and_objects_are_consistent_with_labels():
    _, content = render_scene_full("fog", "val", 4, SMALL)
    np.testing.assert_array_equal(content.obj_class[content.obj], content.label)
    sky = content.label == class_id("sky")
    road = content.label == class_id("road")
    assert content.depth[sky].min() > content.depth[road].max() - 1e-3  # the sky is the farthest thing
    # ground depth grows towards the horizon: the lowest road row is the nearest
    rows = np.nonzero(road.any(1))[0]
    assert content.depth[rows[-1], road[rows[-1]]].mean() < content.depth[rows[0], road[rows[0]]].mean()


def test_parts_only_inside_classes_that_carry_them():
    from npdg.data.scene import PART_CLASSES

    for d, i in (("source", 0), ("source", 13), ("suburb", 3)):
        content = render_scene_full(d, "train", i, SMALL)[1]
        for part, classes in PART_CLASSES.items():
            assert set(np.unique(content.label[content.part == part]).tolist()) <= set(classes)


def test_splits_differ():
    labels = {s: render_scene(SOURCE_DOMAIN, s, 0, SMALL)[1] for s in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert (labels[a] != labels[b]).mean() > 0.1


def test_small_scene_is_the_downscaled_large_one():
    for i in range(2):
        small = render_scene(SOURCE_DOMAIN, "val", i, MID)[1]
        big = render_scene(SOURCE_DOMAIN, "val", i, (512, 1024))[1]
        agree = (cv2.resize(big, MID[::-1], interpolation=cv2.INTER_NEAREST) == small).mean()
        assert agree > 0.95, agree


def _class_shares(domain: str, n: int) -> np.ndarray:
    counts = np.zeros(256)
    for i in range(n):
        counts += np.bincount(render_scene(domain, "train", i, MID)[1].ravel(), minlength=256)
    return counts / counts.sum()


def test_class_coverage_over_fifty_scenes():
    shares = _class_shares(SOURCE_DOMAIN, 50)
    assert shares[255] == 0.0  # every pixel carries a class
    present = int((shares[:NUM_CLASSES] > 0).sum())
    assert present >= 15, f"only {present} classes in 50 scenes"


def test_suburb_layout_statistics_differ_from_source():
    src, sub = _class_shares(SOURCE_DOMAIN, 20), _class_shares("suburb", 20)
    b, veg, ter, sky = (class_id(n) for n in ("building", "vegetation", "terrain", "sky"))
    assert sub[b] < 0.4 * src[b]
    assert sub[veg] + sub[ter] > 1.5 * (src[veg] + src[ter])
    assert sub[sky] > 2.0 * src[sky]
    car = class_id("car")
    assert sub[car] < src[car]


# --- the domain gap is real, the task still solvable ------------------------------------------------
def _features(img: np.ndarray) -> np.ndarray:
    f = img.astype(np.float32)
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
    m = cv2.blur(g, (5, 5))
    sd = np.sqrt(np.maximum(cv2.blur(g * g, (5, 5)) - m * m, 0.0))
    return np.concatenate([f, cv2.blur(f, (5, 5)), sd[..., None]], -1).reshape(-1, 7)


def _pixels(domain: str, indices, max_depth: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel features and labels of some val scenes (optionally only pixels nearer than ``max_depth``)."""
    xs, ys = [], []
    for i in indices:
        image, content = render_scene_full(domain, "val", i, SMALL)
        keep = np.ones(content.label.size, bool) if max_depth is None else content.depth.ravel() < max_depth
        xs.append(_features(image)[keep])
        ys.append(content.label.ravel()[keep])
    return np.concatenate(xs), np.concatenate(ys)


class _LDA:
    """Linear discriminant on per-pixel colour/texture features: a tiny stand-in segmentor."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.cls = np.unique(y)
        self.mu = np.stack([x[y == c].mean(0) for c in self.cls])
        r = x - self.mu[np.searchsorted(self.cls, y)]
        self.prec = np.linalg.inv(np.cov(r.T) + 1e-3 * np.eye(x.shape[1]))
        self.prior = np.log(np.array([(y == c).mean() for c in self.cls]))

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        w = self.mu @ self.prec
        score = x @ w.T - 0.5 * np.einsum("kd,kd->k", w, self.mu) + self.prior
        return float((self.cls[score.argmax(1)] == y).mean())


def test_source_trained_pixel_classifier_drops_on_heldout_domains():
    train, test = range(12), range(12, 22)
    model = _LDA(*_pixels(SOURCE_DOMAIN, train))
    src_acc = model.accuracy(*_pixels(SOURCE_DOMAIN, test))
    assert src_acc > 0.55
    for d in HELDOUT:
        x, y = _pixels(d, test)
        own = _LDA(*_pixels(d, train)).accuracy(x, y)
        cross = model.accuracy(x, y)
        assert cross < src_acc - 0.1, f"{d}: no real gap ({cross:.2f} vs source {src_acc:.2f})"
        assert own > 0.4, f"{d}: classes not separable within the domain ({own:.2f})"


@pytest.mark.parametrize("domain", APPEARANCE)
def test_neighbouring_classes_are_distinguishable(domain):
    """Each confusable pair is linearly separable per pixel (colour/texture) in every look.

    Measured on the near field (< 30 m): far away, fog and darkness legitimately merge everything.
    """
    near = _pixels(domain, range(24), max_depth=30.0)
    pairs = [("road", "sidewalk", 0.72), ("sidewalk", "terrain", 0.65), ("building", "wall", 0.72),
             ("vegetation", "terrain", 0.75), ("sky", "building", 0.75), ("car", "truck", 0.58)]
    for a, b, floor in pairs:
        x, y = _pixels(domain, range(24)) if a == "sky" else near  # the sky is never near
        ia, ib = class_id(a), class_id(b)
        m = (y == ia) | (y == ib)
        xa, pos = x[m], y[m] == ia
        assert pos.sum() > 50 and (~pos).sum() > 50, f"{domain}: too few {a}/{b} pixels"
        mu1, mu0 = xa[pos].mean(0), xa[~pos].mean(0)
        w = np.linalg.solve(np.cov(xa[pos].T) + np.cov(xa[~pos].T) + np.eye(7), mu1 - mu0)
        p = xa @ w
        thr = 0.5 * (p[pos].mean() + p[~pos].mean())
        bal = 0.5 * ((p[pos] > thr).mean() + (p[~pos] <= thr).mean())
        assert bal > floor, f"{domain}: {a} vs {b} separable only to {bal:.2f}"


# --- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(100, 200), (64, 100), (0, 64), (-32, 64), "64x", (64,)])
def test_bad_sizes_raise_config_error(size):
    with pytest.raises(ConfigError):
        render_scene(SOURCE_DOMAIN, "train", 0, size)
    with pytest.raises(ConfigError):
        SyntheticDataset(SOURCE_DOMAIN, size=size)


def test_size_given_as_text_is_accepted():
    assert render_scene(SOURCE_DOMAIN, "train", 0, "64x128")[0].shape == (64, 128, 3)


def test_unknown_domain_split_index_raise_config_error_listing_valid_values():
    with pytest.raises(ConfigError, match="photo.*suburb"):
        render_scene("gta5", "train", 0, SMALL)
    with pytest.raises(ConfigError, match="train, val, test"):
        render_scene(SOURCE_DOMAIN, "dev", 0, SMALL)
    with pytest.raises(ConfigError, match=">= 0"):
        render_scene(SOURCE_DOMAIN, "train", -1, SMALL)
    with pytest.raises(ConfigError):
        SyntheticDataset(SOURCE_DOMAIN, "train", SMALL, length=0)


# --- dataset contract -------------------------------------------------------------------------------
def test_dataset_sample_contract():
    ds = SyntheticDataset("rain", "val", SMALL, length=3)
    assert len(ds) == 3 and len(SyntheticDataset("rain", "val", SMALL)) == DEFAULT_LENGTHS["val"]
    s = ds[2]
    assert tuple(s) == SAMPLE_KEYS
    assert s["image"].dtype == torch.float32 and s["image"].shape == (3, *SMALL)
    assert float(s["image"].min()) >= 0.0 and float(s["image"].max()) <= 1.0 and float(s["image"].std()) > 0.02
    assert s["label"].dtype == torch.int64 and s["label"].shape == SMALL
    assert int(s["label"].max()) < NUM_CLASSES and int(s["label"].min()) >= 0
    assert (s["domain"], s["split"], s["index"], s["name"]) == ("rain", "val", 2, "rain_val_000002")
    image, label = render_scene("rain", "val", 2, SMALL)
    np.testing.assert_array_equal(s["label"].numpy(), label)
    assert torch.equal(s["image"], torch.from_numpy(image).permute(2, 0, 1).float() / 255.0)
    assert ds[-1]["index"] == 2
    with pytest.raises(IndexError):
        ds[3]
    batch = default_collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, *SMALL) and batch["name"] == ["rain_val_000000", "rain_val_000001"]


def test_transform_hook_is_applied_reproducibly_per_epoch():
    crop = RandomCrop((32, 64))
    ds = SyntheticDataset(SOURCE_DOMAIN, "train", SMALL, length=4, transform=crop)
    a = [ds[i] for i in range(4)]
    assert a[0]["image"].shape == (3, 32, 64) and a[0]["label"].shape == (32, 64)
    assert all(torch.equal(x["image"], ds[i]["image"]) for i, x in enumerate(a))  # same epoch, same crop
    ds.set_epoch(1)
    b = [ds[i] for i in range(4)]
    assert any(not torch.equal(x["label"], y["label"]) for x, y in zip(a, b))
    # the crop is a window of the untransformed scene
    full = render_scene(SOURCE_DOMAIN, "train", 0, SMALL)[1]
    lab = b[0]["label"].numpy().astype(np.uint8)
    hits = [(y, x) for y in range(33) for x in range(65) if np.array_equal(full[y : y + 32, x : x + 64], lab)]
    assert hits
