"""The training engine (npdg.train): loss goes down, exact resume, NaN/OOM handling, augmentation, lr."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from npdg.cli import main
from npdg.config import Config, apply_overrides
from npdg.errors import ConfigError
from npdg.recipes import train  # mode-aware (photometric); the loop alone is npdg.train.train
from npdg.runs import list_runs, load_checkpoint, read_metrics
from npdg.train import (
    Callback,
    InfiniteSampler,
    OutOfMemory,
    TrainingDiverged,
    build_optimizer,
    cross_entropy,
    lr_factor,
    param_groups,
    random_scale_crop_flip,
)

ROOT = Path(__file__).resolve().parents[1]
PALETTE = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.2, 0.2, 0.9]])


class BlockDataset(Dataset):
    """Images of 3 colour-coded classes in 8×8 blocks (learnable by a 1×1 conv), sample-dict contract."""

    def __init__(self, n: int = 12, size: tuple[int, int] = (32, 32), seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        h, w = size
        blocks = torch.randint(0, 3, (n, h // 8, w // 8), generator=g)
        self.labels = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)
        noise = 0.05 * torch.randn(n, 3, h, w, generator=g)
        self.images = (PALETTE[self.labels].permute(0, 3, 1, 2) + noise).clamp(0, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "domain": "blocks", "split": "train",
                "index": i, "name": f"blocks_{i:06d}"}


class TinySeg(nn.Module):
    """conv-BN-ReLU-dropout encoder + 1×1 head: BN buffers and dropout RNG make resume non-trivial."""

    def __init__(self, classes: int = 19):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.2))
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        return self.head(self.encoder(x))


def tiny_model(seed: int = 0) -> TinySeg:
    torch.manual_seed(seed)
    return TinySeg()


def tiny_cfg(*overrides: str) -> Config:
    base = [
        "data.size=32x32",
        "train.iters=6",
        "train.batch_size=4",
        "train.lr=0.05",
        "train.log_every=1",
        "train.checkpoint_every=3",
        "train.scale_range=0.75,1.5",
        "train.crop=24x24",
        "eval.include_source=false",
    ]
    return apply_overrides(Config(), [*base, *overrides])


def test_loss_decreases_on_fixed_batch(tmp_path):
    # one batch = the whole dataset, no augmentation: the loss must fall clearly
    cfg = tiny_cfg("train.iters=25", "train.lr=0.2", "train.scale_range=1,1", "train.crop=32x32", "train.hflip=false")
    result = train(cfg, tmp_path / "run", model=tiny_model(), train_dataset=BlockDataset(n=4), device="cpu")
    m = read_metrics(tmp_path / "run")
    assert list(m["iter"]) == list(range(1, 26))
    assert m["loss"].iloc[0] > math.log(19) * 0.8  # starts near chance
    assert m["loss"].iloc[-1] < 0.5 * m["loss"].iloc[0]
    assert result.iters_done == 25 and result.last_loss == pytest.approx(m["loss"].iloc[-1])
    assert (m["lr"].diff().dropna() < 0).all()  # poly decay
    assert (m["images_per_s"] > 0).all()


def test_smp_deeplab_resnet18_trains(tmp_path):
    """The real model family: a few steps of DeepLabV3+ ResNet-18 on 64×64 reduce the loss."""
    from npdg.models import build_model

    torch.manual_seed(0)
    model = build_model("deeplabv3plus", "resnet18", 19)
    cfg = tiny_cfg("train.iters=4", "train.lr=0.02", "train.scale_range=1,1", "train.crop=64x64",
                   "train.hflip=false", "data.size=64x64", "train.batch_size=2", "train.checkpoint_every=4")
    seen = []
    train(cfg, tmp_path / "run", model=model, train_dataset=BlockDataset(n=2, size=(64, 64)), device="cpu",
          progress=lambda step, total, metrics: seen.append((step, total, metrics.get("loss"))))
    m = read_metrics(tmp_path / "run")
    assert m["loss"].iloc[-1] < m["loss"].iloc[0]
    assert [s[:2] for s in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert (tmp_path / "run" / "model.safetensors").is_file()
    from npdg.models import load_model

    loaded = load_model(tmp_path / "run")
    for k, v in model.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[k], v)


class Interrupt(Exception):
    pass


def _stop_at(step: int) -> Callback:
    def fn(ctx):
        if ctx.step == step:
            raise Interrupt

    return Callback(1, fn, "interrupt")


@pytest.mark.parametrize("mode", ["erm", "photometric"])
def test_resume_matches_uninterrupted_run_bitwise(tmp_path, mode):
    cfg = tiny_cfg(f"train.mode={mode}", "train.iters=7", "train.checkpoint_every=3")
    data = BlockDataset(n=10)  # 10 images, batch 4: the resume point falls mid-epoch

    full = tiny_model()
    train(cfg, tmp_path / "full", model=full, train_dataset=data, device="cpu")

    first = tiny_model()
    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "cut", model=first, train_dataset=data, device="cpu", callbacks=[_stop_at(3)])
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["iter"] == 3
    resumed = tiny_model(seed=123)  # different init: everything must come from the checkpoint
    result = train(cfg, tmp_path / "cut", resume=True, model=resumed, train_dataset=data, device="cpu")
    assert result.iters_done == 7

    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma, mb = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    assert list(ma["iter"]) == list(mb["iter"]) == list(range(1, 8))
    np.testing.assert_array_equal(ma["loss"].to_numpy(), mb["loss"].to_numpy())


@pytest.mark.parametrize("crash_on", [0, 1])
def test_a_crash_inside_the_final_checkpoint_write_resumes_to_the_same_weights(tmp_path, monkeypatch, crash_on):
    """Die at each write of the last checkpoint (weights file, ``last.pt``), resume, and get the
    uninterrupted run's ``model.safetensors`` bit for bit — a ``last.pt`` newer than the weights
    would make the resume start at the end and never rewrite them."""
    import npdg.train.loop as loop
    from npdg.models.weights import read_state_dict

    cfg = tiny_cfg("train.iters=7", "train.checkpoint_every=3")
    data = BlockDataset(n=10)
    train(cfg, tmp_path / "full", model=tiny_model(), train_dataset=data, device="cpu", evaluate_at_end=False)

    writes: list[str] = []
    def dying(real, iter_of):
        def write(obj, path, *rest):
            if int(iter_of(obj, rest)) == 7:  # a write of the final checkpoint
                writes.append(Path(path).name)
                if len(writes) - 1 == crash_on:
                    raise Interrupt(f"killed while writing {path}")
            return real(obj, path, *rest)
        return write
    monkeypatch.setattr(loop, "save_weights", dying(loop.save_weights, lambda obj, rest: rest[0]["iter"]))
    monkeypatch.setattr(loop, "save_checkpoint", dying(loop.save_checkpoint, lambda obj, rest: obj["iter"]))
    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "cut", model=tiny_model(), train_dataset=data, device="cpu", evaluate_at_end=False)
    monkeypatch.undo()
    result = train(cfg, tmp_path / "cut", resume=True, model=tiny_model(seed=123), train_dataset=data,
                   device="cpu", evaluate_at_end=False)
    assert result.iters_done == 7
    a, b = read_state_dict(tmp_path / "full" / "model.safetensors"), read_state_dict(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), f"stale weights after a crash at write {crash_on} of {writes}"


def test_the_final_weights_are_written_once_and_match_last_pt_and_the_model(tmp_path, monkeypatch):
    """The last iteration's checkpoint is the only write of the final weights (no second end save),
    and the run folder's weights, ``last.pt`` and the returned model agree bit for bit."""
    import npdg.train.loop as loop
    from npdg.models.weights import read_state_dict

    iters_written: list[str] = []
    real = loop.save_weights
    def counting(model, path, meta):
        iters_written.append(meta["iter"])
        return real(model, path, meta)
    monkeypatch.setattr(loop, "save_weights", counting)
    cfg = tiny_cfg("train.iters=7", "train.checkpoint_every=3")
    model = tiny_model()
    train(cfg, tmp_path / "run", model=model, train_dataset=BlockDataset(n=10), device="cpu", evaluate_at_end=False)
    assert iters_written == ["3", "6", "7"]
    on_disk = read_state_dict(tmp_path / "run" / "model.safetensors")
    in_ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    live = model.state_dict()
    assert on_disk.keys() == live.keys()
    for k in live:
        assert torch.equal(on_disk[k], live[k]) and torch.equal(in_ckpt[k], live[k]), k


