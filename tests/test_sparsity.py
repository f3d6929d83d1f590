"""Sparse training (npdg.pruning.sparsity): the γ subgradient, w̃, modes in the training loop, sparse_train."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from npdg.config import Config, apply_overrides, dump_config
from npdg.data.specs import spread_images as probe_image_batch
from npdg.errors import ConfigError, DataError
from npdg.models import build_model, save_model
from npdg.models.gates import without_gates
from npdg.models.units import UnitLayer
from npdg.pruning.physical import load_model
from npdg.pruning.sparsity import SparsityHook, l1_penalty, normalized_weights, sparsity_grad_hook
from npdg.recipes import check_config, train
from npdg.recipes.modes import mode
from npdg.recipes.sparse import sparse_train

PALETTE = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.2, 0.2, 0.9]])


class Blocks(Dataset):
    """3 colour-coded classes in 8×8 blocks (the sample-dict contract)."""

    def __init__(self, n: int = 8, size=(32, 32), seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        h, w = size
        blocks = torch.randint(0, 3, (n, h // 8, w // 8), generator=g)
        self.labels = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)
        self.images = (PALETTE[self.labels].permute(0, 3, 1, 2) + 0.05 * torch.randn(n, 3, h, w, generator=g)).clamp(0, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "domain": "blocks", "split": "train",
                "index": i, "name": f"b{i}"}


class Tiny(nn.Module):
    """Two conv-BN-ReLU layers and a 1×1 classifier."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.segmentation_head = nn.Conv2d(6, classes, 1)

    def forward(self, x):
        return self.segmentation_head(self.features(x))


LAYERS = [UnitLayer("features.1", "filter", 8, "features.1.weight"), UnitLayer("features.4", "filter", 6, "features.4.weight")]


def _with_grads(model: nn.Module) -> None:
    for layer in LAYERS:
        p = model.get_parameter(layer.param)
        with torch.no_grad():
            p.copy_(torch.linspace(-1, 1, p.numel()))  # both signs and an exact 0 is avoided by even counts
        p.grad = torch.full_like(p, 0.5)


def test_slimming_hook_adds_lambda_sign_gamma():
    model = Tiny()
    _with_grads(model)
    sparsity_grad_hook(LAYERS, None, 0.1)(model, 0)
    g = model.get_parameter("features.1.weight")
    torch.testing.assert_close(g.grad, 0.5 + 0.1 * torch.sign(g.detach()))


def test_npdg_hook_uses_weights_normalized_to_mean_one():
    model = Tiny()
    _with_grads(model)
    w = {"features.1": torch.arange(8, dtype=torch.float32), "features.4": torch.full((6,), 2.0)}
    scales = normalized_weights(LAYERS, w)
    assert torch.cat(scales).mean().item() == pytest.approx(1.0)
    mean = (torch.arange(8.0).sum() + 12.0) / 14
    torch.testing.assert_close(scales[0], torch.arange(8.0) / mean)
    sparsity_grad_hook(LAYERS, w, 0.2)(model, 3)
    g1, g4 = model.get_parameter("features.1.weight"), model.get_parameter("features.4.weight")
    torch.testing.assert_close(g1.grad, 0.5 + 0.2 * torch.sign(g1.detach()) * torch.arange(8.0) / mean)
    torch.testing.assert_close(g4.grad, 0.5 + 0.2 * torch.sign(g4.detach()) * 2.0 / mean)
    assert g1.grad[0] == 0.5  # w = 0: the least style-sensitive unit is not penalized
    # the penalty value and the degenerate / malformed cases
    with torch.no_grad():
        model.get_parameter("features.1.weight").fill_(1.0)
        model.get_parameter("features.4.weight").fill_(-1.0)
    assert l1_penalty(model, LAYERS, None) == pytest.approx(14.0)
    assert l1_penalty(model, LAYERS, w) == pytest.approx(14.0)  # Σ w̃ = number of units
    assert normalized_weights(LAYERS, {k: torch.zeros_like(v) for k, v in w.items()}) == [None, None]
    with pytest.raises(DataError, match="have 3 values, the layer has 6"):
        normalized_weights(LAYERS, {**w, "features.4": torch.ones(3)})
    with pytest.raises(DataError, match="no sensitivity weights for layer 'features.4'"):
        normalized_weights(LAYERS, {"features.1": w["features.1"]})
    with pytest.raises(ConfigError):
        SparsityHook(LAYERS, None, -1.0)


def test_mode_lambda_and_probe_images():
    assert mode("npdg").lam_for(0.4) == 0.4 and mode("npdg_unary").lam_for(0.4) == 1.0
    assert mode("npdg_binary").lam_for(0.4) == 0.0
    with pytest.raises(ConfigError):
        mode("l1norm")  # a pruning criterion, not a training mode
    ds = Blocks(8)
    imgs = probe_image_batch(ds, 3)
    assert imgs.shape == (3, 3, 32, 32)
    torch.testing.assert_close(imgs[1], ds[2]["image"])  # indices 0, 2, 5: spread over the set
    assert probe_image_batch(ds, 50).shape[0] == 8


