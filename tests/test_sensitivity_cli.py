"""``python -m npdg sensitivity``: writes a table matching the run's model; bad input exits 2 with a message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from npdg.cli import main
from npdg.config import Config, apply_overrides, dump_config
from npdg.models import build_model, load_model, save_model
from npdg.sensitivity import PARTNERS_COLUMN, TABLE_COLUMNS, SensitivityResult


@pytest.fixture(scope="module")
def run_and_dsp(tmp_path_factory) -> tuple[Path, Path]:
    from conftest import tiny_dsp

    root = tmp_path_factory.mktemp("sens_cli")
    torch.manual_seed(0)
    run = root / "run"
    run.mkdir()
    save_model(build_model("deeplabv3plus", "resnet18", 19), run / "model.safetensors")
    dump_config(apply_overrides(Config(), ["data.size=32x64", "data.length=4", "train.batch_size=2"]), run / "config.yaml")
    return run, tiny_dsp().save(root / "dsp")


def test_cli_writes_table(run_and_dsp, tmp_path, capsys):
    run, dsp = run_and_dsp
    out = tmp_path / "sens.parquet"
    rc = main(["sensitivity", "--run", str(run), "--dsp", str(dsp), "--images", "3", "--styles", "2",
               "--lambda", "0.5", "--batch-size", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "3 images × 2 styles" in printed and str(out) in printed
    res = SensitivityResult.load(out)
    assert list(res.table.columns) == [*TABLE_COLUMNS, PARTNERS_COLUMN]
    assert res.meta["lam"] == 0.5 and res.meta["images"] == 3 and res.meta["size"] == [32, 64]
    res.check_model(load_model(run))
    assert (res.table["group"] >= -1).all()
    # groups come from torch-pruning's coupling analysis where units.py provides it
    assert res.table["group"].max() >= 0


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--styles", "1"], "--styles must be >= 2"),
        (["--lambda", "1.5"], "--lambda must be in"),
        (["--out", "x.txt"], "must end in .csv or .parquet"),
    ],
)
def test_cli_bad_arguments(run_and_dsp, tmp_path, capsys, extra, match):
    run, dsp = run_and_dsp
    args = ["sensitivity", "--run", str(run), "--dsp", str(dsp), "--out", str(tmp_path / "s.csv"), "--no-progress"]
    assert main(args + extra) == 2
    assert match in capsys.readouterr().err


def test_cli_missing_run_or_dsp(run_and_dsp, tmp_path, capsys):
    run, dsp = run_and_dsp
    assert main(["sensitivity", "--run", str(tmp_path), "--dsp", str(dsp), "--out", str(tmp_path / "s.csv")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["sensitivity", "--run", str(run), "--dsp", str(tmp_path), "--out", str(tmp_path / "s.csv")]) == 2
    assert "not a DSP folder" in capsys.readouterr().err
