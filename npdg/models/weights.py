"""Local weight files: reading state dicts safely and loading pretrained encoder weights.

Nothing here downloads anything, and nothing here executes code from a file: ``.pth``/``.pt``
files are read with ``torch.load(..., weights_only=True)`` (a pickle that carries Python objects
other than tensors and containers is refused with a :class:`DataError`), ``.safetensors`` files
hold tensors only by construction.

Encoder weights (:func:`load_encoder_weights`) may come in any of the common namings:

* torchvision / timm classification checkpoints (``conv1.weight``, ``layer1.0.bn1.weight``,
  ``features.0.weight``, ``patch_embed1.proj.weight``): smp's encoders for ResNet, MobileNetV2,
  VGG and MiT subclass those models, so the names are already the encoder's; the classifier
  (``fc.``, ``classifier.``, ``head.``) is skipped;
* wrapped in a training checkpoint: ``{"state_dict": ...}``, ``{"model": ...}`` (nested too);
* prefixed: ``module.`` (DataParallel/DDP), ``net.`` (an npdg :class:`SegModel`), ``model.``,
  and a whole segmentation model's ``encoder.`` (smp) or ``backbone.`` (mmseg) part, whose other
  parts (decoder, heads) are skipped and reported.

Whole npdg models are saved and loaded by :mod:`npdg.models.store`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from npdg.errors import ConfigError, DataError, NpdgError
from npdg.runs import torch_load

#: Keys of a training checkpoint that may wrap the state dict, tried in this order.
WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model", "model_state_dict", "model_state", "net", "weights")
#: Prefixes that wrap *every* key (data-parallel, wrapper modules) and are simply removed.
GLOBAL_PREFIXES: tuple[str, ...] = ("module.", "net.", "model.", "_orig_mod.")
#: Prefixes that select the encoder part of a whole segmentation model.
ENCODER_PREFIXES: tuple[str, ...] = ("encoder.", "backbone.")
#: Classification heads of ImageNet checkpoints: never part of a segmentation encoder.
HEAD_PREFIXES: tuple[str, ...] = ("fc.", "classifier.", "head.", "last_linear.")
WEIGHT_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


# ------------------------------------------------------------------------------------ reading


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` dict from ``.safetensors`` or a weights-only torch pickle.

    Training-checkpoint wrappers (``state_dict``, ``model``, ...) are unwrapped. Raises
    :class:`DataError` for a missing/unreadable file, a pickle that carries code or objects, or a
    file without tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataError(f"cannot read safetensors file {path}: {exc}") from None
    try:
        obj = torch_load(path, what="weights file")
    except NpdgError as exc:
        raise DataError(str(exc)) from None
    return _unwrap(obj, path)


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj, path: Path, depth: int = 0) -> dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint object (plain dict, or nested under WRAPPER_KEYS)."""
    if _is_tensor_dict(obj):
        return {str(k): v for k, v in obj.items()}
    if isinstance(obj, Mapping) and depth < 4:
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                return _unwrap(obj[key], path, depth + 1)
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:  # a state dict with a few non-tensor extras (e.g. a version int)
            return tensors
    kind = type(obj).__name__
    keys = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else ""
    raise DataError(f"{path} holds no state dict of tensors (found a {kind}{': ' + keys if keys else ''})")


