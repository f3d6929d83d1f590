"""Style-sensitivity probe (npdg.sensitivity): sanity units, streaming == brute force, hooks, IO."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_dsp
from torch import nn

from npdg.errors import ConfigError, DataError
from npdg.models import build_model
from npdg.models.units import UnitLayer
from npdg.sensitivity import (
    PARTNERS_COLUMN,
    TABLE_COLUMNS,
    LayerStats,
    SensitivityResult,
    minmax,
    parse_partners,
    probe,
    probe_layers,
    recombine,
)


class ToyUnits(nn.Module):
    """Four hand-made units behind one BatchNorm (eval, identity statistics):
    0 = red channel (colour), 1 = blue channel (independent colour), 2 = horizontal gradient of
    green (blind to additive colour shifts), 3 = a copy of unit 0."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.eval()

    def forward(self, x):
        r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
        grad = torch.zeros_like(g)
        grad[..., 1:] = g[..., 1:] - g[..., :-1]
        return self.bn(torch.cat([r, b, grad, r], dim=1))


def colour_styles(b: int = 16, k: int = 4, size=(8, 8), seed: int = 0) -> torch.Tensor:
    """[b·K, 3, H, W]: b content images, each shifted by K random per-channel colour offsets."""
    g = torch.Generator().manual_seed(seed)
    content = torch.rand(b, 1, 3, *size, generator=g) * 0.3
    shift = torch.randn(b, k, 3, 1, 1, generator=g)
    return (content + shift).reshape(b * k, 3, *size)


TOY_LAYERS = [UnitLayer("bn", "filter", 4, "bn.weight")]


def test_sanity_colour_copy_and_blind_units():
    res = probe(ToyUnits(), colour_styles(k=8), None, n_styles=8, layers=TOY_LAYERS, with_groups=False)
    t = res.table.set_index("unit")
    # colour units: most of their variance comes from style (expected share ≈ (K−1)/K)
    assert t.loc[0, "unary"] > 0.8 and t.loc[1, "unary"] > 0.8 and t.loc[3, "unary"] > 0.8
    # style-blind unit: exactly no within-style variance, no correlation
    assert t.loc[2, "unary"] < 1e-6 and t.loc[2, "binary"] == 0.0
    assert t.loc[2, "combined"] == pytest.approx(0.0, abs=1e-6)
    # the copy pair: |R_03| = 1 → c ≥ 1/3; the independent colour unit is far below
    assert t.loc[0, "binary"] == pytest.approx(t.loc[3, "binary"], abs=1e-9)
    assert t.loc[0, "binary"] > 0.33 and t.loc[1, "binary"] < 0.2
    assert t.loc[0, "w_binary"] == pytest.approx(1.0) and t.loc[2, "w_binary"] == 0.0
    assert list(res.table.columns) == [*TABLE_COLUMNS, PARTNERS_COLUMN]
    # partners: the copy pair names each other first with |R| = 1; the blind unit has none
    top0, top3 = parse_partners(t.loc[0, PARTNERS_COLUMN]), parse_partners(t.loc[3, PARTNERS_COLUMN])
    assert top0[0][0] == 3 and top0[0][1] == pytest.approx(1.0, abs=1e-3)
    assert top3[0][0] == 0 and [j for j, _ in top0].count(2) == 0
    assert parse_partners(t.loc[2, PARTNERS_COLUMN]) == []
    assert all(a[1] >= b[1] for a, b in zip(top0, top0[1:]))  # strongest first


def test_parse_partners_rejects_garbage():
    assert parse_partners(float("nan")) == [] and parse_partners("") == []
    assert parse_partners("3:0.5;1:0.25") == [(3, 0.5), (1, 0.25)]
    with pytest.raises(DataError, match="malformed partners"):
        parse_partners("3:x")


def test_raw_unary_is_the_within_style_variance():
    x = colour_styles(b=4, k=3)
    res = probe(ToyUnits(), x, None, n_styles=3, unary="raw", layers=TOY_LAYERS, with_groups=False)
    red = x[:, 0].reshape(4, 3, -1).double() / np.sqrt(1 + 1e-5)  # BN eval: x / sqrt(1 + eps)
    expected = red.var(dim=1, unbiased=False).mean().item()
    assert res.table.loc[0, "unary"] == pytest.approx(expected, rel=1e-5)


