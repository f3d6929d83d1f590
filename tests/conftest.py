"""Fixtures shared by the test modules: a tiny DSP, randomized scaling factors, tiny run folders."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # test modules import each other's helpers

from npdg.dsp.adain import build_decoder, build_encoder
from npdg.dsp.dvae import LatentDecoder
from npdg.dsp.model import DSP, DSPSpec
from npdg.service import jobs


@pytest.fixture(autouse=True)
def dashboard_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own dashboard cache folder and no finished background jobs from earlier tests."""
    jobs.wait_all(timeout=120)
    jobs.forget()
    folder = tmp_path_factory.mktemp("dashboard-cache")
    monkeypatch.setenv(jobs.CACHE_ENV, str(folder))
    return folder


def tiny_dsp(seed: int = 0) -> DSP:
    """An untrained DSP with a 3-level tiny encoder (4/8/8 channels) and a 6-d latent: fast, deterministic."""
    torch.manual_seed(seed)
    enc = build_encoder("tiny", (4, 8, 8))
    spec = DSPSpec(encoder="tiny", channels=(4, 8, 8), latent_dim=6, hidden=16, image_size=(32, 32))
    return DSP(enc, build_decoder(enc), LatentDecoder(enc.channels, 6, 16), spec).freeze()


def randomize_gamma(model: nn.Module, seed: int = 0, stats: bool = False) -> nn.Module:
    """Give every BN γ (and head gate) a random value in [0, 1), so selection has a real ranking.

    ``stats`` also randomizes BN β and running statistics (soft vs physical equality is then a
    strict test: nothing cancels out).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen))
                if stats:
                    m.bias.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
                    m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                    m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if hasattr(m, "head_gate"):
                m.head_gate.copy_(torch.rand(m.head_gate.numel(), generator=gen))
    return model


def bench_module(name: str):
    """The script ``bench/<name>.py`` imported as a module (its functions are tested without running it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
