"""Fault suite: every CLI command against bad input — a clear ``error:``, exit 2, no traceback, no data lost.

Each case runs in-process through :func:`npdg.cli.main` (a subprocess per case would cost seconds of
torch import each). After every case the user's files outside the output folder are checked
byte for byte. The kill -9 rounds (subprocesses) interrupt training while it writes checkpoints
and model files, then resume and compare with an uninterrupted run bit for bit.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_dsp

from npdg.cli import main
from npdg.config import Config, apply_overrides, dump_config
from npdg.models import build_model, save_model
from npdg.runs import mark_run_dir

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ the world
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A user's folder: a tiny trained-looking run, a DSP, images, configs and files that must survive."""
    base = tmp_path_factory.mktemp("faults")
    torch.manual_seed(0)
    run = base / "runs" / "erm"
    run.mkdir(parents=True)
    save_model(build_model("deeplabv3plus", "resnet18", 19), run / "model.safetensors")
    dump_config(apply_overrides(Config(), ["data.size=32x64", "data.length=4", "train.iters=2", "train.batch_size=2"]),
                run / "config.yaml")
    mark_run_dir(run, "train")
    dsp = tiny_dsp().save(base / "dsp")
    (base / "notes").mkdir()
    (base / "notes" / "thesis.txt").write_text("four years of work\n")
    cfg = base / "tiny.yaml"
    cfg.write_text("data: {size: 32x64, length: 4}\ntrain: {iters: 2, batch_size: 2, log_every: 1, checkpoint_every: 1}\n"
                   "eval: {include_source: false, limit: 1, batch_size: 1}\n")
    dsp_cfg = base / "dsp.yaml"
    dsp_cfg.write_text("encoder: {channels: [4, 8, 8]}\ndata: {size: 32x32, length: 4}\n"
                       "train: {pretrain_iters: 1, iters: 1, batch_size: 2}\nstyle: {bank_size: 4}\n")
    corrupt = base / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage" * 10)
    evil = base / "evil.pth"
    evil.write_bytes(pickle.dumps({"w": os.system}, protocol=4))  # a raw pickle: "Unsupported operand 149" in torch
    bad_dsp = base / "bad_dsp"
    bad_dsp.mkdir()
    (bad_dsp / "dsp.json").write_text("{not json")
    (bad_dsp / "dsp.safetensors").write_bytes(b"junk")
    # foreign folders an --overwrite must never delete
    (base / "mine").mkdir()
    (base / "mine" / "data.csv").write_text("precious\n")
    marked = base / "marked"
    marked.mkdir()
    mark_run_dir(marked, "train")
    (marked / "my_notes.txt").write_text("not npdg's\n")
    nested = base / "nested"  # a marked run folder where the user put a file named like one of npdg's
    (nested / "notes").mkdir(parents=True)
    mark_run_dir(nested, "train")
    (nested / "config.yaml").write_text("model: {}\n")
    (nested / "notes" / "config.yaml").write_text("my own settings\n")
    return {"nested": nested, "base": base, "run": run, "dsp": dsp, "cfg": cfg, "dsp_cfg": dsp_cfg, "corrupt": corrupt, "evil": evil,
            "bad_dsp": bad_dsp, "mine": base / "mine", "marked": marked}


