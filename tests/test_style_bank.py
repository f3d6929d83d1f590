"""Procedural style bank for DSP: deterministic, diverse, and blind to the held-out domains."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import npdg.data.style_bank as style_bank
from npdg.data.style_bank import StyleBankDataset, style_image
from npdg.errors import ConfigError

SIZE = (64, 128)


def test_style_image_is_deterministic_and_seeded():
    a = style_image(3, SIZE, seed=0)
    assert a.dtype == np.uint8 and a.shape == (*SIZE, 3)
    assert np.array_equal(a, style_image(3, SIZE, seed=0))
    assert not np.array_equal(a, style_image(3, SIZE, seed=1))
    assert not np.array_equal(a, style_image(4, SIZE, seed=0))


def test_style_image_is_identical_in_a_fresh_process():
    code = ("import hashlib\nfrom npdg.data.style_bank import style_image\n"
            "print(hashlib.sha256(style_image(7, (64, 128), 2).tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    import hashlib

    assert out == hashlib.sha256(style_image(7, SIZE, 2).tobytes()).hexdigest()


def test_style_bank_is_diverse():
    imgs = np.stack([style_image(i, SIZE) for i in range(40)]).astype(np.float32)
    means = imgs.mean((1, 2))  # [40, 3] mean colour per image
    assert means.std(0).min() > 20.0  # colours spread widely across the bank
    stds = imgs.std((1, 2)).mean(1)
    assert stds.min() < 15.0 < stds.max() and stds.max() > 40.0  # flat and busy images both occur
    # pairwise: no two images nearly the same
    flat = imgs.reshape(40, -1)
    d = np.abs(flat[:, None, :: 97] - flat[None, :, :: 97]).mean(-1)
    assert d[~np.eye(40, dtype=bool)].min() > 5.0


def test_style_bank_never_references_heldout_domains():
    src = inspect.getsource(style_bank)
    for word in ("photo", "night", "fog", "rain", "overcast", "toon", "synthetic", "render_scene", "LOOKS", "scene"):
        assert not re.search(rf"\b{word}\b", src), f"style_bank mentions {word!r}"
    code = ("import sys, npdg.data.style_bank\n"
            "print(any(m in sys.modules for m in ('npdg.data.synthetic', 'npdg.data.scene')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_dataset_contract():
    ds = StyleBankDataset(length=5, size=SIZE, seed=1)
    assert len(ds) == 5
    s = ds[4]
    assert set(s) == {"image", "index", "name"}
    assert s["image"].dtype == torch.float32 and s["image"].shape == (3, *SIZE)
    assert float(s["image"].min()) >= 0.0 and float(s["image"].max()) <= 1.0
    assert s["index"] == 4 and s["name"] == "style_1_000004"
    assert torch.equal(s["image"], torch.from_numpy(style_image(4, SIZE, 1)).permute(2, 0, 1).float() / 255.0)
    with pytest.raises(IndexError):
        ds[5]


@pytest.mark.parametrize("kwargs", [{"length": 0}, {"length": -3}, {"seed": -1}, {"size": "64x"}])
def test_bad_arguments_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        StyleBankDataset(**kwargs)


def test_negative_index_raises_config_error():
    with pytest.raises(ConfigError):
        style_image(-1, SIZE)
