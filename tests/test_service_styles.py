"""Styles page service (npdg.service.styles): cached grids of a scene or an upload; shared model untouched."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_service_core import make_assets

import npdg.service as svc
from npdg.dsp.explore import style_grid
from npdg.errors import ConfigError
from npdg.service import styles
from npdg.service.data import scene_batch

SIZE = (64, 128)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("styles"))


def test_sample_and_ascend_a_scene(assets):
    run, dsp_dir = assets
    info = styles.dsp_info(dsp_dir)
    assert info.latent_dim == 6 and info.encoder == "tiny"
    only = styles.sample_styles(dsp_dir, index=2, size=SIZE, n_styles=3, seed=1)
    assert only.random.shape == (1, 3, *SIZE, 3) and only.ascended is None
    model = svc.shared_model(run)
    before = copy.deepcopy(model.state_dict())
    calls = []
    grid = styles.ascend_styles(dsp_dir, run, index=2, size=SIZE, n_styles=2, steps=2, step_size=0.25, seed=1,
                                progress=lambda d, t: calls.append(d))
    assert calls == [1, 2, 3] and grid.ce_steps.shape == (1, 2, 3) and not grid.pseudo_labels
    # the scene's own labels are the targets; the codes are the seed's, as in the engine function
    images, labels = scene_batch("source", "val", [2], SIZE)
    np.testing.assert_array_equal(grid.labels[0], labels[0].numpy())
    ref = style_grid(svc.shared_dsp(dsp_dir), images, labels, model, 2, 2, step_size=0.25, seed=1)
    np.testing.assert_allclose(grid.ce_steps, ref.ce_steps, rtol=1e-5)
    same = styles.sample_styles(dsp_dir, index=2, size=SIZE, n_styles=2, seed=1)
    np.testing.assert_array_equal(grid.random, same.random)  # same seed, same codes, with or without a model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()) and not model.training
    # cached: the same object again, no recomputation
    again = styles.ascend_styles(dsp_dir, run, index=2, size=SIZE, n_styles=2, steps=2, step_size=0.25, seed=1,
                                 progress=lambda d, t: calls.append(-d))
    assert again is grid and calls == [1, 2, 3]
    assert not svc.is_busy()


def test_uploaded_image_uses_pseudo_labels_and_traverse(assets):
    run, dsp_dir = assets
    upload = (np.random.default_rng(0).random((40, 70, 3)) * 255).astype(np.uint8)
    grid = styles.ascend_styles(dsp_dir, run, image=upload, size=SIZE, n_styles=1, steps=1)
    assert grid.pseudo_labels and grid.inputs.shape == (1, *SIZE, 3)
    native = styles.sample_styles(dsp_dir, image=upload, size=None, n_styles=1)
    assert native.inputs.shape == (1, 40, 70, 3)
    tg = styles.traverse(dsp_dir, dim=1, values=[-1.0, 0.0, 1.0], model_path=run, index=0, size=SIZE)
    assert tg.images.shape == (3, *SIZE, 3) and tg.ce.shape == (3,) and not tg.pseudo_labels
    moved = styles.traverse(dsp_dir, dim=1, values=[-1.0, 0.0, 1.0], index=0, size=SIZE, base_seed=3)
    assert moved.ce is None and not np.array_equal(moved.base_eps, tg.base_eps)
    with pytest.raises(ConfigError, match="uint8"):
        styles.sample_styles(dsp_dir, image=upload.astype(np.float32))
