"""``python -m npdg dsp train`` / ``dsp sample`` end to end on tiny sizes (npdg.dsp.train, npdg.dsp.cli)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from npdg.cli import main
from npdg.dsp.model import DSP
from npdg.dsp.train import load_dsp_config
from npdg.errors import ConfigError
from npdg.runs import load_checkpoint

TINY = """
encoder: {kind: tiny, channels: [4, 8, 8]}
data: {content: synthetic, size: 32x64, crop: 32x32, length: 6}
style: {source: bank, bank_size: 6, content_fraction: 0.25}
dvae: {hidden: 16}
train:
  seed: 3
  batch_size: 2
  pretrain_iters: 3
  iters: 3
  pretrain_lr: 0.003
  lr: 0.001
  log_every: 1
  sample_every: 2
  checkpoint_every: 2
  sample_images: 2
  sample_styles: 2
"""


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def trained(config_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "dsp"
    assert main(["dsp", "train", "--config", str(config_file), "--out", str(out), "--no-progress"]) == 0
    return out


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_everything(trained):
    out = trained
    for name in ("dsp.safetensors", "dsp.json", "config.yaml", "metrics.jsonl", "checkpoints/last.pt"):
        assert (out / name).is_file(), name
    rows = _metrics(out)
    assert [r["iter"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["stage"] for r in rows] == [1, 1, 1, 2, 2, 2]
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert {"content", "style", "kl", "rec", "lr"} <= set(rows[-1])
    samples = sorted(p.name for p in (out / "samples").glob("*.png"))
    assert samples == ["iter_000002.png", "iter_000003.png", "iter_000004.png", "iter_000006.png"]
    # the stage-2 grid has 2 rows × (content, reconstruction, 2 styles)
    w_stage1 = Image.open(out / "samples" / "iter_000002.png").size[0]
    w_stage2 = Image.open(out / "samples" / "iter_000006.png").size[0]
    assert w_stage2 > 1.8 * w_stage1
    spec = json.loads((out / "dsp.json").read_text())
    assert spec["encoder"] == "tiny" and spec["channels"] == [4, 8, 8] and spec["latent_dim"] == 8
    assert spec["image_size"] == [32, 64]
    weights = load_file(str(out / "dsp.safetensors"))
    assert not any(k.startswith("vae.encoder") or ".encoder.net" in k for k in weights)  # q dropped
    dsp = DSP.load(out)
    assert dsp.stylize(torch.rand(1, 3, 32, 64), n_styles=2, seed=0).shape == (2, 3, 32, 64)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 6


def test_resume_continues_exactly(config_file, trained, tmp_path):
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(trained, resumed)
    assert main(["dsp", "train", "--out", str(resumed), "--resume", "--set", "train.iters=5", "--no-progress"]) == 0
    assert [r["iter"] for r in _metrics(resumed)] == list(range(1, 9))
    assert load_checkpoint(resumed / "checkpoints" / "last.pt")["step"] == 8
    direct = tmp_path / "direct"
    assert main(["dsp", "train", "--config", str(config_file), "--out", str(direct), "--set", "train.iters=5",
                 "--no-progress"]) == 0
    a, b = load_file(str(resumed / "dsp.safetensors")), load_file(str(direct / "dsp.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_refusals(config_file, trained, tmp_path, capsys):
    rc = main(["dsp", "train", "--config", str(config_file), "--out", str(tmp_path / "x"),
               "--set", "style.domains=[night]"])
    assert rc == 2 and "held-out" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="held-out"):
        load_dsp_config(config_file, ["style.domains=[fog]"])
    with pytest.raises(ConfigError, match="held-out"):
        load_dsp_config(config_file, ["data.content=night"])
    assert load_dsp_config(config_file, ["style.domains=[source]"]).style.domains == ("source",)
    rc = main(["dsp", "train", "--config", str(config_file), "--out", str(trained)])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="divisible"):
        load_dsp_config(config_file, ["data.size=30x64"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_dsp_config(config_file, ["train.iterz=3"])


def test_nan_keeps_last_good_checkpoint(config_file, tmp_path, monkeypatch, capsys):
    from npdg.dsp import dvae

    calls = {"n": 0}
    real_step = dvae.AutoencoderTrainer.step

    def flaky(self, images):
        calls["n"] += 1
        return float("nan") if calls["n"] == 3 else real_step(self, images)

    monkeypatch.setattr(dvae.AutoencoderTrainer, "step", flaky)
    out = tmp_path / "nan"
    rc = main(["dsp", "train", "--config", str(config_file), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "iteration 3" in err and "last good checkpoint" in err
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 2
    assert not (out / "dsp.safetensors").exists()


class _Seg(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 19, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_sample_grid_from_synthetic(trained, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["dsp", "sample", "--dsp", str(trained), "--synthetic", "2", "--n-styles", "3", "--seed", "1",
                 "--out", str(out)]) == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape[0] > 2 * 32 and grid.shape[1] > 4 * 64  # 2 rows × 4 columns of 32×64 tiles


def test_sample_files_from_image_modes_with_ascent(trained, tmp_path, monkeypatch, capsys):
    import npdg.pruning.physical

    monkeypatch.setattr(npdg.pruning.physical, "load_model", lambda path, *a, **k: _Seg(), raising=False)
    rgba = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 4), dtype=np.uint8), "RGBA").save(rgba)
    grey16 = tmp_path / "b.png"
    Image.fromarray(np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100).save(grey16)
    folder = tmp_path / "out"
    rc = main(["dsp", "sample", "--dsp", str(trained), "--image", str(rgba), str(grey16), "--n-styles", "2",
               "--ascend-with", str(tmp_path / "run"), "--steps", "2", "--out", str(folder)])
    assert rc == 0
    names = sorted(p.name for p in folder.iterdir())
    for stem in ("000_input", "000_00", "000_01", "001_input", "001_00", "001_01", "000_00_ascended"):
        assert f"{stem}.png" in names
    assert "grid.png" in names
    assert np.asarray(Image.open(folder / "001_00.png")).shape == (20, 30, 3)
    assert "segmentor CE" in capsys.readouterr().out


def test_sample_bad_arguments(trained, tmp_path, capsys):
    rc = main(["dsp", "sample", "--dsp", str(trained), "--synthetic", "1", "--n-styles", "0",
               "--out", str(tmp_path / "g.png")])
    assert rc == 2 and "--n-styles" in capsys.readouterr().err
    rc = main(["dsp", "sample", "--dsp", str(tmp_path / "nothing"), "--synthetic", "1", "--out", str(tmp_path / "g.png")])
    assert rc == 2 and "dsp.json" in capsys.readouterr().err


def test_folder_pools_read_any_mode_and_resize(tmp_path):
    from npdg.dsp.train import content_batch, folder_pool, style_batch
    from npdg.errors import DataError

    (tmp_path / "sub").mkdir()
    Image.fromarray(np.full((40, 50, 4), 200, np.uint8), "RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.full((10, 12), 100, np.uint8), "L").save(tmp_path / "sub" / "b.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    pool = folder_pool(str(tmp_path), (16, 32), None, cache=True)
    assert len(pool) == 2
    a = pool.get(0)
    assert a.shape == (3, 16, 32) and torch.allclose(a, torch.full_like(a, 200 / 255), atol=1e-6)
    batch = content_batch(pool, 3, seed=0, step=5, crop=(8, 8))
    assert batch.shape == (3, 3, 8, 8)
    assert torch.equal(batch, content_batch(pool, 3, seed=0, step=5, crop=(8, 8)))  # stateless → resumable
    assert style_batch(pool, pool, 2, 0.5, seed=0, step=1).shape == (2, 3, 16, 32)
    with pytest.raises(DataError, match="not found"):
        folder_pool(str(tmp_path / "missing"), (16, 32), None, True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        folder_pool(str(tmp_path / "empty"), (16, 32), None, True)


def test_train_with_normalized_dvae_identity_and_cosine(config_file, tmp_path):
    """The tiny.yaml recipe's options: standardised D-VAE, decoder identity term, cosine stage 1;
    resume stays exact (the normalisation is fitted once, when stage 2 starts, and checkpointed)."""
    sets = ["--set", "dvae.normalize=true", "--set", "dvae.norm_images=8", "--set", "train.identity_weight=2.0",
            "--set", "train.pretrain_schedule=cosine"]
    out = tmp_path / "n"
    assert main(["dsp", "train", "--config", str(config_file), "--out", str(out), "--no-progress", *sets]) == 0
    rows = _metrics(out)
    assert rows[0]["lr"] == pytest.approx(0.003) and rows[2]["lr"] < rows[1]["lr"] < rows[0]["lr"]
    assert all(r["identity"] > 0 for r in rows if r["stage"] == 2)
    dsp = DSP.load(out)
    assert not torch.equal(dsp.latent.out_scale, torch.ones_like(dsp.latent.out_scale))
    assert not torch.equal(dsp.latent.out_shift, torch.zeros_like(dsp.latent.out_shift))
    resumed = tmp_path / "r"
    assert main(["dsp", "train", "--config", str(config_file), "--out", str(resumed), "--no-progress", *sets,
                 "--set", "train.iters=1"]) == 0
    assert main(["dsp", "train", "--out", str(resumed), "--resume", "--set", "train.iters=3", "--no-progress"]) == 0
    a, b = load_file(str(out / "dsp.safetensors")), load_file(str(resumed / "dsp.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(ConfigError, match="pretrain_schedule"):
        load_dsp_config(config_file, ["train.pretrain_schedule=linear"])
