"""Whole npdg models on disk: one ``.safetensors`` file per model (save, read metadata, load).

A model file holds the smp model's state dict (smp names, so plain smp can read it too) and string
metadata ``npdg_format``, ``arch``, ``encoder``, ``num_classes``, ``aspp``, ``dtype`` plus any extra
keys. A physically pruned model has a ``pruning_plan.json`` beside its file; this module cannot
rebuild that structure itself (pruning lives above models, see ``docs/architecture.md``), so
:func:`load_model` takes a ``structure`` callable that adapts the dense model to the file, and
refuses a pruned file without one. :func:`npdg.pruning.physical.load_model` passes the plan replay.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

from npdg.errors import ConfigError, DataError
from npdg.models.build import ModelSpec, SegModel, build_model, validate_spec
from npdg.models.weights import read_state_dict
from npdg.runs import PICKLE_REFUSED, atomic_write_bytes

MODEL_FILENAME = "model.safetensors"
PLAN_FILENAME = "pruning_plan.json"
FORMAT_VERSION = "1"
#: Adapts a freshly built dense model to a file's structure: (model, plan path) -> model.
Structure = Callable[[SegModel, Path], SegModel]


def resolve_model_path(path: str | Path) -> Path:
    """A model file, or a run directory holding ``model.safetensors``."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILENAME
    if not path.is_file():
        raise DataError(f"model file not found: {path}")
    return path


def _meta_value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def save_model(model: SegModel, path: str | Path, extra_meta: dict | None = None, fp16: bool = False) -> Path:
    """Write ``model`` as one safetensors file with npdg metadata, atomically (temp file, fsync, rename).

    ``path`` may be a directory (then ``DIR/model.safetensors``). ``extra_meta`` values that are not
    strings are stored as JSON. ``fp16`` halves floating-point tensors (demo assets);
    :func:`load_model` reads them back as float32. Returns the written path.
    """
    if not isinstance(model, SegModel):
        raise ConfigError(f"save_model expects a SegModel, got {type(model).__name__}")
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILENAME
    dtype = torch.float16 if fp16 else torch.float32
    state = {}
    for key, tensor in model.net.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[key] = tensor.contiguous().clone()
    meta = {"npdg_format": FORMAT_VERSION, **model.spec.to_meta(), "dtype": str(dtype).replace("torch.", "")}
    for key, value in (extra_meta or {}).items():
        if key in meta:
            raise ConfigError(f"extra_meta key {key!r} is reserved (npdg writes it itself)")
        meta[str(key)] = _meta_value(value)
    data = save(state, metadata=meta)
    return atomic_write_bytes(data, path)


def read_model_meta(path: str | Path) -> dict[str, str]:
    """The metadata of an npdg model file (or run directory); :class:`DataError` if it is not one."""
    path = resolve_model_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        with open(path, "rb") as fh:
            head = fh.read(2)
        if head[:1] == b"\x80":
            raise DataError(f"{path} is a raw pickle, not an npdg model file (.safetensors): {PICKLE_REFUSED}") from None
        if head == b"PK":
            raise DataError(f"{path} is a PyTorch checkpoint, not an npdg model file (a .safetensors written by npdg); "
                            "pretrained backbone weights go in model.encoder_weights") from None
        raise DataError(f"{path} is not a readable safetensors model file: {exc}") from None
    if "npdg_format" not in meta:
        raise DataError(
            f"{path} is not an npdg model file (no npdg_format metadata); "
            "for pretrained backbone weights use load_encoder_weights / --encoder-weights"
        )
    if meta["npdg_format"] != FORMAT_VERSION:
        raise DataError(f"{path} has npdg_format {meta['npdg_format']!r}; this npdg reads {FORMAT_VERSION!r}")
    return meta


def spec_from_meta(meta: dict[str, str], path: str | Path = "<model>") -> ModelSpec:
    """Rebuild the :class:`ModelSpec` stored in a model file's metadata."""
    try:
        return validate_spec(meta["arch"], meta["encoder"], int(meta["num_classes"]), meta.get("aspp", "smp"))
    except (KeyError, ValueError, ConfigError) as exc:
        raise DataError(f"{path}: invalid model metadata ({exc})") from None


def _check_expected(spec: ModelSpec, path: Path, arch, encoder, num_classes) -> None:
    for name, want in (("arch", arch), ("encoder", encoder), ("num_classes", num_classes)):
        have = getattr(spec, name)
        if want is not None and want != have:
            raise ConfigError(
                f"{path} holds a {spec.arch}/{spec.encoder} model with {spec.num_classes} classes, "
                f"but {name}={want!r} was expected"
            )


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    encoder: str | None = None,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
    structure: Structure | None = None,
) -> SegModel:
    """Build the model a file (or run directory) describes and load its weights strictly.

    ``arch``/``encoder``/``num_classes``, when given, must match the file (:class:`ConfigError`
    otherwise). Tensors whose names or shapes differ from the architecture raise :class:`DataError`
    ``structure`` adapts the dense model to a pruned file (see the module docstring). Returned in eval mode.
    """
    path = resolve_model_path(path)
    spec = spec_from_meta(read_model_meta(path), path)
    _check_expected(spec, path, arch, encoder, num_classes)
    model = build_model(spec.arch, spec.encoder, spec.num_classes, aspp=spec.aspp)
    plan = path.parent / PLAN_FILENAME
    if plan.is_file():
        if structure is None:
            raise DataError(
                f"{path} was physically pruned ({plan.name} beside it): load it with "
                "npdg.pruning.physical.load_model, which replays the plan"
            )
        model = structure(model, plan)
    state = read_state_dict(path)
    target = model.net.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    mismatched = [
        f"{k} file {list(state[k].shape)} vs model {list(target[k].shape)}"
        for k in target
        if k in state and state[k].shape != target[k].shape
    ]
    if missing or unexpected or mismatched:
        detail = "; ".join(
            f"{label} {len(keys)} ({', '.join(keys[:4])}{', …' if len(keys) > 4 else ''})"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
            if keys
        )
        raise DataError(f"{path}: tensors do not fit a {spec.arch}/{spec.encoder} with {spec.num_classes} classes: {detail}")
    state = {k: v.to(target[k].dtype) for k, v in state.items()}
    nn.Module.load_state_dict(model.net, state, strict=True)
    return model.to(device).eval()
