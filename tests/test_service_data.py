"""Data page service (npdg.service.data): what the page needs, read-only, equal to the engine's."""

from __future__ import annotations

import numpy as np
import pytest

from npdg.data.synthetic import DEFAULT_LENGTHS, DOMAINS, render_scene
from npdg.labels import PALETTE
from npdg.service import data
from npdg.viz import overlay


def test_constants_mirror_the_engine_and_are_immutable():
    assert tuple(DOMAINS) == data.DOMAIN_NAMES and data.DOMAIN_NAMES[0] == data.SOURCE_DOMAIN == "source"
    assert dict(data.SPLIT_LENGTHS) == DEFAULT_LENGTHS and data.DOMAIN_ROLES["suburb"] == "content_shift"
    assert set(data.HELDOUT_DOMAINS) == {d for d, i in DOMAINS.items() if i.role == "heldout"}
    assert data.DEFAULT_DOMAINS == ("source", "photo", "night", "fog", "toon", "suburb")
    with pytest.raises(TypeError):
        data.SPLIT_LENGTHS["val"] = 1  # type: ignore[index]
    assert not data.PALETTE.flags.writeable and np.array_equal(data.PALETTE, PALETTE)
    assert data.class_color(0) == tuple(int(v) for v in PALETTE[0])


def test_scene_views_overlay_and_batches():
    views = data.scene_views("val", 3, ("source", "night"), (64, 128))
    image, label = render_scene("night", "val", 3, (64, 128))
    assert np.array_equal(views[1].image, image) and np.array_equal(views[1].label, label)
    assert not views[0].image.flags.writeable and np.array_equal(views[0].label, views[1].label)
    assert np.array_equal(data.overlay(image, label, 0.4, [0, 1]), overlay(image, label, opacity=0.4, classes=[0, 1]))
    images, labels = data.scene_batch("night", "val", [3, 4], (64, 128))
    assert images.shape == (2, 3, 64, 128) and labels.shape == (2, 64, 128)
    assert np.array_equal((images[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8), image)
    images[0].zero_()  # the caller's own tensor: the cached render is unaffected
    assert np.array_equal(data.scene_views("val", 3, ("night",), (64, 128))[0].image, image)
    shares = data.class_shares(label)
    assert shares["share"].sum() == pytest.approx(1.0) and shares["share"].is_monotonic_decreasing
    stats = data.appearance_stats(views)
    assert stats["same labels"].tolist() == [1.0, 1.0]
