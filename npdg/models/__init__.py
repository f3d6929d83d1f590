"""Models: smp builders (:mod:`.build`), local weight files (:mod:`.weights`), whole-model files
(:mod:`.store`), MiT head gates (:mod:`.gates`), prunable units and coupling groups (:mod:`.units`),
device choice."""

from __future__ import annotations

import torch

from npdg.errors import ConfigError
from npdg.models.build import (
    ARCHS,
    ASPP_VARIANTS,
    ENCODERS,
    ModelSpec,
    SegModel,
    build_model,
    validate_spec,
)
from npdg.models.store import load_model, read_model_meta, resolve_model_path, save_model
from npdg.models.weights import LoadReport, load_encoder_weights, read_state_dict

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(name: str | torch.device | None = "auto") -> torch.device:
    """Resolve a device name: ``auto`` picks CUDA, then Apple MPS, then CPU.

    ``cuda``, ``cuda:N``, ``mps`` and ``cpu`` are honoured as given, but one that this machine
    lacks raises :class:`ConfigError` instead of failing later inside a forward pass.
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; valid: {', '.join(DEVICE_CHOICES)} (or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type == "mps" and not _mps_available():
        raise ConfigError("device 'mps' requested but Apple MPS is not available on this machine")
    elif device.type not in {"cpu", "cuda", "mps"}:
        raise ConfigError(f"unsupported device {name!r}; valid: {', '.join(DEVICE_CHOICES)} (or cuda:N)")
    return device


__all__ = [
    "ARCHS",
    "ASPP_VARIANTS",
    "DEVICE_CHOICES",
    "ENCODERS",
    "LoadReport",
    "ModelSpec",
    "SegModel",
    "build_model",
    "load_encoder_weights",
    "load_model",
    "read_model_meta",
    "read_state_dict",
    "resolve_model_path",
    "save_model",
    "select_device",
    "validate_spec",
]