def test_checkpoint_is_weights_only_and_complete(tmp_path):
    cfg = tiny_cfg("train.iters=3", "train.checkpoint_every=3", "train.keep_checkpoints=true")
    train(cfg, tmp_path / "run", model=tiny_model(), train_dataset=BlockDataset(), device="cpu")
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code needed
    assert ckpt["iter"] == 3 and ckpt["samples_seen"] == 12
    assert set(ckpt) >= {"model", "optimizer", "scaler", "rng", "aug_rng", "config"}
    assert ckpt["config"]["train"]["iters"] == 3
    assert (tmp_path / "run" / "checkpoints" / "iter_000003.pt").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_cfg("train.iters=8", "train.checkpoint_every=2", "train.log_every=4")

    def nan_from_iteration_5(model, images, labels, logits, step):
        return torch.tensor(float("nan")) if step >= 4 else torch.zeros(())

    with pytest.raises(TrainingDiverged, match=r"iteration 5.*last good checkpoint \(iteration 4\)"):
        train(cfg, tmp_path / "run", model=tiny_model(), train_dataset=BlockDataset(), device="cpu",
              extra_losses=[nan_from_iteration_5])
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["iter"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_oom_names_the_setting_to_lower(tmp_path):
    def oom(model, images, labels, logits, step):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(OutOfMemory, match=r"iteration 1.*train.batch_size.*train.crop or data.size.*amp"):
        train(tiny_cfg(), None, model=tiny_model(), train_dataset=BlockDataset(), device="cpu", extra_losses=[oom])


def test_batch_size_one_is_refused_before_training():
    cfg = Config()
    cfg = type(cfg)(model=cfg.model, data=cfg.data, train=type(cfg.train)(batch_size=1), eval=cfg.eval)
    with pytest.raises(ConfigError, match="batch_size must be at least 2"):
        train(cfg, None, model=tiny_model(), train_dataset=BlockDataset(), device="cpu")


def test_extension_points_are_called(tmp_path):
    calls = {"transform": [], "loss": [], "hook": [], "cb": []}

    def dup(images, labels, step):  # e.g. DSP appends stylized copies
        calls["transform"].append((step, images.shape[0]))
        return torch.cat([images, 1 - images]), torch.cat([labels, labels])

    def extra(model, images, labels, logits, step):
        calls["loss"].append(logits.shape[0])
        return 0.0 * logits.sum()

    def hook(model, step):
        calls["hook"].append(model.head.weight.grad is not None)

    cfg = tiny_cfg("train.iters=4")
    train(cfg, None, model=tiny_model(), train_dataset=BlockDataset(), device="cpu", batch_transforms=[dup],
          extra_losses=[extra], grad_hooks=[hook], callbacks=[Callback(2, lambda ctx: calls["cb"].append(ctx.step))])
    assert calls["transform"] == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert calls["loss"] == [8, 8, 8, 8]
    assert calls["hook"] == [True] * 4
    assert calls["cb"] == [2, 4]


def test_random_scale_crop_flip_keeps_labels_exact():
    g = torch.Generator().manual_seed(0)
    data = BlockDataset(n=4, size=(32, 32))
    images, labels = data.images.clone(), data.labels.clone()
    labels[:, :4] = 255
    x, y = random_scale_crop_flip(images, labels, (40, 24), (0.5, 2.0), True, g)
    assert x.shape == (4, 3, 40, 24) and y.shape == (4, 40, 24) and y.dtype == torch.int64
    assert set(torch.unique(y).tolist()) <= {0, 1, 2, 255}
    # scale 1, crop = size, no flip → identity
    x, y = random_scale_crop_flip(images, labels, (32, 32), (1.0, 1.0), False, g)
    assert torch.equal(x, images) and torch.equal(y, labels)
    # a crop larger than the image pads labels with ignore
    x, y = random_scale_crop_flip(images, labels, (48, 48), (1.0, 1.0), False, g)
    assert (y == 255).sum() >= 4 * (48 * 48 - 32 * 32)


def test_infinite_sampler_resumes_mid_epoch():
    data = BlockDataset(n=5)
    full = InfiniteSampler(data, seed=3)
    it = iter(full)
    stream = [next(it) for _ in range(17)]
    assert sorted(stream[:5]) == list(range(5)) and sorted(stream[5:10]) == list(range(5))
    assert stream[:5] != stream[5:10]  # reshuffled each epoch
    it2 = iter(InfiniteSampler(data, seed=3, start=7))
    assert [next(it2) for _ in range(10)] == stream[7:17]
    # two ranks split each epoch
    r0, r1 = iter(InfiniteSampler(data, 3, 0, 2)), iter(InfiniteSampler(data, 3, 1, 2))
    assert len({next(r0) for _ in range(2)} | {next(r1) for _ in range(2)}) == 4


def test_lr_schedule_poly_and_warmup():
    cfg = apply_overrides(Config(), ["train.iters=100", "train.warmup_iters=10"])
    assert lr_factor(0, cfg) == pytest.approx(1e-6, abs=1e-8)
    assert lr_factor(5, cfg) == pytest.approx(0.5 * (1 - 0.05) ** 0.9, rel=1e-5)
    assert lr_factor(50, cfg) == pytest.approx(0.5**0.9)
    assert lr_factor(100, cfg) == 0.0
    nowarm = apply_overrides(Config(), ["train.iters=100"])
    assert lr_factor(0, nowarm) == 1.0


def test_adamw_param_groups_head_lr_and_no_decay_on_norms():
    cfg = apply_overrides(Config(), ["train.optimizer=adamw", "train.lr=6e-5", "train.weight_decay=0.01",
                                     "train.head_lr_mult=10"])
    model = tiny_model()
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    assert groups["head"]["lr"] == pytest.approx(6e-4) and groups["head"]["weight_decay"] == 0.01
    assert groups["encoder"]["lr"] == pytest.approx(6e-5)
    bn = model.encoder[1]
    assert {id(p) for p in groups["encoder_no_decay"]["params"]} == {id(bn.weight), id(bn.bias)}
    assert groups["encoder_no_decay"]["weight_decay"] == 0.0
    assert isinstance(build_optimizer(model, cfg), torch.optim.AdamW)
    sgd = param_groups(model, apply_overrides(Config(), []))
    assert all(g["weight_decay"] == 5e-4 for g in sgd)


def test_cross_entropy_ignores_255_and_never_nan():
    logits = torch.zeros(1, 19, 2, 2)
    labels = torch.full((1, 2, 2), 255)
    assert cross_entropy(logits, labels).item() == 0.0
    labels[0, 0, 0] = 3
    assert cross_entropy(logits, labels).item() == pytest.approx(math.log(19))


def test_cli_train_end_to_end_with_overrides(tmp_path, capsys, monkeypatch):
    """`python -m npdg train` on the synthetic data with a tiny model, then resume refusal and `runs list`."""
    pytest.importorskip("npdg.data.synthetic")
    monkeypatch.chdir(ROOT)
    out = tmp_path / "runs" / "tiny"
    args = ["train", "--config", "configs/demo/deeplabv3plus_r18.yaml", "--out", str(out), "--device", "cpu",
            "--no-progress",
            "--set", "data.size=64x64", "--set", "train.crop=64x64", "--set", "data.length=4",
            "--set", "train.iters=2", "--set", "train.batch_size=2", "--set", "train.checkpoint_every=1",
            "--set", "train.num_workers=0", "--set", "eval.limit=2", "--set", "eval.batch_size=2",
            "--set", "data.targets=[night, fog]"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"run directory: {out}" in printed and "mean target" in printed
    final = json.loads((out / "eval" / "final.json").read_text())
    assert set(final["results"]) == {"source", "night", "fog"}
    assert final["results"]["night"]["num_images"] == 2
    assert final["summary"]["targets"] == ["night", "fog"]
    assert final["summary"]["mean_target_miou"] == pytest.approx(
        (final["results"]["night"]["miou"] + final["results"]["fog"]["miou"]) / 2)
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["iters"] == 2 and resolved["data"]["size"] == [64, 64]
    assert resolved["model"]["encoder"] == "resnet18"  # from the YAML file
    assert (out / "model.safetensors").is_file()
    assert load_checkpoint(out / "checkpoints" / "last.pt")["iter"] == 2

    assert main(args) == 2  # the run directory exists: refused
    assert "--resume" in capsys.readouterr().err
    # resume with a longer schedule, reading the run's own config
    assert main(["train", "--resume", "--out", str(out), "--device", "cpu", "--no-progress", "--no-eval",
                 "--set", "train.iters=3"]) == 0
    assert load_checkpoint(out / "checkpoints" / "last.pt")["iter"] == 3
    assert main(["train", "--config", "configs/demo/deeplabv3plus_r18.yaml", "--set", "train.batch_size=1"]) == 2
    assert "at least 2" in capsys.readouterr().err

    df = list_runs(tmp_path / "runs")
    assert list(df["name"]) == ["tiny"] and df.iloc[0]["iters_done"] == 3
    assert df.iloc[0]["target_miou"] == pytest.approx(final["summary"]["mean_target_miou"])


def test_periodic_and_final_evaluation_are_written(tmp_path):
    cfg = tiny_cfg("train.iters=4", "train.eval_every=2", "eval.periodic_limit=2", "eval.batch_size=2")
    result = train(cfg, tmp_path / "run", model=tiny_model(), train_dataset=BlockDataset(),
                   eval_datasets={"blocks": BlockDataset(n=3, seed=9)}, device="cpu")
    run = tmp_path / "run"
    periodic = json.loads((run / "eval" / "iter_000002.json").read_text())
    assert periodic["results"]["blocks"]["num_images"] == 2 and periodic["iter"] == 2
    final = json.loads((run / "eval" / "final.json").read_text())
    assert final["results"]["blocks"]["num_images"] == 3
    assert final["summary"]["targets"] == ["blocks"]
    assert final["summary"]["mean_target_miou"] == pytest.approx(final["results"]["blocks"]["miou"])
    assert result.final_eval["summary"] == final["summary"]
    m = read_metrics(run)
    evals = m[m["eval"].fillna(False).astype(bool)]
    assert list(evals["iter"]) == [2, 4] and evals["miou/blocks"].notna().all()
    assert list_runs(tmp_path).iloc[0]["iters_done"] == 4  # eval lines do not count as loss lines


def test_the_loop_alone_refuses_a_method_mode():
    """npdg.train.train knows no method: a mode other than plain CE must come through npdg.recipes.train."""
    from npdg.train import train as loop

    with pytest.raises(ConfigError, match="applied by npdg.recipes.train"):
        loop(tiny_cfg("train.mode=photometric"), None, model=tiny_model(), train_dataset=BlockDataset(), device="cpu")