def _snapshot(base: Path, skip: Path) -> dict[str, str]:
    out = {}
    for p in sorted(base.rglob("*")):
        if p.is_file() and not p.is_relative_to(skip):
            out[str(p.relative_to(base))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    return code, err


# ------------------------------------------------------------------------------------------ the cases
# (name, argv template, expected text in the error). {x} placeholders come from the world fixture;
# {out} is this case's own output path (never created by the user).
CASES = [
    # data
    ("preview into a folder", ["data", "preview", "--domain", "source", "--out", "{base}/notes"], "is a folder"),
    ("preview unknown domain", ["data", "preview", "--domain", "mars", "--out", "{out}.png"], "mars"),
    ("preview n 0", ["data", "preview", "--domain", "source", "--n", "0", "--out", "{out}.png"], "--n"),
    ("preview opacity nan", ["data", "preview", "--domain", "source", "--opacity", "nan", "--out", "{out}.png"], "[0, 1]"),
    ("preview size 0x0", ["data", "preview", "--domain", "source", "--size", "0x0", "--out", "{out}.png"], "size"),
    ("export n -1", ["data", "export", "--domain", "source", "--split", "val", "--n", "-1", "--out", "{out}"], "--n"),
    ("export gta5 no root", ["data", "export", "--dataset", "gta5", "--split", "train", "--n", "1", "--out", "{out}"], "--root"),
    # dsp
    ("dsp train missing config", ["dsp", "train", "--config", "{base}/none.yaml", "--out", "{out}"], "not found"),
    ("dsp train inf iters", ["dsp", "train", "--config", "{dsp_cfg}", "--set", "train.iters=inf", "--out", "{out}"], "integer"),
    ("dsp train nan lr", ["dsp", "train", "--config", "{dsp_cfg}", "--set", "train.lr=nan", "--out", "{out}"], "finite"),
    ("dsp train held-out style", ["dsp", "train", "--config", "{dsp_cfg}", "--set", "style.domains=[night]", "--out", "{out}"], "held-out"),
    ("dsp train resume nothing", ["dsp", "train", "--out", "{out}", "--resume"], "config.yaml"),
    ("dsp train overwrite foreign", ["dsp", "train", "--config", "{dsp_cfg}", "--out", "{mine}", "--overwrite"], "not a run folder npdg made"),
    ("dsp sample missing dsp", ["dsp", "sample", "--dsp", "{base}/nodsp", "--synthetic", "1", "--out", "{out}.png"], "not a DSP folder"),
    ("dsp sample corrupt dsp", ["dsp", "sample", "--dsp", "{bad_dsp}", "--synthetic", "1", "--out", "{out}.png"], "cannot read"),
    ("dsp sample 0 images", ["dsp", "sample", "--dsp", "{dsp}", "--synthetic", "0", "--out", "{out}.png"], "--synthetic"),
    ("dsp sample 0 styles", ["dsp", "sample", "--dsp", "{dsp}", "--synthetic", "1", "--n-styles", "0", "--out", "{out}.png"], "--n-styles"),
    ("dsp sample pickle segmentor", ["dsp", "sample", "--dsp", "{dsp}", "--synthetic", "1", "--ascend-with", "{evil}", "--out", "{out}.png"], "pickled Python objects"),
    # train
    ("train missing config", ["train", "--config", "{base}/none.yaml", "--out", "{out}"], "not found"),
    ("train inf iters", ["train", "--config", "{cfg}", "--set", "train.iters=inf", "--out", "{out}"], "integer"),
    ("train nan lr", ["train", "--config", "{cfg}", "--set", "train.lr=nan", "--out", "{out}"], "finite"),
    ("train negative momentum", ["train", "--config", "{cfg}", "--set", "train.momentum=-0.9", "--out", "{out}"], "momentum"),
    ("train huge warmup ratio", ["train", "--config", "{cfg}", "--set", "train.weight_decay=-1", "--out", "{out}"], "weight_decay"),
    ("train criterion as mode", ["train", "--config", "{cfg}", "--set", "train.mode=l1norm", "--out", "{out}"], "pruning criterion"),
    ("train unused bad protocol", ["train", "--config", "{cfg}", "--set", "eval.protocol=bogus", "--no-eval", "--out", "{out}"], "protocol"),
    ("train unknown key", ["train", "--config", "{cfg}", "--set", "train.itrs=3", "--out", "{out}"], "valid keys"),
    ("train unknown encoder", ["train", "--config", "{cfg}", "--set", "model.encoder=resnet7", "--out", "{out}"], "resnet7"),
    ("train missing real data", ["train", "--config", "{cfg}", "--set", "data.source=cityscapes:{base}/nocity", "--out", "{out}"], "cityscapes"),
    ("train overwrite foreign", ["train", "--config", "{cfg}", "--out", "{mine}", "--overwrite"], "not a run folder npdg made"),
    ("train overwrite marked+foreign", ["train", "--config", "{cfg}", "--out", "{marked}", "--overwrite"], "my_notes.txt"),
    ("train resume nothing", ["train", "--config", "{cfg}", "--out", "{out}", "--resume"], "cannot resume"),
    # eval
    ("eval missing run", ["eval", "--run", "{base}/norun", "--data", "synthetic"], "not found"),
    ("eval corrupt model", ["eval", "--checkpoint", "{corrupt}", "--data", "synthetic"], "safetensors"),
    ("eval bad spec", ["eval", "--run", "{run}", "--data", "mars"], "use 'synthetic' or NAME:ROOT"),
    ("eval missing split file", ["eval", "--run", "{run}", "--data", "gta5:{base}@{base}/nosplit.txt"], "gta5"),
    ("eval limit 0", ["eval", "--run", "{run}", "--data", "synthetic", "--limit", "0"], "--limit"),
    ("eval json is a folder", ["eval", "--run", "{run}", "--data", "synthetic", "--json", "{base}/notes"], "is a folder"),
    # sensitivity
    ("sens bad suffix", ["sensitivity", "--run", "{run}", "--dsp", "{dsp}", "--out", "{out}.txt"], ".csv or .parquet"),
    ("sens 1 style", ["sensitivity", "--run", "{run}", "--dsp", "{dsp}", "--styles", "1", "--out", "{out}.csv"], "--styles"),
    ("sens lambda 2", ["sensitivity", "--run", "{run}", "--dsp", "{dsp}", "--lambda", "2", "--out", "{out}.csv"], "[0, 1]"),
    ("sens lambda nan", ["sensitivity", "--run", "{run}", "--dsp", "{dsp}", "--lambda", "nan", "--out", "{out}.csv"], "[0, 1]"),
    ("sens not a run", ["sensitivity", "--run", "{notes}", "--dsp", "{dsp}", "--out", "{out}.csv"], "not a run"),
    ("sens missing dsp", ["sensitivity", "--run", "{run}", "--dsp", "{base}/nodsp", "--out", "{out}.csv"], "not a DSP folder"),
    # prune
    ("prune out = run", ["prune", "--run", "{run}", "--out", "{run}", "--overwrite"], "must differ"),
    ("prune out contains run", ["prune", "--run", "{run}", "--out", "{base}/runs", "--overwrite"], "contains the source run"),
    ("prune out inside run", ["prune", "--run", "{run}", "--out", "{run}/pruned", "--overwrite"], "inside the source run"),
    ("prune rate 1.5", ["prune", "--run", "{run}", "--rate", "1.5", "--out", "{out}"], "prune.rate"),
    ("prune lam 2", ["prune", "--run", "{run}", "--lam", "2", "--out", "{out}"], "prune.lam"),
    ("prune lam nan", ["prune", "--run", "{run}", "--lam", "nan", "--out", "{out}"], "prune.lam"),
    ("prune rate nan", ["prune", "--run", "{run}", "--rate", "nan", "--out", "{out}"], "prune.rate"),
    ("prune negative threshold", ["prune", "--run", "{run}", "--threshold", "-1", "--out", "{out}"], "threshold"),
    ("prune bad criterion", ["prune", "--run", "{run}", "--criterion", "taylor", "--out", "{out}"], "invalid choice"),
    ("prune missing run", ["prune", "--run", "{base}/norun", "--out", "{out}"], "not a run directory"),
    ("prune overwrite foreign", ["prune", "--run", "{run}", "--out", "{mine}", "--overwrite", "--dsp", "none"], "not a run folder npdg made"),
    ("prune huge cost size", ["prune", "--run", "{run}", "--cost-size", "99999x99999", "--out", "{out}"], "too large"),
    # cost
    ("cost huge size", ["cost", "--run", "{run}", "--size", "100000x100000"], "too large"),
    ("cost zero size", ["cost", "--run", "{run}", "--size", "0x64"], "size"),
    ("cost bad batches", ["cost", "--run", "{run}", "--batches", "a,b"], "--batches"),
    ("cost zero repeats", ["cost", "--run", "{run}", "--repeats", "0"], "--repeats"),
    ("cost pickle checkpoint", ["cost", "--checkpoint", "{evil}"], "npdg model file"),
    ("cost 1000 batch", ["cost", "--run", "{run}", "--batches", "1000"], "--batches"),
    # settings read late, broken DSPs, odd files, absurd sizes and seeds: refused before anything is created
    ("train bad target", ["train", "--config", "{cfg}", "--set", "data.targets=[mars]", "--out", "{out}"], "mars"),
    ("train broken dsp", ["train", "--config", "{cfg}", "--set", "train.mode=dsp", "--set", "dsp.path={bad_dsp}", "--out", "{out}"], "cannot read"),
    ("train unused broken dsp", ["train", "--config", "{cfg}", "--set", "dsp.path={bad_dsp}", "--out", "{out}"], "cannot read"),
    ("train binary config", ["train", "--config", "{evil}", "--out", "{out}"], "not a text file"),
    ("train garbage config", ["train", "--config", "{corrupt}", "--out", "{out}"], "not valid YAML"),
    ("train huge size", ["train", "--config", "{cfg}", "--set", "data.size=99968x99968", "--out", "{out}"], "too large"),
    ("train huge seed", ["train", "--config", "{cfg}", "--set", "train.seed=100000000000000000000", "--out", "{out}"], "train.seed"),
    ("prune broken dsp", ["prune", "--run", "{run}", "--criterion", "npdg", "--sparse-iters", "2", "--dsp", "{bad_dsp}", "--out", "{out}"], "cannot read"),
    ("eval export into a file", ["eval", "--run", "{run}", "--data", "source", "--export", "{notes}/thesis.txt"], "is a file"),
    ("eval huge size", ["eval", "--run", "{run}", "--data", "source", "--size", "99968x99968"], "too large"),
    ("sens huge seed", ["sensitivity", "--run", "{run}", "--dsp", "{dsp}", "--seed", "99999999999", "--out", "{out}.csv"], "--seed"),
    ("dsp sample huge size", ["dsp", "sample", "--dsp", "{dsp}", "--synthetic", "1", "--size", "99968x99968", "--out", "{out}.png"], "too large"),
    ("dsp train huge size", ["dsp", "train", "--config", "{dsp_cfg}", "--set", "data.size=99968x99968", "--out", "{out}"], "too large"),
    ("zoo verify nan tolerance", ["zoo", "verify", "--tolerance", "nan"], "--tolerance"),
    ("zoo build unknown", ["zoo", "build", "r99", "--work", "{out}"], "unknown zoo model"),
    ("overwrite nested foreign", ["train", "--config", "{cfg}", "--out", "{nested}", "--overwrite"], "notes/config.yaml"),
]


@pytest.mark.parametrize("name,argv,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_a_clear_error(name, argv, expect, world, capsys, tmp_path):
    out = tmp_path / "out"
    subs = {**{k: str(v) for k, v in world.items()}, "out": str(out), "notes": str(world["base"] / "notes")}
    args = [a.format(**subs) for a in argv]
    before = _snapshot(world["base"], out)
    code, err = _run(args, capsys)
    assert code == 2, f"{name}: exit {code}, stderr: {err}"
    assert "error:" in err and expect in err, f"{name}: {err}"
    assert "Traceback" not in err
    assert _snapshot(world["base"], out) == before, f"{name}: files outside the output folder changed"
    assert not out.exists() or name.startswith(("dsp train resume", "train resume")), f"{name}: left {out} behind"


def test_resume_from_checkpoints_that_are_not_npdg_checkpoints(world, capsys, tmp_path):
    """A last.pt that loads but is not an npdg checkpoint is refused before any field is read."""
    bad = {"no iter": {"model": {}}, "bare tensor": torch.zeros(3), "wrong type": {
        "iter": "three", "model": {}, "optimizer": {}, "rng": {}, "aug_rng": torch.zeros(1), "config": {}},
        "pickle": None}
    for label, obj in bad.items():
        out = tmp_path / label.replace(" ", "_")
        (out / "checkpoints").mkdir(parents=True)
        mark_run_dir(out, "train")
        ckpt = out / "checkpoints" / "last.pt"
        if obj is None:
            ckpt.write_bytes(pickle.dumps({"iter": os.getpid}, protocol=4))
        else:
            torch.save(obj, ckpt)
        code, err = _run(["train", "--config", str(world["cfg"]), "--out", str(out), "--resume"], capsys)
        assert code == 2 and "error:" in err and "Traceback" not in err, f"{label}: {err}"
        assert "checkpoint" in err, f"{label}: {err}"
        assert ckpt.is_file()  # never deleted


def test_failed_start_leaves_nothing_behind_and_rerun_works(world, capsys, tmp_path):
    out = tmp_path / "run"
    code, err = _run(["train", "--config", str(world["cfg"]), "--set", "model.encoder=resnet7", "--out", str(out)], capsys)
    assert code == 2 and not out.exists()
    code, err = _run(["train", "--config", str(world["cfg"]), "--out", str(out), "--no-eval", "--no-progress"], capsys)
    assert code == 0, err
    assert (out / "model.safetensors").is_file() and (out / ".npdg-run").is_file()


def test_stale_temp_files_are_removed_on_resume(world, capsys, tmp_path):
    out = tmp_path / "run"
    assert _run(["train", "--config", str(world["cfg"]), "--out", str(out), "--no-eval", "--no-progress",
                 "--set", "train.iters=1"], capsys)[0] == 0
    dead = 2**22 + 17  # a pid that does not exist
    while True:
        try:
            os.kill(dead, 0)
            dead += 1
        except ProcessLookupError:
            break
    stale = out / "checkpoints" / f".last.pt.{dead}.abcd.tmp"
    stale.write_bytes(b"x" * 1000)
    live = out / "checkpoints" / f".last.pt.{os.getppid()}.efgh.tmp"  # a live writer's temp: kept
    live.write_bytes(b"y")
    code, err = _run(["train", "--config", str(world["cfg"]), "--out", str(out), "--resume", "--no-eval",
                      "--no-progress", "--set", "train.iters=2"], capsys)
    assert code == 0, err
    assert not stale.exists() and live.exists()


def test_pickle_refusal_reads_plainly(world):
    from npdg.errors import NpdgError
    from npdg.runs import torch_load

    with pytest.raises(NpdgError, match="refused to load .*pickled Python objects.*convert it"):
        torch_load(world["evil"])


def test_eval_accepts_split_files_for_real_datasets(tmp_path, capsys):
    from fixtures_real import write_gta5

    root = write_gta5(tmp_path / "gta5", n=3).root
    (tmp_path / "val.txt").write_text("00001\n")
    torch.manual_seed(0)
    save_model(build_model("deeplabv3plus", "resnet18", 19), tmp_path / "m.safetensors")
    code = main(["eval", "--checkpoint", str(tmp_path / "m.safetensors"), "--data", f"gta5:{root}@{tmp_path / 'val.txt'}",
                 "--split", "train", "--json", str(tmp_path / "e.json"), "--no-progress", "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "gta5" in out.out and '"num_images": 1' in (tmp_path / "e.json").read_text()


# ------------------------------------------------------------------------------------------ kill -9
KILL_CFG = ("data: {size: 32x64, length: 8}\nmodel: {encoder: mobilenet_v2}\n"
            "train: {iters: 6, batch_size: 2, log_every: 1, checkpoint_every: 1, scale_range: [1, 1]}\n")


def _train_cmd(cfg: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "npdg", "train", "--config", str(cfg), "--out", str(out), "--no-eval",
            "--no-progress", "--device", "cpu", *extra]


@pytest.mark.slow
def test_kill_9_during_checkpoint_writes_then_resume_is_bitwise_exact(tmp_path):
    """Kill the training process at several moments (most land inside a checkpoint or model write, the
    bulk of each iteration here), resume each time, and compare with an uninterrupted run."""
    from npdg.models.weights import read_state_dict

    cfg = tmp_path / "kill.yaml"
    cfg.write_text(KILL_CFG)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(cfg, ref), check=True, env=env, cwd=ROOT, capture_output=True, timeout=300)
    out = tmp_path / "killed"
    kills = 0
    def again() -> list[str]:  # resume when a checkpoint exists; a folder killed before its first one is replaced
        if (out / "checkpoints" / "last.pt").is_file():
            return ["--resume"]
        return ["--overwrite"] if out.exists() else []

    for delay in (4.5, 1.0, 1.5, 2.0):  # seconds after start (the first includes torch's import)
        resume = again()
        proc = subprocess.Popen(_train_cmd(cfg, out, *resume), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(delay + (3.5 if "--resume" in resume else 0.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        if (out / "model.safetensors").is_file() and not resume and proc.returncode == 0:
            break
    done = subprocess.run(_train_cmd(cfg, out, *again()), env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert kills >= 1
    a, b = read_state_dict(ref / "model.safetensors"), read_state_dict(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(out.rglob(".*.tmp"))  # no temp file of a killed writer survives the resume


def test_ctrl_c_says_how_to_resume(capsys):
    import argparse

    from npdg.cli.common import dispatch

    def interrupted(args):
        args.resume_hint = "python -m npdg train --out runs/x --resume"
        raise KeyboardInterrupt

    assert dispatch(argparse.Namespace(func=interrupted)) == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted; resume with python -m npdg train --out runs/x --resume"


def test_full_disk_names_the_path_and_what_to_do(tmp_path, capsys, monkeypatch):
    import npdg.runs as runs_mod

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs_mod.os, "replace", no_space)
    code, err = _run(["data", "preview", "--domain", "source", "--n", "1", "--size", "32x64",
                      "--out", str(tmp_path / "grid.png")], capsys)
    assert code == 2 and "Traceback" not in err
    assert f"cannot write {tmp_path / 'grid.png'}" in err and "free some disk space" in err
    assert not list(tmp_path.iterdir())  # the temporary file is gone too
