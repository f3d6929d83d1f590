"""The ``dsp`` and ``dsp_random`` training modes: [clean, stylized] batches, ε ascent only in ``dsp``."""

from __future__ import annotations

import pytest
import torch
from test_sparsity import Blocks, Tiny, _cfg, dsp_dir  # noqa: F401  (fixture)

from npdg.config import Config, apply_overrides
from npdg.dsp.model import DSPBatchTransform, dsp_batch_transform
from npdg.errors import ConfigError
from npdg.recipes import check_config, train


class Spy:
    """Extra loss that records what the loss sees: batch size and the stylized half."""

    def __init__(self):
        self.sizes, self.stylized = [], []

    def __call__(self, model, images, labels, logits, step):
        self.sizes.append(images.shape[0])
        half = images.shape[0] // 2
        assert torch.equal(labels[:half], labels[half:])  # labels duplicated for the stylized copies
        self.stylized.append(images[half:].detach().clone())
        return logits.sum() * 0


@pytest.mark.parametrize("mode", ["dsp", "dsp_random"])
def test_dsp_modes_train_on_clean_plus_stylized(tmp_path, dsp_dir, mode):  # noqa: F811
    spy = Spy()
    torch.manual_seed(0)
    res = train(_cfg(tmp_path, mode, f"dsp.path={dsp_dir}"), None, model=Tiny(), train_dataset=Blocks(),
                evaluate_at_end=False, extra_losses=[spy])
    assert res.iters_done == 4 and spy.sizes == [4, 4, 4, 4]
    assert all(((s >= 0) & (s <= 1)).all() for s in spy.stylized)


def test_dsp_mode_ascends_and_dsp_random_does_not(dsp_dir):  # noqa: F811
    cfg = _cfg(None, "dsp", f"dsp.path={dsp_dir}", "dsp.ascent_steps=2")
    model = Tiny()
    t = dsp_batch_transform(cfg, model, "cpu", mode="ascend")
    assert isinstance(t, DSPBatchTransform) and t.mode == "ascend" and t.ascent_steps == 2 and t.segmentor is model
    r = dsp_batch_transform(cfg, model, "cpu", mode="random")
    assert r.mode == "random" and r.ascent_steps == 0


def test_dsp_modes_need_a_dsp():
    with pytest.raises(ConfigError, match="needs a trained DSP"):
        check_config(apply_overrides(Config(), ["train.mode=dsp"]))