def test_config_sections_and_validation():
    cfg = apply_overrides(Config(), ["train.mode=npdg_unary", "dsp.path=/some/dsp", "sparsity.lambda_s=1e-5"])
    assert cfg.sparsity.lambda_s == 1e-5 and cfg.dsp.path == "/some/dsp"
    assert "sparsity:" in dump_config(cfg) and "dsp:" in dump_config(cfg)
    with pytest.raises(ConfigError, match="needs a trained DSP: set dsp.path"):
        check_config(apply_overrides(Config(), ["train.mode=npdg"]))
    check_config(apply_overrides(Config(), ["train.mode=slimming"]))  # Network Slimming may train on clean batches
    for bad, match in (("sparsity.lam=2", "sparsity.lam"), ("sparsity.styles=1", "sparsity.styles"),
                       ("sparsity.unary=x", "sparsity.unary"), ("dsp.rule=x", "dsp.rule")):
        with pytest.raises(ConfigError, match=match):
            apply_overrides(Config(), [bad])


def _cfg(tmp: Path, mode: str, *extra: str) -> Config:
    return apply_overrides(Config(), [
        "data.size=32x32", "train.iters=4", "train.batch_size=2", "train.log_every=2", "train.checkpoint_every=4",
        "train.scale_range=1,1", "train.hflip=false", "train.lr=0.05", "model.num_classes=3", f"train.mode={mode}",
        "sparsity.probe_images=2", "sparsity.styles=2", *extra,
    ])


@pytest.fixture(scope="module")
def dsp_dir(tmp_path_factory) -> Path:
    from conftest import tiny_dsp

    return tiny_dsp().save(tmp_path_factory.mktemp("dsp") / "dsp")


def test_npdg_mode_trains_with_dsp_refreshes_and_penalizes(tmp_path, dsp_dir):
    cfg = _cfg(tmp_path, "npdg", f"dsp.path={dsp_dir}", "sparsity.refresh=2", "sparsity.lambda_s=0.5")
    seen = []

    class Spy:  # records the batch size the loss sees: [clean, stylized] doubles it
        def __call__(self, model, images, labels, logits, step):
            seen.append(images.shape[0])
            return logits.sum() * 0

    torch.manual_seed(0)
    model = Tiny()
    res = train(cfg, tmp_path / "run", model=model, train_dataset=Blocks(), evaluate_at_end=False, extra_losses=[Spy()])
    assert res.iters_done == 4 and seen == [4, 4, 4, 4]
    tables = sorted(p.name for p in (tmp_path / "run" / "sensitivity").glob("*.csv"))
    assert tables == ["iter_000000.csv", "iter_000002.csv"]  # before step 1, then every iters/refresh
    # a huge λ_s drives γ towards 0 compared with the same run without the penalty
    torch.manual_seed(0)
    plain = Tiny()
    train(_cfg(tmp_path, "npdg", f"dsp.path={dsp_dir}", "sparsity.refresh=0", "sparsity.lambda_s=0"), None,
          model=plain, train_dataset=Blocks(), evaluate_at_end=False)
    assert l1_penalty(model, LAYERS, None) < l1_penalty(plain, LAYERS, None) - 1.0


def test_slimming_mode_without_dsp_uses_clean_batches(tmp_path):
    seen = []
    torch.manual_seed(0)
    model = Tiny()
    before = l1_penalty(model, LAYERS, None)
    train(_cfg(tmp_path, "slimming", "sparsity.lambda_s=0.5"), None, model=model, train_dataset=Blocks(),
          evaluate_at_end=False, extra_losses=[lambda m, x, y, z, s: seen.append(x.shape[0]) or z.sum() * 0])
    assert seen == [2, 2, 2, 2]
    assert l1_penalty(model, LAYERS, None) < before - 1.0


def test_without_gates_folds_exactly_and_keeps_original():
    from npdg.models.gates import add_head_gates, head_gate_modules

    torch.manual_seed(0)
    model = build_model("segformer", "mit_b0", 3).eval()
    add_head_gates(model)
    with torch.no_grad():
        for attn in head_gate_modules(model).values():
            attn.head_gate.uniform_(0.2, 1.5)
    plain = without_gates(model)
    assert plain is not model and not head_gate_modules(plain) and head_gate_modules(model)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), atol=1e-5, rtol=1e-4)
    cnn = Tiny()
    assert without_gates(cnn) is cnn


def test_sparse_train_continues_a_run(tmp_path):
    torch.manual_seed(0)
    base = build_model("deeplabv3plus", "resnet18", 19)  # the synthetic source has 19 classes
    run = tmp_path / "erm"
    run.mkdir()
    save_model(base, run / "model.safetensors")
    dump_config(_cfg(tmp_path, "erm", "data.length=4", "model.num_classes=19"), run / "config.yaml")
    out = sparse_train(run, tmp_path / "sparse", "slimming", iters=1, dsp_dir=None, lambda_s=1e-3, device="cpu",
                       overrides=["data.size=32x64"])
    model = load_model(out)
    assert (out / "config.yaml").read_text().count("mode: slimming") == 1
    assert not torch.equal(model.net.encoder.bn1.weight, base.net.encoder.bn1.weight)
    with pytest.raises(ConfigError, match="criterion must be one of"):
        sparse_train(run, tmp_path / "x", "l1norm", 1, None, 1e-3)
    with pytest.raises(DataError, match="not a run directory"):
        sparse_train(tmp_path, tmp_path / "x", "slimming", 1, None, 1e-3)