def brute_force(acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference unary share and binary from stored activations [b, K, C, P] (float64)."""
    b, k, c, p = acts.shape
    within = acts.var(axis=1).mean(axis=(0, 2))
    total = acts.transpose(2, 0, 1, 3).reshape(c, -1).var(axis=1)
    u = within / (total + 1e-8)
    delta = (acts - acts.mean(axis=1, keepdims=True)).transpose(2, 0, 1, 3).reshape(c, -1)
    std = np.sqrt((delta**2).sum(1))
    r = np.abs((delta @ delta.T) / np.outer(std, std))
    np.fill_diagonal(r, 0)
    return u, r.sum(1) / (c - 1)


def test_streaming_equals_brute_force_across_batches():
    torch.manual_seed(0)
    model = build_model("deeplabv3plus", "resnet18", 5).eval()
    k = 2
    styled = torch.rand(3 * k, 3, 32, 32)
    names = ["net.encoder.layer1.0.bn1", "net.decoder.block1.1"]
    layers = [l for l in probe_layers(model) if l.name in names]
    assert len(layers) == 2
    stored = {}
    hooks = [dict(model.named_modules())[n].register_forward_hook(
        lambda m, i, o, n=n: stored.setdefault(n, []).append(o.detach().double())) for n in names]
    with torch.no_grad():
        model(styled)
    for h in hooks:
        h.remove()
    res = probe(model, styled, None, n_styles=k, batch_size=1, layers=layers, with_groups=False)  # 3 batches
    for n in names:
        a = torch.cat(stored[n]).numpy()
        a = a.reshape(3, k, a.shape[1], -1)
        u, c = brute_force(a)
        rows = res.table[res.table.layer == n].sort_values("unit")
        np.testing.assert_allclose(rows["unary"], u, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(rows["binary"], c, rtol=1e-4, atol=1e-6)


def test_layer_stats_merge_is_order_free():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 6, 3, 7, generator=g) * 3 + 10  # [C, b, K, P] with a large mean
    one = LayerStats("l", 5, 3)
    one.update(x)
    many = LayerStats("l", 5, 3)
    for part in x.split([1, 3, 2], dim=1):
        many.update(part)
    np.testing.assert_allclose(one.unary(), many.unary(), rtol=1e-6)
    np.testing.assert_allclose(one.binary(), many.binary(), rtol=1e-6)
    with pytest.raises(DataError, match="expected 5 units"):
        many.update(torch.zeros(4, 1, 3, 2))


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_dsp_probe_on_deeplab_no_hook_leak_mode_restored():
    torch.manual_seed(0)
    model = build_model("deeplabv3plus", "resnet18", 5).train()
    before = _hook_count(model)
    calls = []
    res = probe(model, torch.rand(3, 3, 32, 32), tiny_dsp(), n_styles=2, batch_size=2, with_groups=False,
                progress=lambda i, n: calls.append((i, n)))
    assert _hook_count(model) == before and model.training
    assert calls == [(1, 2), (2, 2)]
    t = res.table
    layers = probe_layers(model)
    assert len(t) == sum(l.size for l in layers) and t["layer"].nunique() == len(layers)
    assert t["kind"].eq("filter").all() and not t["layer"].str.contains("segmentation_head").any()
    for col in ("unary", "binary", "w_unary", "w_binary", "combined"):
        assert t[col].between(0, 1).all(), col
    # per layer the normalized weights span [0, 1]
    spans = t.groupby("layer")["w_unary"].agg(["min", "max"])
    assert (spans["min"] == 0).all() and np.isclose(spans["max"], 1).all()
    np.testing.assert_allclose(t["combined"], 0.4 * t["w_unary"] + 0.6 * t["w_binary"])
    bn = dict(model.named_modules())["net.encoder.bn1"]
    np.testing.assert_allclose(t[t.layer == "net.encoder.bn1"]["gamma"], bn.weight.detach().numpy())
    assert res.meta["arch"] == "deeplabv3plus" and res.meta["images"] == 3 and res.meta["styles"] == 2
    assert len(res.layers) == len(layers) and set(res.weights()) == {l.name for l in layers}


def test_hooks_removed_when_forward_fails():
    class Failing(ToyUnits):
        def forward(self, x):
            super().forward(x)
            raise RuntimeError("boom")

    model = Failing().train()
    before = _hook_count(model)
    with pytest.raises(RuntimeError, match="boom"):
        probe(model, torch.rand(4, 3, 8, 8), None, n_styles=2, layers=TOY_LAYERS, with_groups=False)
    assert model.training
    assert _hook_count(model) == before
    with pytest.raises(DataError, match="not a module"):
        probe(model, torch.rand(4, 3, 8, 8), None, n_styles=2, with_groups=False,
              layers=[UnitLayer("nope", "filter", 4, "nope.weight")])
    assert _hook_count(model) == before


def test_mit_heads_probed_after_gates():
    from npdg.models.gates import add_head_gates

    torch.manual_seed(0)
    model = build_model("segformer", "mit_b0", 5)
    add_head_gates(model)
    attn = dict(model.named_modules())["net.encoder.block4.0.attn"]
    with torch.no_grad():
        attn.head_gate[3] = 0.0  # a pruned head outputs exactly 0 → no style variance at all
        attn.head_gate[5] = 0.5
    res = probe(model, torch.rand(2 * 2, 3, 32, 32), None, n_styles=2, with_groups=False)
    heads = res.table[res.table.kind == "head"]
    assert heads.groupby("layer").size().to_dict()["net.encoder.block4.0.attn"] == 8
    assert heads["layer"].nunique() == 8  # 2 blocks × 4 stages
    row = heads[(heads.layer == "net.encoder.block4.0.attn")].set_index("unit")
    assert row.loc[3, "unary"] == 0.0 and row.loc[3, "binary"] == 0.0
    assert row.loc[5, "gamma"] == 0.5 and row.loc[0, "gamma"] == 1.0
    assert row.loc[0, "unary"] > 0


def test_save_load_csv_parquet_and_model_check(tmp_path):
    torch.manual_seed(0)
    model = build_model("deeplabv3plus", "resnet18", 5)
    res = probe(model, torch.rand(4, 3, 32, 32), None, n_styles=2, with_groups=False)
    for name in ("s.csv", "s.parquet"):
        back = SensitivityResult.load(res.save(tmp_path / name))
        pd.testing.assert_frame_equal(back.table, res.table, check_dtype=False)
        assert back.meta == res.meta
        back.check_model(model)
    # every tool reads the CSV with default arguments; the metadata lives in the sidecar s.json
    plain = pd.read_csv(tmp_path / "s.csv")
    assert list(plain.columns) == list(res.table.columns) and len(plain) == len(res.table)
    assert json.loads((tmp_path / "s.json").read_text()) == res.meta
    import pyarrow.parquet as pq

    assert b"npdg_sensitivity" in pq.read_schema(tmp_path / "s.parquet").metadata
    # tables written in npdg's first format (metadata as a '# npdg-sensitivity' comment line) still load
    old = tmp_path / "old.csv"
    old.write_text("# npdg-sensitivity " + json.dumps(res.meta) + "\n" + res.table.to_csv(index=False))
    pd.testing.assert_frame_equal(SensitivityResult.load(old).table, res.table, check_dtype=False)
    (tmp_path / "nometa.csv").write_text(res.table.to_csv(index=False))
    with pytest.raises(DataError, match="no metadata"):
        SensitivityResult.load(tmp_path / "nometa.csv")
    with pytest.raises(ConfigError, match=r"\.csv or \.parquet"):
        res.save(tmp_path / "s.txt")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not an npdg sensitivity table"):
        SensitivityResult.load(tmp_path / "other.csv")
    with pytest.raises(DataError, match="not found"):
        SensitivityResult.load(tmp_path / "missing.csv")
    mit = build_model("segformer", "mit_b0", 5)
    with pytest.raises(DataError, match="deeplabv3plus/resnet18 model, not this segformer/mit_b0"):
        res.check_model(mit)
    other = build_model("deeplabv3plus", "resnet50", 5)
    with pytest.raises(DataError, match="not this deeplabv3plus/resnet50"):
        res.check_model(other)


def test_recombine_and_minmax_and_bad_args():
    res = probe(ToyUnits(), colour_styles(b=4), None, n_styles=4, layers=TOY_LAYERS, with_groups=False)
    unary_only = recombine(res, 1.0)
    np.testing.assert_allclose(unary_only.table["combined"], res.table["w_unary"])
    assert unary_only.meta["lam"] == 1.0
    np.testing.assert_allclose(minmax(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(minmax(np.array([5.0, 5.0])), [0.0, 0.0])
    x = colour_styles(b=2)
    for kwargs, match in (({"n_styles": 1}, "at least 2 styles"), ({"lam": 1.5}, r"\[0, 1\]"),
                          ({"unary": "mean"}, "unary must be"), ({"n_styles": 3}, "not a multiple")):
        with pytest.raises(ConfigError, match=match):
            probe(ToyUnits(), x, None, layers=TOY_LAYERS, with_groups=False, **{"n_styles": 4, **kwargs})
    with pytest.raises(DataError, match="no prunable units"):
        probe(nn.Sequential(nn.Conv2d(3, 3, 1)), x, None, n_styles=4, with_groups=False)
