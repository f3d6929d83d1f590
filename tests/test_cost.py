"""Cost: FLOPs (with torch-pruning cross-check), params, latency, the cost command."""

import json

import pytest
import torch
from torch import nn

from npdg.cli.cost import main as cost_main
from npdg.cost import compare, cost_report, count_flops, count_macs_tp, measure_latency
from npdg.errors import ConfigError
from npdg.models import build_model, save_model
from npdg.pruning.physical import prune_model
from npdg.pruning.selection import select


def test_flops_of_a_single_conv_are_exact():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False))
    # 8 out × 3 in × 9 taps × 16×16 positions multiply-adds, 2 FLOPs each
    assert count_flops(conv, (16, 16)) == 2 * 8 * 3 * 9 * 16 * 16
    assert count_macs_tp(conv, (16, 16)) == 8 * 3 * 9 * 16 * 16


def test_pruning_drops_flops_and_counters_agree():
    torch.manual_seed(0)
    model = build_model("deeplabv3plus", "resnet18", 3).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0, 1)
    pruned = prune_model(model, select(model, rate=0.3))
    b, a = cost_report(model, (64, 64), batches=()), cost_report(pruned, (64, 64), batches=())
    assert 0.3 < a.gflops / b.gflops < 0.75
    assert a.params < b.params
    for r in (a, b):  # torch counter (2·MAC) and torch-pruning's MACs agree within 10 %
        assert abs(r.gflops / (2 * r.gmacs_tp) - 1) < 0.1
    ratio = compare(b, a)["ratio"]
    assert ratio["gflops"] == pytest.approx(a.gflops / b.gflops)


def test_latency_is_positive_and_validates():
    conv = nn.Conv2d(3, 4, 3)
    assert measure_latency(conv, (16, 16), batch=2, warmup=0, repeats=3) > 0
    with pytest.raises(ConfigError):
        measure_latency(conv, (16, 16), repeats=0)


def test_cost_command_writes_json(tmp_path, capsys):
    save_model(build_model("deeplabv3plus", "resnet18", 3), tmp_path / "model.safetensors")
    out = tmp_path / "cost.json"
    rc = cost_main(["--checkpoint", str(tmp_path / "model.safetensors"), "--size", "64x64", "--batches", "1,2",
                    "--repeats", "2", "--warmup", "1", "--json", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())
    assert set(d["latency_ms"]) == {"batch1", "batch2"} and d["device"] == "cpu"
    assert d["gflops"] > 0 and d["params"] > 1e6 and d["checkpoint_bytes"] > 4 * d["params"]
    assert cost_main(["--checkpoint", str(tmp_path / "missing.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err
