"""Activation atlas and error maps (npdg.explain): known maxima, hooks removed, exact counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from npdg.errors import ConfigError, DataError
from npdg.explain import ATLAS_COLUMNS, FP_COLOR, TP_COLOR, activation_atlas, error_colors, error_map, error_overlay
from npdg.models import build_model
from npdg.sensitivity import probe_layers


class OneBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(x)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_atlas_finds_the_planted_maximum():
    model = OneBN().train()
    x = torch.zeros(2, 3, 8, 16)
    x[0, 1, 5, 7] = 2.0
    x[1, 2, 0, 15] = 3.0
    calls = []
    t = activation_atlas(model, x, "bn", domains=["a", "b"], batch_size=1, progress=lambda d, n: calls.append((d, n)))
    assert model.training and _hooks(model) == 0 and calls == [(1, 2), (2, 2)]
    assert list(t.columns) == list(ATLAS_COLUMNS) and len(t) == 6
    row = t.query("image == 0 and unit == 1").iloc[0]
    assert (row["y"], row["x"], row["domain"]) == (5, 7, "a")
    assert row["max"] == pytest.approx(2.0 / np.sqrt(1 + 1e-5)) and row["mean"] == pytest.approx(row["max"] / 128)
    row = t.query("image == 1 and unit == 2").iloc[0]
    assert (row["y"], row["x"], row["image_y"], row["image_x"]) == (0, 15, 0.0, 15.0)
    assert t.query("image == 1 and unit == 0")["max"].item() == 0.0


def test_atlas_on_deeplab_filters_and_segformer_heads():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    cnn = build_model("deeplabv3plus", "resnet18", 5).eval()
    name = "net.encoder.layer2.0.bn1"
    t = activation_atlas(cnn, x, name)
    assert len(t) == 3 * 128 and (t["height"] == 8).all() and t["domain"].isna().all()
    assert _hooks(cnn) == 0 and not cnn.training
    # the same maximum as a hook-free look at the BN output
    seen = {}
    h = cnn.get_submodule(name).register_forward_hook(lambda m, i, o: seen.update(out=o.clone()))  # before the in-place ReLU
    with torch.no_grad():
        cnn(x)
    h.remove()
    np.testing.assert_allclose(t["max"].to_numpy(), seen["out"].amax(dim=(2, 3)).reshape(-1).numpy(), rtol=1e-5)
    mit = build_model("segformer", "mit_b0", 5).eval()
    head_layer = next(u for u in probe_layers(mit) if u.kind == "head" and u.size > 1)
    th = activation_atlas(mit, x, head_layer.name)
    assert len(th) == 3 * head_layer.size and (th["kind"] == "head").all()
    assert (th["height"] * th["width"] > 1).all() and (th["max"] >= th["mean"]).all()
    assert _hooks(mit) == 0
    with pytest.raises(ConfigError, match="not a unit layer"):
        activation_atlas(cnn, x, "net.segmentation_head")


def test_a_tap_ends_the_forward_at_its_layer_with_the_same_maps():
    """stop_after: the decoder and head never run for an encoder tap, the maps are the full forward's."""
    from npdg.explain import unit_maps

    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for model, name in ((build_model("deeplabv3plus", "resnet18", 5).eval(), "net.encoder.layer1.0.bn1"),
                        (build_model("segformer", "mit_b0", 5).eval(), None)):
        name = name or next(u.name for u in probe_layers(model) if u.kind == "head" and u.size > 1)
        ran = []
        h = model.net.segmentation_head.register_forward_hook(lambda *a, ran=ran: ran.append(1))
        maps = unit_maps(model, x, name, 1)
        h.remove()
        assert ran == [] and _hooks(model) == 0 and maps.shape[0] == 2
        atlas = activation_atlas(model, x, name)
        np.testing.assert_allclose(atlas.query("unit == 1")["max"].to_numpy(), maps.reshape(2, -1).max(1), rtol=1e-5)
        with torch.no_grad():
            assert model(x).shape[:2] == (2, 5)  # the model still runs whole afterwards
    seen = {}
    cnn = build_model("deeplabv3plus", "resnet18", 5).eval()
    h = cnn.get_submodule("net.encoder.layer1.0.bn1").register_forward_hook(lambda m, i, o: seen.update(out=o.clone()))
    with torch.no_grad():
        cnn(x)
    h.remove()
    np.testing.assert_allclose(unit_maps(cnn, x, "net.encoder.layer1.0.bn1", 3), seen["out"][:, 3].numpy(), rtol=1e-5)


def test_error_map_counts_and_masks():
    label = np.array([[0, 0, 1], [1, 2, 255], [2, 2, 0]])
    pred = np.array([[0, 1, 1], [1, 0, 2], [2, 1, 0]])
    err = error_map(pred, label, num_classes=3)
    assert err.tp.sum() == 5 and err.fp.sum() == 3 and err.ignored.sum() == 1
    assert err.tp_count.tolist() == [2, 2, 1] and err.fp_count.tolist() == [1, 2, 0] and err.fn_count.tolist() == [1, 0, 2]
    assert err.accuracy == pytest.approx(5 / 8)
    t = err.table()
    assert t["iou"].tolist() == pytest.approx([2 / 4, 2 / 4, 1 / 3])
    one = error_map(pred, label, class_id=2, num_classes=3)
    assert one.tp.sum() == 1 and one.fp.sum() == 0 and one.fn.sum() == 2
    assert one.fn[1, 1] and one.fn[2, 1] and not one.tp[1, 2]  # the ignored pixel counts nowhere
    assert not one.tp.flags.writeable
    colours = error_colors(one)
    assert tuple(colours[2, 0]) == TP_COLOR and colours[0, 0].sum() == 0
    over = error_overlay(np.full((3, 3, 3), 100, np.uint8), err, opacity=1.0)
    assert tuple(over[0, 1]) == FP_COLOR and tuple(over[1, 2]) == (100, 100, 100)
    with pytest.raises(DataError, match="outside"):
        error_map(pred, np.full((3, 3), 7), num_classes=3)
    with pytest.raises(ConfigError, match="same shape"):
        error_map(pred, label[:2])
