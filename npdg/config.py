"""Run configuration: typed, frozen, loaded from YAML, overridable from the command line.

A configuration is a :class:`Config` made of four sections (``model``, ``data``, ``train``,
``eval``). Every field has a default, so a YAML file only states what differs from them::

    model: {arch: deeplabv3plus, encoder: resnet18}
    train: {iters: 2000, batch_size: 8, lr: 0.01}

Command-line overrides use dotted keys (``--set train.iters=500 --set data.size=128x256``); values are
parsed as YAML scalars/lists and then converted to the field's type, so ``true``, ``0.5``, ``[0.5, 2]``,
``0.5,2`` and ``128x256`` all work where they make sense. An unknown key raises
:class:`~npdg.errors.ConfigError` listing the valid keys of that section, so a typo never silently
trains with a default. :func:`dump_config` writes the fully resolved configuration (every field) back
to YAML; that file, saved in each run directory, reproduces the run.

The machinery is generic over any tree of frozen dataclasses (a root whose fields are sections):
:func:`tree_from_dict`, :func:`override_tree`, :func:`read_yaml_mapping`, :func:`tree_to_dict` and
:func:`tree_to_yaml` also serve the DSP training config (``npdg.dsp.train``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from npdg.data.transforms import parse_size
from npdg.errors import ConfigError

#: Training modes of METHOD.md section 0. Only those in IMPLEMENTED_MODES can run today.
MODES: tuple[str, ...] = (
    "erm",
    "photometric",
    "dsp",
    "dsp_random",
    "slimming",
    "l1norm",
    "random",
    "npdg",
    "npdg_unary",
    "npdg_binary",
)
#: Sparse-training modes (METHOD §4): CE on [clean, DSP] batches + λ_s Σ w̃|γ| (npdg.pruning.sparsity).
SPARSITY_MODES: tuple[str, ...] = ("slimming", "npdg", "npdg_unary", "npdg_binary")
#: Style-perturbed training (METHOD §0): CE on [clean, DSP-stylized] batches; ``dsp`` ascends ε.
DSP_MODES: tuple[str, ...] = ("dsp", "dsp_random")
IMPLEMENTED_MODES: tuple[str, ...] = ("erm", "photometric") + DSP_MODES + SPARSITY_MODES
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")

#: Default source: the embedded synthetic source domain (resolved by :func:`resolve_source`).
DEFAULT_SOURCE = "synthetic"


@dataclass(frozen=True)
class ModelConfig:
    """Which segmentor to build (see ``npdg.models.build_model``)."""

    arch: str = "deeplabv3plus"
    encoder: str = "resnet18"
    num_classes: int = 19
    #: Path to a local file with encoder weights, or None (random init). Never a hub name.
    encoder_weights: str | None = None
    #: DeepLabV3+ ASPP variant: ``smp`` (rates 12/24/36, separable) or ``robustnet`` (6/12/18, plain).
    aspp: str = "smp"


@dataclass(frozen=True)
class DataConfig:
    """Where training and evaluation images come from.

    ``source`` and each entry of ``targets`` is either a synthetic domain name (``"synthetic"`` means
    the embedded source domain) or ``NAME:ROOT`` for a real dataset (``gta5:/data/gta5``).
    Images are resized to ``size`` (H, W) by the loader; the train-time random scale and crop of
    :class:`TrainConfig` then operate on batches of that size.
    """

    source: str = DEFAULT_SOURCE
    size: tuple[int, int] = (256, 512)
    #: Held-out domains evaluated at the end. Empty → every synthetic domain except the source.
    targets: tuple[str, ...] = ()
    train_split: str = "train"
    eval_split: str = "val"
    #: Number of synthetic training images (None → the generator's default length).
    length: int | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, augmentation and bookkeeping of one training run."""

    mode: str = "erm"
    iters: int = 2000
    batch_size: int = 8
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    #: Learning-rate multiplier of everything outside the encoder (mmseg SegFormer: 10).
    head_lr_mult: float = 1.0
    poly_power: float = 0.9
    warmup_iters: int = 0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 500
    #: Also keep ``checkpoints/iter_XXXXXX.pt`` at every checkpoint (not only ``last.pt``).
    keep_checkpoints: bool = False
    amp: bool = True
    channels_last: bool = True
    sync_bn: bool = True
    num_workers: int = 0
    #: Random rescale factor range applied to each training image before cropping.
    scale_range: tuple[float, float] = (0.5, 2.0)
    #: Training crop (H, W); None → ``data.size``.
    crop: tuple[int, int] | None = None
    hflip: bool = True
    #: ``photometric`` mode: colour jitter strength, blur probability and noise std.
    color_jitter: float = 0.3
    blur_prob: float = 0.5
    noise_std: float = 0.03


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation at the end of training (and every ``train.eval_every`` iterations)."""

    batch_size: int = 4
    #: Evaluation protocol preset of npdg.evaluate (robustnet | mmseg); synthetic data uses its native size.
    protocol: str = "robustnet"
    #: Max images per dataset (None → all).
    limit: int | None = None
    #: Max images per dataset for the periodic evaluation during training.
    periodic_limit: int | None = 32
    #: Also evaluate the source domain's eval split (reported as "source" mIoU).
    include_source: bool = True


# ---- DSP and sparsity sections (sparse-training modes; the dsp section also serves dsp/dsp_random)
@dataclass(frozen=True)
class DSPConfig:
    """The trained DSP used to stylize training batches (``python -m npdg dsp train`` output)."""

    #: DSP folder (dsp.json + dsp.safetensors); required by the npdg* modes.
    path: str | None = None
    #: Gradient-ascent steps on ε per iteration (0 = random styles, no ascent).
    ascent_steps: int = 1
    #: Ascent step size (None → the rule's default: 1.0 normalized, 20 for ASM).
    step_size: float | None = None
    #: Re-draw ε from N(0, I) every this many iterations (0 = never).
    reset_every: int = 10
    #: Content strength α of AdaIN blending (None → the DSP's own).
    alpha: float | None = None
    #: Ascent rule: normalized | asm.
    rule: str = "normalized"


@dataclass(frozen=True)
class SparsityConfig:
    """Sparse training (modes slimming / npdg / npdg_unary / npdg_binary): ``γ.grad += λ_s·w̃·sign(γ)``."""

    #: Strength λ_s of the γ penalty (Network Slimming: 1e-4 VGG, 1e-5 ResNet).
    lambda_s: float = 1e-4
    #: How many times the sensitivity weights w are recomputed during sparse training (npdg modes).
    refresh: int = 4
    #: λ combining unary and binary sensitivity (npdg; npdg_unary forces 1, npdg_binary forces 0).
    lam: float = 0.4
    #: Unary statistic: share (share of variance explained by style) | raw.
    unary: str = "share"
    #: Source images and DSP styles per image of each sensitivity probe.
    probe_images: int = 8
    styles: int = 4


@dataclass(frozen=True)
class Config:
    """A complete run configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dsp: DSPConfig = field(default_factory=DSPConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)

    @property
    def crop(self) -> tuple[int, int]:
        """The effective training crop (H, W)."""
        return self.train.crop if self.train.crop is not None else self.data.size


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "dsp": DSPConfig,
    "sparsity": SparsityConfig,
}