# ------------------------------------------------------------------------------------ encoders


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_encoder_weights` did, key by key (names are the encoder's own)."""

    path: str
    loaded: tuple[str, ...]
    missing: tuple[str, ...]  # encoder parameters/buffers the file does not provide
    unexpected: tuple[str, ...]  # file entries with no counterpart in the encoder
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # (key, file, model shape)
    skipped: tuple[str, ...] = ()  # entries deliberately ignored: classifier heads, decoder parts
    stripped: tuple[str, ...] = field(default=())  # prefixes removed from the file's names

    @property
    def num_loaded(self) -> int:
        return len(self.loaded)

    @property
    def num_missing(self) -> int:
        return len(self.missing)

    @property
    def num_unexpected(self) -> int:
        return len(self.unexpected)

    @property
    def num_mismatched(self) -> int:
        return len(self.mismatched)

    @property
    def complete(self) -> bool:
        """Every encoder tensor was loaded and every file tensor was used or knowingly skipped."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, max_keys: int = 5) -> str:
        """One readable paragraph; lists the first few offending keys."""

        def few(keys) -> str:
            keys = list(keys)
            more = f", … (+{len(keys) - max_keys})" if len(keys) > max_keys else ""
            return ", ".join(map(str, keys[:max_keys])) + more

        parts = [f"{self.path}: loaded {self.num_loaded} tensors"]
        if self.stripped:
            parts.append(f"stripped prefixes {', '.join(self.stripped)}")
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)} non-encoder entries ({few(self.skipped)})")
        if self.missing:
            parts.append(f"missing {self.num_missing} ({few(self.missing)})")
        if self.unexpected:
            parts.append(f"unexpected {self.num_unexpected} ({few(self.unexpected)})")
        if self.mismatched:
            shapes = [f"{k} file {list(a)} vs model {list(b)}" for k, a, b in self.mismatched]
            parts.append(f"shape mismatch {self.num_mismatched} ({few(shapes)})")
        return "; ".join(parts)


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Remove wrapper prefixes and select the encoder part; return (state, stripped, skipped)."""
    stripped: list[str] = []
    skipped: list[str] = []
    changed = True
    while changed and sd:
        changed = False
        for prefix in GLOBAL_PREFIXES + ENCODER_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                stripped.append(prefix)
                changed = True
                break
        if changed:
            continue
        for prefix in ENCODER_PREFIXES:  # a whole segmentation model: keep its encoder only
            if any(k.startswith(prefix) for k in sd):
                skipped += [k for k in sd if not k.startswith(prefix)]
                sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
                stripped.append(prefix)
                changed = True
                break
    return sd, stripped, skipped


def _encoder_of(model: nn.Module) -> nn.Module:
    """The encoder of an npdg SegModel (``model.net.encoder``) or of a bare smp model (``model.encoder``)."""
    net = getattr(model, "net", None)
    if isinstance(net, nn.Module) and isinstance(getattr(net, "encoder", None), nn.Module):
        return net.encoder
    if hasattr(model, "encoder") and isinstance(model.encoder, nn.Module):
        return model.encoder
    raise ConfigError(f"cannot find an encoder in a {type(model).__name__}")


def match_encoder_state(
    encoder: nn.Module, sd: dict[str, torch.Tensor], path: str = "<state dict>"
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Map a raw state dict onto ``encoder``'s names; return (tensors to load, report)."""
    sd, stripped, skipped = _strip_prefixes(dict(sd))
    target = encoder.state_dict()
    heads = [k for k in sd if k not in target and k.startswith(HEAD_PREFIXES)]
    skipped += heads
    sd = {k: v for k, v in sd.items() if k not in set(heads)}
    loadable, mismatched = {}, []
    for key, value in sd.items():
        if key in target:
            if tuple(value.shape) == tuple(target[key].shape):
                loadable[key] = value
            else:
                mismatched.append((key, tuple(value.shape), tuple(target[key].shape)))
    report = LoadReport(
        path=str(path),
        loaded=tuple(loadable),
        missing=tuple(k for k in target if k not in sd),
        unexpected=tuple(k for k in sd if k not in target),
        mismatched=tuple(mismatched),
        skipped=tuple(skipped),
        stripped=tuple(stripped),
    )
    return loadable, report


def load_encoder_weights(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load pretrained encoder weights from a local file into ``model``'s encoder.

    ``strict`` (default) refuses — with a :class:`DataError` naming the keys and shapes — any file
    that leaves encoder tensors missing, carries tensors the encoder does not have, or has shape
    mismatches; nothing is loaded then. ``strict=False`` loads every tensor whose name and shape
    match and reports the rest. A file of which nothing matches is always refused.
    """
    sd = read_state_dict(path)
    encoder = _encoder_of(model)
    loadable, report = match_encoder_state(encoder, sd, str(path))
    if not loadable:
        sample = ", ".join(list(sd)[:5])
        raise DataError(
            f"no tensor of {path} matches the {type(encoder).__name__} encoder (file keys start: {sample}); "
            "is it the weights of another backbone?"
        )
    if strict and not report.complete:
        raise DataError(f"encoder weights do not fit (pass strict=False to load what matches): {report.summary()}")
    # nn.Module.load_state_dict directly: smp's encoders override it with incompatible signatures.
    nn.Module.load_state_dict(encoder, loadable, strict=False)
    return report
