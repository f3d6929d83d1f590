"""Units, γ and torch-pruning coupling groups."""

import pytest
import torch
from torch import nn

from npdg.errors import ConfigError
from npdg.models import build_model
from npdg.models.gates import add_head_gates
from npdg.models.units import coupling_groups, gamma_vector, unit_layers, unit_table, unprunable_groups


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return build_model("deeplabv3plus", "resnet18", 4).eval()


def test_unit_layers_cover_encoder_and_decoder_bns(r18):
    layers = unit_layers(r18)
    bns = [n for n, m in r18.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert [l.name for l in layers] == bns
    assert all(l.kind == "filter" and l.param == f"{l.name}.weight" for l in layers)
    assert any(l.name.startswith("net.decoder") for l in layers) and any(l.name.startswith("net.encoder") for l in layers)
    assert not any("segmentation_head" in l.name for l in layers)
    with torch.no_grad():
        r18.get_submodule(layers[0].name).weight[3] = -2.5
    g = gamma_vector(r18, layers)
    assert g.numel() == sum(l.size for l in layers) and g[3].item() == 2.5


def test_residual_stream_is_one_group_and_every_group_is_exact(r18):
    groups = coupling_groups(r18)
    assert len(groups) == 21  # 4 residual streams + 8 block-internal BNs + 9 decoder groups
    stream = next(g for g in groups if g.root == "net.encoder.bn1")
    assert set(stream.layers) == {"net.encoder.bn1", "net.encoder.layer1.0.bn2", "net.encoder.layer1.1.bn2"}
    stage2 = next(g for g in groups if "net.encoder.layer2.0.downsample.1" in g.layers)
    assert set(stage2.layers) == {"net.encoder.layer2.0.bn2", "net.encoder.layer2.0.downsample.1", "net.encoder.layer2.1.bn2"}
    assert all(g.prunable for g in groups) and unprunable_groups(r18).empty


def test_unit_table_columns_and_groups(r18):
    t = unit_table(r18)
    assert list(t.columns[:5]) == ["layer", "unit", "kind", "gamma", "group"]
    assert len(t) == sum(l.size for l in unit_layers(r18))
    same = t[t.layer.isin(["net.encoder.layer1.0.bn2", "net.encoder.layer1.1.bn2"])]
    assert same.group.nunique() == 1 and (same.group >= 0).all()


def test_mit_heads_are_units_single_head_layers_excluded():
    m = build_model("segformer", "mit_b0", 4)
    add_head_gates(m)
    layers = unit_layers(m)
    heads = [l for l in layers if l.kind == "head"]
    assert [l.size for l in heads] == [1, 1, 2, 2, 5, 5, 8, 8]
    assert heads[0].param.endswith("attn.head_gate")
    t = unit_table(m)
    assert (t[t.kind == "head"].groupby("layer").group.first() == -1).sum() == 2  # stage-1 single heads
    assert (t[t.kind == "filter"].group >= 0).all()  # decoder fuse BN feeds only the classifier's input


def test_gamma_vector_missing_param_is_a_clear_error(r18):
    m = build_model("segformer", "mit_b0", 4)
    add_head_gates(m)
    layers = unit_layers(m)
    with pytest.raises(ConfigError, match="no γ parameter"):
        gamma_vector(r18, layers)