# --------------------------------------------------------------------------------------------------
# type conversion
# --------------------------------------------------------------------------------------------------
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    """``X | None`` → (True, X); anything else → (False, tp)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _as_list(value: Any) -> list:
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        return [v.strip() for v in text.split(",") if v.strip()] if text else []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _to_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.strip().lower() in ("true", "yes", "on", "1")
    raise ConfigError(f"{key} must be true or false, got {value!r}")


def _to_scalar(value: Any, tp: type, key: str) -> Any:
    if tp is bool:
        return _to_bool(value, key)
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list, tuple)):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported field type {tp!r}")  # pragma: no cover - programming error


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or ``--set``) to the annotated type ``tp`` of field ``key``."""
    optional, inner = _is_optional(tp)
    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "~") and optional):
        if optional:
            return None
        raise ConfigError(f"{key} cannot be empty (null)")
    if typing.get_origin(inner) is tuple:
        args = typing.get_args(inner)
        if args == (int, int):  # a size "HxW"
            if not isinstance(value, (str, list, tuple)):
                raise ConfigError(f"{key} must be written HxW, e.g. 256x512; got {value!r}")
            try:
                if isinstance(value, str) and "," not in value:
                    return parse_size(value)
                return parse_size([_to_scalar(v, int, key) for v in _as_list(value)])
            except ConfigError as exc:
                raise ConfigError(f"{key}: {exc}") from None
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_to_scalar(v, args[0], key) for v in _as_list(value))
        items = _as_list(value)
        if len(items) != len(args):
            raise ConfigError(f"{key} must have {len(args)} values, got {value!r}")
        return tuple(_to_scalar(v, a, key) for v, a in zip(items, args))
    return _to_scalar(value, inner, key)


