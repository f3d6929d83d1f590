"""The README table script (bench/embedded_table.py): row commands, metrics and the markdown it prints."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import pytest
from conftest import bench_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def table():
    return bench_module("embedded_table")


def _args(**kw) -> Namespace:
    base = dict(rate=0.3, finetune_iters=60, sparse_iters=40, dsp="assets/dsp_tiny", cost_size="128x256",
                lambda_s=None, limit=50, config="c.yaml", set=[])
    return Namespace(**{**base, **kw})


def _fake_run(path: Path, mious: dict[str, float]) -> Path:
    (path / "eval").mkdir(parents=True)
    results = {d: {"miou": v} for d, v in mious.items()}
    (path / "eval" / "final.json").write_text(json.dumps({"results": results}))
    return path


def test_every_criterion_gets_the_same_iterations_after_the_base(table, monkeypatch, tmp_path):
    cmds: list[list[str]] = []
    monkeypatch.setattr(table, "run", cmds.append)
    args = _args(lambda_s=0.02)
    table.prune_row("npdg", 0, args, tmp_path / "n", tmp_path / "base")
    table.prune_row("l1norm", 0, args, tmp_path / "l", tmp_path / "base")
    npdg, l1 = cmds[0], cmds[2]
    assert npdg[npdg.index("--sparse-iters") + 1] == "40" and npdg[npdg.index("--finetune-iters") + 1] == "60"
    assert npdg[npdg.index("--lambda-s") + 1] == "0.02"
    assert "--sparse-iters" not in l1 and "--lambda-s" not in l1
    assert l1[l1.index("--finetune-iters") + 1] == "100"  # 40 sparse + 60 fine-tune, all as fine-tuning
    assert cmds[1][cmds[1].index("eval") - 2:][:3] == ["-m", "npdg", "eval"]


def test_row_metrics_mean_excludes_source_and_content_shift(table, tmp_path):
    held = {"photo": 0.2, "night": 0.1, "fog": 0.1, "rain": 0.1, "overcast": 0.1, "toon": 0.0}
    run = _fake_run(tmp_path / "r", {"source": 0.5, "suburb": 0.4, **held})
    m = table.row_metrics(run)
    assert m["mean held-out"] == pytest.approx(10.0)
    assert m["source"] == pytest.approx(50.0) and "GFLOPs" not in m
    (run / "cost_dense.json").write_text(json.dumps({"gflops": 1.25, "params": 12_330_000, "latency_ms": {"batch1": 40.0}}))
    m = table.row_metrics(run)
    assert (m["GFLOPs"], m["params (M)"], m["latency b1 (ms)"]) == (1.25, 12.33, 40.0)
    # a pruned run's cost.json ("after") wins over a dense measurement
    (run / "cost.json").write_text(json.dumps({"after": {"gflops": 0.7, "params": 6_000_000, "latency_ms": {}}}))
    m = table.row_metrics(run)
    assert m["GFLOPs"] == 0.7 and m["latency b1 (ms)"] != m["latency b1 (ms)"]  # NaN when not timed


def test_markdown_reports_mean_and_std_over_seeds(table):
    rows = {"erm": [{"source": 40.0, "mean held-out": 8.0}, {"source": 50.0, "mean held-out": 10.0}],
            "prune:npdg": [{"source": 30.0, "mean held-out": 12.0, "GFLOPs": 0.71, "params (M)": 6.5}]}
    text = table.markdown(rows)
    lines = text.splitlines()
    assert lines[0].startswith("| row | source |") and "GFLOPs" in lines[0] and "latency" not in lines[0]
    assert "| erm | 45.0 ± 5.0 |" in lines[2] and "9.0 ± 1.0" in lines[2]
    assert "| prune:npdg | 30.0 |" in lines[3] and "| 0.71 | 6.50 |" in lines[3]
    assert lines[2].endswith("| – | – |")  # erm has no cost columns
