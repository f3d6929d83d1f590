"""Attribution (npdg.attribution): IG adds up to the target's change, masked units contribute exactly
0, Grad-CAM and ablation give image-sized maps, parameters and regions are validated."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import randomize_gamma

from npdg import attribution as A
from npdg.errors import ConfigError
from npdg.models import build_model
from npdg.pruning.selection import select


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_gamma(build_model("deeplabv3plus", "resnet18", 19).eval(), stats=True)


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _region(model, image, c=0):
    with torch.no_grad():
        pred = model(image).argmax(1)[0].numpy()
    mask = np.zeros((64, 64), bool)
    mask[16:48, 8:40] = True
    return pred, mask


def test_integrated_gradients_add_up_to_the_change_of_the_target(model, image):
    pred, mask = _region(model, image)
    att = A.pixel_attribution(model, image, 3, mask, "ig", {"n_steps": 64, "internal_batch_size": 16})
    f = A.region_forward(model, None, 3, torch.from_numpy(mask))
    with torch.no_grad():
        delta = float(f(image) - f(torch.zeros_like(image)))
    assert att.shape == (64, 64) and att.dtype == np.float32
    assert att.sum() == pytest.approx(delta, rel=0.05, abs=1e-3)  # completeness


def test_masked_units_contribute_exactly_zero_and_the_model_is_untouched(model, image):
    pred, mask = _region(model, image)
    plan = select(model, rate=0.3)
    before = copy.deepcopy(model.state_dict())
    layer = next(lp for lp in plan.layers if lp.pruned)
    dense = A.unit_contributions(model, image, 3, mask, layer.name)
    masked = A.unit_contributions(model, image, 3, mask, layer.name, plan=plan)
    assert dense.shape == (layer.size,) and np.abs(dense[list(layer.pruned)]).max() > 0
    assert np.all(masked[list(layer.pruned)] == 0.0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_gradcam_ablation_and_smoothgrad_give_image_sized_maps(model, image):
    pred, mask = _region(model, image)
    cam = A.pixel_attribution(model, image, 3, mask, "gradcam", layer="net.encoder.layer4.1.bn2")
    assert cam.shape == (64, 64) and cam.min() >= 0
    seen = []
    abl = A.pixel_attribution(model, image, 3, mask, "ablation", {"cells": 2, "perturbations_per_eval": 4}, pred=pred,
                              progress=lambda d, t: seen.append((d, t)))
    seg = A.segments(pred, 2)
    assert abl.shape == (64, 64) and seen[-1] == (1, 1)
    for s in np.unique(seg):  # one value per segment
        assert np.unique(abl[seg == s]).size == 1
    sg = A.pixel_attribution(model, image, 3, mask, "smoothgrad", {"nt_samples": 2, "n_steps": 4})
    assert sg.shape == (64, 64) and np.isfinite(sg).all()


def test_segments_and_checks():
    pred = np.zeros((4, 4), np.uint8)
    pred[:, 2:] = 5
    seg = A.segments(pred, 2)
    assert seg.max() == 3 and seg[0, 0] != seg[0, 3] and seg[0, 0] != seg[3, 0]
    m = A.method("ig")
    assert m.check({"n_steps": 8}) == {"n_steps": 8, "internal_batch_size": 8}
    for bad in ({"n_steps": 1e9}, {"n_steps": float("nan")}, {"n_steps": 2.5}, {"steps": 3}):
        with pytest.raises(ConfigError):
            m.check(bad)
    with pytest.raises(ConfigError, match="unknown attribution method"):
        A.method("lime")
    with pytest.raises(ConfigError, match="empty"):
        A.check_region(np.zeros((4, 4), bool), (4, 4))
    with pytest.raises(ConfigError, match="the image"):
        A.check_region(np.ones((4, 5), bool), (4, 4))


def test_gradcam_on_attention_heads_and_their_units():
    torch.manual_seed(0)
    from npdg.models.gates import add_head_gates, attention_modules

    model = build_model("segformer", "mit_b0", 19).eval()
    add_head_gates(model)
    image = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(2))
    mask = np.zeros((64, 128), bool)
    mask[10:40, 20:90] = True
    layer = list(attention_modules(model))[-1]
    cam = A.pixel_attribution(model, image, 0, mask, "gradcam", layer=layer)
    assert cam.shape == (64, 128) and cam.min() >= 0 and cam.max() > 0
    heads = A.unit_contributions(model, image, 0, mask, layer)
    assert heads.shape == (int(attention_modules(model)[layer].num_heads),)
    with pytest.raises(ConfigError, match="BN filter layer or an MiT attention layer"):
        A.pixel_attribution(model, image, 0, mask, "gradcam", layer=layer + ".proj")