# --------------------------------------------------------------------------------------------------
# generic config trees: a frozen root dataclass whose fields are frozen section dataclasses
# --------------------------------------------------------------------------------------------------
T = typing.TypeVar("T")


def tree_sections(root: type) -> dict[str, type]:
    """``{section name: section dataclass}`` of a config tree class, in field order."""
    hints = _hints(root)
    return {f.name: hints[f.name] for f in fields(root)}


def _section_from_dict(name: str, cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: section '{name}' must be a mapping, got {type(values).__name__}")
    hints = _hints(cls)
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
            f"valid keys in '{name}': {', '.join(valid)}"
        )
    kwargs = {k: coerce(v, hints[k], f"{name}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def tree_from_dict(root: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    """Build a ``root`` config tree from a nested dict (missing keys take defaults; not validated).

    Values are converted with :func:`coerce`; an unknown section or key raises ConfigError listing
    the valid ones.
    """
    sections = tree_sections(root)
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections, got {type(data).__name__}")
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {', '.join(unknown)}; valid sections: {', '.join(sections)}")
    return root(**{name: _section_from_dict(name, cls, data.get(name) or {}, where) for name, cls in sections.items()})


def read_yaml_mapping(path: str | Path | None) -> tuple[dict[str, Any], str]:
    """The YAML file ``path`` as a dict (None → ``{}``) and the name to cite in errors."""
    if path is None:
        return {}, "defaults"
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        return yaml.safe_load(p.read_text()) or {}, str(p)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None


def _split_override(item: str, sections: dict[str, type]) -> tuple[str, str, Any]:
    if "=" not in item:
        raise ConfigError(f"override must be written key=value (e.g. train.iters=100), got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if len(parts) != 2 or parts[0] not in sections:
        raise ConfigError(f"override key must be section.field with section in {', '.join(sections)}; got {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts[0], parts[1], value


def override_tree(cfg: T, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Return the config tree ``cfg`` with dotted ``section.field=value`` overrides applied (not validated).

    Values are parsed as YAML and converted to the field's type; an unknown key raises ConfigError
    listing the valid keys of its section.
    """
    sections = tree_sections(type(cfg))
    for item in overrides:
        section, name, value = _split_override(item, sections)
        cls = sections[section]
        valid = [f.name for f in fields(cls)]
        if name not in valid:
            raise ConfigError(f"unknown key '{section}.{name}'; valid keys in '{section}': {', '.join(valid)}")
        new_value = coerce(value, _hints(cls)[name], f"{section}.{name}")
        cfg = replace(cfg, **{section: replace(getattr(cfg, section), **{name: new_value})})
    return cfg


def tree_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples → lists) of a config tree, for YAML/JSON and ``torch.load(weights_only=True)``."""

    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {name: plain(dataclasses.asdict(getattr(cfg, name))) for name in tree_sections(type(cfg))}


def tree_to_yaml(cfg: Any) -> str:
    """The fully resolved config tree as YAML text (every field)."""
    return yaml.safe_dump(tree_to_dict(cfg), sort_keys=False, default_flow_style=None)


# --------------------------------------------------------------------------------------------------
# building and overriding a Config
# --------------------------------------------------------------------------------------------------
def config_from_dict(data: dict[str, Any] | None, where: str = "config") -> Config:
    """Build and validate a :class:`Config` from a nested dict (missing keys take defaults)."""
    return validate(tree_from_dict(Config, data, where))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML file (None → all defaults), apply ``key=value`` overrides, validate."""
    data, where = read_yaml_mapping(path)
    cfg = config_from_dict(data, where)
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Return ``cfg`` with dotted ``section.field=value`` overrides applied and validated."""
    return validate(override_tree(cfg, overrides))


def check_ranges(positive: dict[str, Any], nonneg: dict[str, Any] | None = None) -> None:
    """ConfigError naming the first key of ``positive`` that is <= 0, then of ``nonneg`` that is < 0."""
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    for key, value in (nonneg or {}).items():
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")


def validate(cfg: Config) -> Config:
    """Check value ranges and combinations; raise ConfigError naming the offending key."""
    t, d = cfg.train, cfg.data
    if t.mode not in MODES:
        raise ConfigError(f"train.mode {t.mode!r} is unknown; valid modes: {', '.join(MODES)}")
    if t.mode not in IMPLEMENTED_MODES:
        raise ConfigError(
            f"train.mode {t.mode!r} is not implemented yet; implemented modes: {', '.join(IMPLEMENTED_MODES)}"
        )
    if t.optimizer not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer {t.optimizer!r} is unknown; valid: {', '.join(OPTIMIZERS)}")
    if t.batch_size < 2:
        raise ConfigError(
            f"train.batch_size must be at least 2 (got {t.batch_size}): BatchNorm and DeepLabV3+'s ASPP "
            "image-pooling branch cannot train on a single image per step"
        )
    positive = {
        "train.iters": t.iters,
        "train.lr": t.lr,
        "train.log_every": t.log_every,
        "train.checkpoint_every": t.checkpoint_every,
        "eval.batch_size": cfg.eval.batch_size,
        "model.num_classes": cfg.model.num_classes,
    }
    nonneg = {
        "train.warmup_iters": t.warmup_iters,
        "train.eval_every": t.eval_every,
        "train.num_workers": t.num_workers,
        "train.weight_decay": t.weight_decay,
        "train.head_lr_mult": t.head_lr_mult,
    }
    check_ranges(positive, nonneg)
    lo, hi = t.scale_range
    if not (0 < lo <= hi):
        raise ConfigError(f"train.scale_range must satisfy 0 < min <= max, got {list(t.scale_range)}")
    if d.length is not None and d.length < t.batch_size:
        raise ConfigError(f"data.length ({d.length}) must be at least train.batch_size ({t.batch_size})")
    if not d.source:
        raise ConfigError("data.source must name a synthetic domain or NAME:ROOT")
    _validate_dsp_sparsity(cfg)
    return cfg


def _validate_dsp_sparsity(cfg: Config) -> None:
    """Ranges of the ``dsp`` and ``sparsity`` sections; the npdg* modes need ``dsp.path``."""
    s, g = cfg.sparsity, cfg.dsp
    if s.lambda_s < 0:
        raise ConfigError(f"sparsity.lambda_s must be >= 0, got {s.lambda_s}")
    if s.refresh < 0:
        raise ConfigError(f"sparsity.refresh must be >= 0, got {s.refresh}")
    if not 0.0 <= s.lam <= 1.0:
        raise ConfigError(f"sparsity.lam must be in [0, 1], got {s.lam}")
    if s.unary not in ("share", "raw"):
        raise ConfigError(f"sparsity.unary must be share or raw, got {s.unary!r}")
    if s.probe_images < 1:
        raise ConfigError(f"sparsity.probe_images must be >= 1, got {s.probe_images}")
    if s.styles < 2:
        raise ConfigError(f"sparsity.styles must be >= 2 (variance over styles), got {s.styles}")
    if g.ascent_steps < 0 or g.reset_every < 0:
        raise ConfigError(f"dsp.ascent_steps and dsp.reset_every must be >= 0, got {g.ascent_steps}, {g.reset_every}")
    if g.rule not in ("normalized", "asm"):
        raise ConfigError(f"dsp.rule must be normalized or asm, got {g.rule!r}")
    if cfg.train.mode in DSP_MODES + SPARSITY_MODES and cfg.train.mode != "slimming" and not g.path:
        raise ConfigError(
            f"train.mode {cfg.train.mode} needs a trained DSP: set dsp.path (e.g. --set dsp.path=runs/dsp), "
            "made with `python -m npdg dsp train`"
        )


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (tuples → lists) suitable for YAML/JSON and ``torch.load(weights_only=True)``."""
    return tree_to_dict(cfg)


def dump_config(cfg: Config, path: str | Path | None = None) -> str:
    """Serialize the fully resolved configuration as YAML; also write it to ``path`` if given."""
    text = tree_to_yaml(cfg)
    if path is not None:
        Path(path).write_text(text)
    return text


def valid_keys() -> list[str]:
    """Every ``section.field`` key accepted by ``--set``."""
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)]
