"""The prune command end to end on a tiny run: output dir reloads, plan + cost JSON, bad input."""

import json

import torch
from torch import nn

from npdg.cli.prune import main as prune_main
from npdg.config import Config, apply_overrides, dump_config
from npdg.models import build_model, save_model
from npdg.pruning.physical import load_model
from npdg.pruning.selection import PruningPlan


def _run_dir(tmp_path, mode="erm"):
    torch.manual_seed(0)
    model = build_model("deeplabv3plus", "resnet18", 19)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0, 1)
    run = tmp_path / "src"
    run.mkdir()
    save_model(model, run / "model.safetensors")
    cfg = apply_overrides(Config(), ["data.size=64x64", "train.batch_size=2", "train.amp=false",
                                     "eval.include_source=false", f"train.mode={mode}", "train.log_every=1"])
    dump_config(cfg, run / "config.yaml")
    return run, model


def test_prune_l1norm_and_finetune_gives_a_loadable_run(tmp_path, capsys):
    run, dense = _run_dir(tmp_path)
    out = tmp_path / "pruned"
    rc = prune_main(["--run", str(run), "--out", str(out), "--criterion", "l1norm", "--rate", "0.3",
                     "--finetune-iters", "2", "--dsp", "none", "--cost-size", "64x64", "--cost-repeats", "1",
                     "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    plan = PruningPlan.load(out / "pruning_plan.json")
    assert plan.criterion == "l1norm" and plan.num_pruned["filter"] > 0
    cost = json.loads((out / "cost.json").read_text())
    assert cost["after"]["gflops"] < 0.8 * cost["before"]["gflops"]
    assert cost["after"]["params"] < cost["before"]["params"]
    model = load_model(out)  # plan replayed, fine-tuned weights loaded
    assert sum(p.numel() for p in model.parameters()) == cost["after"]["params"]
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 19, 64, 64)


def test_npdg_without_sparse_training_warns_and_threshold_edge_cases(tmp_path, capsys):
    run, _ = _run_dir(tmp_path)
    common = ["--run", str(run), "--dsp", "none", "--cost-size", "32x32", "--cost-repeats", "1", "--device", "cpu"]
    assert prune_main([*common, "--out", str(tmp_path / "a"), "--criterion", "npdg", "--rate", "0.2"]) == 0
    summary = json.loads((tmp_path / "a" / "prune.json").read_text())
    assert any("not sparse-trained" in w for w in summary["warnings"])
    assert prune_main([*common, "--out", str(tmp_path / "b"), "--threshold", "1e-9"]) == 0
    assert "prunes nothing" in capsys.readouterr().out
    # a threshold above every score is capped at --max-rate (the method's threshold mode), not refused
    assert prune_main([*common, "--out", str(tmp_path / "c"), "--threshold", "100", "--max-rate", "0.25"]) == 0
    assert "capped at the rate 0.25" in capsys.readouterr().out
    capped = json.loads((tmp_path / "c" / "prune.json").read_text())
    assert 0 < capped["pruned"]["filter"] <= 0.25 * capped["candidates"]["filter"]
    assert prune_main([*common, "--out", str(tmp_path / "d"), "--rate", "1.0"]) == 2
    assert "rate must be in [0, 1)" in capsys.readouterr().err
    assert prune_main([*common, "--out", str(tmp_path / "a"), "--rate", "0.2"]) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err


def test_npdg_with_sparse_training_and_dsp_finetune(tmp_path, capsys):
    """The full pipeline: sparse npdg training (probe refreshes, DSP batches) → prune → DSP fine-tune."""
    from conftest import tiny_dsp

    dsp = tiny_dsp().save(tmp_path / "dsp")
    run, _ = _run_dir(tmp_path)
    out = tmp_path / "npdg"
    rc = prune_main(["--run", str(run), "--out", str(out), "--criterion", "npdg", "--rate", "0.3",
                     "--sparse-iters", "2", "--finetune-iters", "1", "--lambda-s", "0.5", "--lam", "0.8",
                     "--refresh", "2", "--probe-images", "3",
                     "--dsp", str(dsp), "--cost-size", "64x64", "--cost-repeats", "1", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    from npdg.config import load_config

    assert load_config(out / "sparse" / "config.yaml").sparsity.lam == 0.8  # --lam reached the sparse phase
    assert load_config(out / "config.yaml").prune.lam == 0.8
    sparsity = load_config(out / "sparse" / "config.yaml").sparsity  # so did --refresh and --probe-images
    assert (sparsity.refresh, sparsity.probe_images) == (2, 3)
    summary = json.loads((out / "prune.json").read_text())
    assert summary["sparse_iters"] == 2 and summary["dsp"] == str(dsp) and summary["warnings"] == []
    assert sorted(p.name for p in (out / "sparse" / "sensitivity").glob("*.csv"))  # the probe ran
    sparse, src = load_model(out / "sparse"), load_model(run)
    changed = [not torch.equal(a, b) for (n, a), (_, b) in zip(src.state_dict().items(), sparse.state_dict().items())
               if n.endswith("bn1.weight")]
    assert any(changed)  # γ were trained
    assert PruningPlan.load(out / "pruning_plan.json").criterion == "npdg"
    finetune_log = (out / "metrics.jsonl").read_text().strip().splitlines()
    assert len(finetune_log) == 1 and json.loads(finetune_log[0])["iter"] == 1
    cost = json.loads((out / "cost.json").read_text())
    assert cost["after"]["gflops"] < cost["before"]["gflops"]
