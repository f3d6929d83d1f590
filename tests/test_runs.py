"""Run directories, atomic checkpoints, RNG capture and ``runs list`` (npdg.runs, npdg.train_cli)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import yaml

import npdg.runs as runs_mod
from npdg.cli import main
from npdg.errors import ConfigError, NpdgError
from npdg.runs import (
    atomic_save,
    capture_rng_state,
    list_runs,
    load_checkpoint,
    prepare_run_dir,
    read_metrics,
    restore_rng_state,
    truncate_metrics,
)


def test_existing_run_dir_is_refused_unless_resume_or_overwrite(tmp_path):
    run = prepare_run_dir(tmp_path / "r")
    assert run.checkpoints.is_dir() and run.eval.is_dir()
    (run.root / "metrics.jsonl").write_text('{"iter": 1, "loss": 2.0}\n')
    with pytest.raises(ConfigError, match=r"already exists.*--resume.*--overwrite"):
        prepare_run_dir(tmp_path / "r")
    with pytest.raises(ConfigError, match="no checkpoint"):
        prepare_run_dir(tmp_path / "r", resume=True)
    with pytest.raises(ConfigError, match="cannot be used together"):
        prepare_run_dir(tmp_path / "r", resume=True, overwrite=True)
    run = prepare_run_dir(tmp_path / "r", overwrite=True)
    assert not run.metrics.exists()  # the old run is gone
    torch.save({"iter": 1}, run.last_checkpoint)
    assert prepare_run_dir(tmp_path / "r", resume=True).root == run.root
    # an existing but empty folder is fine
    (tmp_path / "empty").mkdir()
    prepare_run_dir(tmp_path / "empty")


def test_failed_checkpoint_write_keeps_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "last.pt"
    atomic_save({"iter": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def disk_full(obj, fh, *args, **kwargs):
        fh.write(b"partial garbage")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_save({"iter": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    ckpt = load_checkpoint(path)
    assert ckpt["iter"] == 1 and torch.equal(ckpt["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_failed_replace_keeps_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"iter": 1}, path)

    def boom(src, dst):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(runs_mod.os, "replace", boom)
    with pytest.raises(OSError):
        atomic_save({"iter": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["iter"] == 1
    assert len(list(tmp_path.iterdir())) == 1


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(NpdgError, match="cannot read checkpoint"):
        load_checkpoint(path)
    with pytest.raises(NpdgError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_roundtrip_through_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's state
    state = capture_rng_state()
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist(), random.gauss(0, 1))
    atomic_save(state, tmp_path / "rng.pt")
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist(), random.gauss(0, 1))
    assert got == expected


def test_truncate_and_read_metrics(tmp_path):
    run = prepare_run_dir(tmp_path / "r")
    run.metrics.write_text("".join(json.dumps({"iter": i, "loss": 1.0 / i}) + "\n" for i in range(1, 6)) + "{broken")
    truncate_metrics(run, 3)
    m = read_metrics(run.root)
    assert list(m["iter"]) == [1, 2, 3]


def _fake_run(root, name, mode, iters_done, loss, final=None):
    d = root / name
    (d / "eval").mkdir(parents=True)
    cfg = {"model": {"arch": "deeplabv3plus", "encoder": "resnet18"}, "train": {"mode": mode, "iters": 100}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    lines = [{"iter": i, "loss": loss + i, "lr": 0.01} for i in range(1, iters_done + 1)]
    lines.append({"iter": iters_done, "eval": True, "miou/source": 0.5})  # eval lines carry no loss
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if final is not None:
        (d / "eval" / "final.json").write_text(json.dumps(final))


def test_list_runs_table_and_cli(tmp_path, capsys):
    _fake_run(tmp_path, "a_erm", "erm", 3, 0.25,
              final={"results": {"source": {"miou": 0.6}}, "summary": {"source_miou": 0.6, "mean_target_miou": 0.4}})
    _fake_run(tmp_path, "b_photo", "photometric", 2, 1.0)
    (tmp_path / "not_a_run").mkdir()
    df = list_runs(tmp_path)
    assert list(df["name"]) == ["a_erm", "b_photo"]
    a, b = df.iloc[0], df.iloc[1]
    assert (a["mode"], a["arch"], a["encoder"], a["iters_done"], a["iters"]) == ("erm", "deeplabv3plus", "resnet18", 3, 100)
    assert a["last_loss"] == pytest.approx(3.25)
    assert a["source_miou"] == pytest.approx(0.6) and a["target_miou"] == pytest.approx(0.4)
    assert b["iters_done"] == 2 and b["last_loss"] == pytest.approx(3.0)
    assert b["source_miou"] is None or np.isnan(b["source_miou"])
    assert list_runs(tmp_path / "nothing").empty

    assert main(["runs", "list", "--root", str(tmp_path), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in records] == ["a_erm", "b_photo"]
    assert records[0]["target_miou"] == pytest.approx(0.4)
    assert main(["runs", "list", "--root", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "a_erm" in table and "photometric" in table and "0.4000" in table


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    from npdg.runs import FILE_MODE, atomic_write_text

    atomic_write_text("x", tmp_path / "a.txt")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == FILE_MODE  # not mkstemp's 0600
