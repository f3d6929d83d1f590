"""The service package core (npdg.service): one engine lock, busy flag, device badge, caches, shared models."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_gamma, tiny_dsp

import npdg.service as svc
from npdg.errors import DataError
from npdg.models import build_model, save_model

SIZE = (64, 128)


def make_assets(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """A tiny DeepLabV3+ R18 (19 classes, random γ) saved as ``root/run/model.safetensors`` and a
    tiny DSP in ``root/dsp``; returns (run folder, DSP folder)."""
    torch.manual_seed(seed)
    model = randomize_gamma(build_model("deeplabv3plus", "resnet18", 19).eval(), seed=seed, stats=True)
    run = root / "run"
    run.mkdir(parents=True, exist_ok=True)
    save_model(model, run / "model.safetensors")
    dsp_dir = tiny_dsp(seed).save(root / "dsp")
    return run, dsp_dir


def test_engine_lock_is_reentrant_and_sets_the_busy_flag():
    assert not svc.is_busy()
    with svc.engine():
        assert svc.is_busy()
        with svc.engine():  # re-entrant: services call services
            assert svc.is_busy()
        assert svc.is_busy()
    assert not svc.is_busy()
    # another thread waits for the lock
    order = []

    def other() -> None:
        with svc.engine():
            order.append("other")

    with svc.engine():
        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.05)
        order.append("first")
    t.join(2)
    assert order == ["first", "other"] and not svc.is_busy()


def test_device_info_names_the_engine_device():
    info = svc.device_info()
    assert info.kind == ("cuda" if torch.cuda.is_available() else "cpu")
    assert str(svc.engine_device()).startswith(info.kind) and info.label


def test_device_badge_without_torch_names_the_cpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert svc._no_gpu_driver()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.delitem(sys.modules, "torch")  # as if torch were not imported yet
    if svc._no_gpu_driver():
        assert svc.device_info() == svc.DeviceInfo("cpu", "cpu", "CPU", "CPU")


def test_data_page_code_never_imports_torch():
    """The first page a user opens (Data) renders scenes without torch: 2 s of the cold start."""
    code = ("import sys; sys.path.insert(0, '.');"
            "import app.components, app.inputs, app.nav, app.state, npdg.service.datasets;"
            "import npdg.service.data as d;"
            "v = d.scene_views('val', 3, ('source', 'night', 'fog'), (64, 128)); d.appearance_stats(v);"
            "from npdg.service import device_info; device_info();"
            "print(sorted(m for m in ('torch', 'segmentation_models_pytorch', 'timm') if m in sys.modules))")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_lru_cache_and_keys():
    cache = svc.LRU(2)
    calls = []
    for key in ("a", "b", "a", "c", "b"):
        cache.get(key, lambda key=key: calls.append(key) or key.upper())
    assert calls == ["a", "b", "c", "b"] and len(cache) == 2  # "b" was evicted by "c" after "a" was used
    a = np.arange(6).reshape(2, 3)
    assert svc.array_key(a) == svc.array_key(a.copy()) != svc.array_key(a + 1)
    ro = svc.readonly(np.zeros(3))
    with pytest.raises(ValueError):
        ro[0] = 1


def test_shared_model_is_loaded_once_per_file_version(tmp_path):
    run, dsp_dir = make_assets(tmp_path)
    m1 = svc.shared_model(run)
    assert svc.shared_model(run) is m1 and not m1.training
    d1 = svc.shared_dsp(dsp_dir)
    assert svc.shared_dsp(dsp_dir) is d1
    time.sleep(0.01)
    save_model(build_model("deeplabv3plus", "resnet18", 19), run / "model.safetensors")  # a new version
    assert svc.shared_model(run) is not m1
    svc.clear_caches()
    with pytest.raises(DataError):
        svc.shared_model(tmp_path / "missing")
