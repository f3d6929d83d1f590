"""Run configuration: typed, frozen, loaded from YAML, overridable from the command line.

A configuration is a :class:`Config` made of sections (``model``, ``data``, ``train``, ``eval``,
``dsp``, ``sparsity``, ``prune``). Every field has a default, so a YAML file only states what differs from them::

    model: {arch: deeplabv3plus, encoder: resnet18}
    train: {iters: 2000, batch_size: 8, lr: 0.01}

Command-line overrides use dotted keys (``--set train.iters=500 --set data.size=128x256``); values are
parsed as YAML scalars/lists and then converted to the field's type, so ``true``, ``0.5``, ``[0.5, 2]``,
``0.5,2`` and ``128x256`` all work where they make sense. An unknown key raises
:class:`~npdg.errors.ConfigError` listing the valid keys of that section, so a typo never silently
trains with a default. :func:`dump_config` writes the fully resolved configuration (every field) back
to YAML; that file, saved in each run directory, reproduces the run.

The machinery is generic over any tree of frozen dataclasses (a root whose fields are sections), and
:func:`load_tree` is the one loader of npdg: it also reads the DSP training config
(``npdg.dsp.config``). Fields declare their numeric range or choices (:func:`num`, :func:`choice`) and
:func:`check_tree` enforces them, so no run starts with ``inf``, ``nan`` or an out-of-range value.
This module checks types and ranges only; which training modes and pruning criteria exist is known
to ``npdg.recipes.modes`` alone.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from npdg.errors import ConfigError
from npdg.runs import atomic_write_text

OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
#: Ascent rules for the DSP latent (docs/method.md §1); implemented by ``npdg.dsp.model.DSP.ascend``.
ASCENT_RULES: tuple[str, ...] = ("normalized", "asm")
#: Unary sensitivity statistics (docs/method.md §3); implemented by ``npdg.sensitivity``.
UNARY_MODES: tuple[str, ...] = ("share", "raw")
#: λ of ``w = λ·w^U + (1 − λ)·w^B`` (docs/method.md §3): the paper's best value. The one place it is written.
DEFAULT_LAMBDA = 0.4
#: Pruning rate r (docs/method.md §5): the paper's best value. The one place it is written.
DEFAULT_RATE = 0.3
#: Per-group limits of selection (docs/method.md §5): kept channels a multiple of 8 (at least 8), at
#: most 90 % of a group pruned.
DEFAULT_ROUND_TO = 8
DEFAULT_MAX_LAYER_RATIO = 0.9
#: Which units a prune may remove (``prune.units``): all, BN filters only, or attention heads only.
UNIT_CHOICES: tuple[str, ...] = ("all", "filters", "heads")
#: Default source: the embedded synthetic source domain (``npdg.data.specs``).
DEFAULT_SOURCE = "synthetic"
#: Largest seed: torch generators take at most 64-bit seeds, and seeds are combined (seed × 1000 + rank).
MAX_SEED = 2**31 - 1
#: Largest input size (H·W pixels) a cost/latency report accepts: 4096×4096, 16 times a 1024×1024
#: frame. Larger sizes exhaust memory on ordinary machines long before they say anything useful.
MAX_PIXELS = 4096 * 4096
#: Largest batch a latency measurement takes.
MAX_BATCH = 64


def parse_size(text: str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Parse a size given as ``"HxW"`` (e.g. ``"256x512"``) or ``(H, W)`` into ``(H, W)``."""
    if isinstance(text, (tuple, list)):
        if len(text) != 2:
            raise ConfigError(f"size must have two numbers (H, W), got {text!r}")
        try:
            h, w = (int(v) for v in text)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"size must be two integers (H, W), got {text!r}") from None
    else:
        m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
        if not m:
            raise ConfigError(f"size must be written HxW, e.g. 256x512; got {text!r}")
        h, w = int(m.group(1)), int(m.group(2))
    if h <= 0 or w <= 0:
        raise ConfigError(f"size must be positive, got {h}x{w}")
    return h, w


def check_unit_interval(name: str, value: float) -> float:
    """``value`` as a float in [0, 1] (λ, α, probabilities), else ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def num(default: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
        hi_open: bool = False) -> Any:
    """A dataclass field with a numeric range, checked by :func:`check_tree` (``None`` always passes)."""
    return field(default=default, metadata={"range": (lo, hi, lo_open, hi_open)})


def choice(default: str, choices: tuple[str, ...]) -> Any:
    """A dataclass field whose value must be one of ``choices``, checked by :func:`check_tree`."""
    return field(default=default, metadata={"choices": choices})


@dataclass(frozen=True)
class ModelConfig:
    """Which segmentor to build (see ``npdg.models.build_model``)."""

    arch: str = "deeplabv3plus"
    encoder: str = "resnet18"
    num_classes: int = num(19, 1)
    #: Path to a local file with encoder weights, or None (random init). Never a hub name.
    encoder_weights: str | None = None
    #: DeepLabV3+ ASPP variant: ``smp`` (rates 12/24/36, separable) or ``robustnet`` (6/12/18, plain).
    aspp: str = choice("smp", ("smp", "robustnet"))


@dataclass(frozen=True)
class DataConfig:
    """Where training and evaluation images come from.

    ``source`` and each entry of ``targets`` is a dataset spec (``npdg.data.specs``): a synthetic
    domain name (``"synthetic"`` means the embedded source domain) or ``NAME:ROOT[@SPLIT_FILE]`` for
    a real dataset (``gta5:/data/gta5``). Images are resized to ``size`` (H, W) by the loader; the
    train-time random scale and crop of :class:`TrainConfig` then operate on batches of that size.
    """

    source: str = DEFAULT_SOURCE
    size: tuple[int, int] = (256, 512)
    #: Held-out domains evaluated at the end. Empty → every synthetic domain except the source.
    targets: tuple[str, ...] = ()
    train_split: str = "train"
    eval_split: str = "val"
    #: Number of synthetic training images (None → the generator's default length).
    length: int | None = num(None, 1)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, augmentation and bookkeeping of one training run."""

    #: Training mode; the names and what each plugs into the loop are in ``npdg.recipes.modes``.
    mode: str = "erm"
    iters: int = num(2000, 1)
    batch_size: int = num(8, 2)
    optimizer: str = choice("sgd", OPTIMIZERS)
    lr: float = num(0.01, 0, lo_open=True)
    momentum: float = num(0.9, 0, 1, hi_open=True)
    weight_decay: float = num(5e-4, 0)
    #: Learning-rate multiplier of everything outside the encoder (mmseg SegFormer: 10).
    head_lr_mult: float = num(1.0, 0)
    poly_power: float = num(0.9, 0)
    warmup_iters: int = num(0, 0)
    seed: int = num(0, 0, MAX_SEED)
    log_every: int = num(10, 1)
    eval_every: int = num(0, 0)
    checkpoint_every: int = num(500, 1)
    #: Also keep ``checkpoints/iter_XXXXXX.pt`` at every checkpoint (not only ``last.pt``).
    keep_checkpoints: bool = False
    amp: bool = True
    channels_last: bool = True
    sync_bn: bool = True
    num_workers: int = num(0, 0)
    #: Random rescale factor range applied to each training image before cropping.
    scale_range: tuple[float, float] = (0.5, 2.0)
    #: Training crop (H, W); None → ``data.size``.
    crop: tuple[int, int] | None = None
    hflip: bool = True
    #: ``photometric`` mode: colour jitter strength, blur probability and noise std.
    color_jitter: float = num(0.3, 0, 1)
    blur_prob: float = num(0.5, 0, 1)
    noise_std: float = num(0.03, 0)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation at the end of training (and every ``train.eval_every`` iterations)."""

    batch_size: int = num(4, 1)
    #: Evaluation protocol preset of npdg.evaluate (robustnet | mmseg); synthetic data uses its native size.
    protocol: str = "robustnet"
    #: Max images per dataset (None → all).
    limit: int | None = num(None, 1)
    #: Max images per dataset for the periodic evaluation during training.
    periodic_limit: int | None = num(32, 1)
    #: Also evaluate the source domain's eval split (reported as "source" mIoU).
    include_source: bool = True


@dataclass(frozen=True)
class DSPConfig:
    """The trained DSP used to stylize training batches (``python -m npdg dsp train`` output)."""

    #: DSP folder (dsp.json + dsp.safetensors); required by the modes that stylize (npdg.recipes.modes).
    path: str | None = None
    #: Gradient-ascent steps on ε per iteration (0 = random styles, no ascent).
    ascent_steps: int = num(1, 0)
    #: Ascent step size (None → the rule's default: 1.0 normalized, 20 for ASM).
    step_size: float | None = num(None, 0, lo_open=True)
    #: Re-draw ε from N(0, I) every this many iterations (0 = never).
    reset_every: int = num(10, 0)
    #: Content strength α of AdaIN blending (None → the DSP's own).
    alpha: float | None = num(None, 0, 1)
    #: Ascent rule: normalized | asm.
    rule: str = choice("normalized", ASCENT_RULES)


@dataclass(frozen=True)
class SparsityConfig:
    """Sparse training (docs/method.md §4): ``γ.grad += λ_s·w̃·sign(γ)``."""

    #: Strength λ_s of the γ penalty (Network Slimming: 1e-4 VGG, 1e-5 ResNet).
    lambda_s: float = num(1e-4, 0)
    #: How many times the sensitivity weights w are recomputed during sparse training (npdg modes).
    refresh: int = num(4, 0)
    #: λ combining unary and binary sensitivity (npdg; the table in npdg.recipes.modes may force it).
    lam: float = num(DEFAULT_LAMBDA, 0, 1)
    #: Unary statistic: share (share of variance explained by style) | raw.
    unary: str = choice("share", UNARY_MODES)
    #: Source images and DSP styles per image of each sensitivity probe.
    probe_images: int = num(8, 1)
    styles: int = num(4, 2)


@dataclass(frozen=True)
class PruneConfig:
    """The prune pipeline (``npdg.recipes.prune``): sparse-train → select → prune → fine-tune → cost.

    A pruned run's ``config.yaml`` records the section it was made with.
    """

    #: Pruning criterion; the names and what each means are in ``npdg.recipes.modes``.
    criterion: str = "npdg"
    #: Fraction of the units pruned (rate mode), or the cap of threshold mode.
    rate: float = num(DEFAULT_RATE, 0, 1, hi_open=True)
    #: Threshold mode: prune units whose score is below this (capped at ``rate``); None = rate mode.
    threshold: float | None = num(None, 0, lo_open=True)
    #: Sparse-training iterations before selection (sparse criteria only; 0 = use γ as it is).
    sparse_iters: int = num(0, 0)
    #: Fine-tuning iterations of the pruned model.
    finetune_iters: int = num(0, 0)
    #: λ_s of the sparse training (None → ``sparsity.lambda_s``).
    lambda_s: float | None = num(None, 0)
    #: λ mixing unary and binary sensitivity in the sparse training's weights (None → ``sparsity.lam``;
    #: npdg_unary / npdg_binary force 1 / 0).
    lam: float | None = num(None, 0, 1)
    #: How many times the sparse training recomputes the sensitivity weights (None → ``sparsity.refresh``).
    refresh: int | None = num(None, 0)
    #: Source images of each of its sensitivity probes (None → ``sparsity.probe_images``).
    probe_images: int | None = num(None, 1)
    #: Fine-tuning learning rate (None → ``train.lr``).
    lr: float | None = num(None, 0, lo_open=True)
    #: Kept channels per coupling group: a multiple of this, and at least this many.
    round_to: int = num(DEFAULT_ROUND_TO, 1)
    #: At most this fraction of a coupling group is pruned.
    max_layer_ratio: float = num(DEFAULT_MAX_LAYER_RATIO, 0, 1, lo_open=True)
    #: Input size (H, W) of the cost report.
    cost_size: tuple[int, int] = (512, 1024)
    #: Batch sizes whose latency is measured (empty: no timing).
    cost_batches: tuple[int, ...] = (1,)
    cost_repeats: int = num(5, 1)
    #: Seed of the random criterion.
    seed: int = num(0, 0, MAX_SEED)
    #: Which units may be pruned: all, filters (BN channels) or heads (MiT attention heads).
    units: str = choice("all", UNIT_CHOICES)
    #: DSP folder for sparse training and fine-tuning: ``auto`` (the shipped demo DSP when present),
    #: a path, or None (plain CE).
    dsp: str | None = "auto"


@dataclass(frozen=True)
class Config:
    """A complete run configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dsp: DSPConfig = field(default_factory=DSPConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)

    @property
    def crop(self) -> tuple[int, int]:
        """The effective training crop (H, W)."""
        return self.train.crop if self.train.crop is not None else self.data.size


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
        if not math.isfinite(f) or f != int(f):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
        if not math.isfinite(f):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return f
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
        return yaml.safe_load(p.read_text(encoding="utf-8")) or {}, str(p)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not a text file (a YAML config was expected)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror or exc}") from None


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
# checks shared by every config tree: declared ranges and choices
# --------------------------------------------------------------------------------------------------
def _check_field(key: str, value: Any, meta: Any) -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{key} {value!r} is unknown; valid: {', '.join(meta['choices'])}")
    if "range" not in meta:
        return
    lo, hi, lo_open, hi_open = meta["range"]
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if bad_lo or bad_hi:
        if lo == 0 and hi is None:
            want = "positive" if lo_open else ">= 0"
        elif lo == 1 and hi is None and not lo_open:
            want = "positive (>= 1)"
        elif hi is None:
            want = f"{'>' if lo_open else 'at least'} {lo:g}"
        else:
            want = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ConfigError(f"{key} must be {want}, got {value}")


def check_tree(cfg: Any) -> Any:
    """Check every field of a config tree against the range / choices it declares (:func:`num`,
    :func:`choice`); ConfigError naming the first offending ``section.key``. Returns ``cfg``."""
    for section in tree_sections(type(cfg)):
        obj = getattr(cfg, section)
        for f in fields(obj):
            _check_field(f"{section}.{f.name}", getattr(obj, f.name), f.metadata)
    return cfg


def load_tree(root: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
              validate: Callable[[T], T] | None = None) -> T:
    """THE config loader of npdg (run configs and DSP configs alike): read YAML (None → defaults),
    build the typed tree, apply ``section.key=value`` overrides, then check declared ranges and run
    ``validate`` (the tree's own cross-field checks)."""
    data, where = read_yaml_mapping(path)
    cfg = override_tree(tree_from_dict(root, data, where), overrides)
    cfg = check_tree(cfg)
    return validate(cfg) if validate is not None else cfg


# --------------------------------------------------------------------------------------------------
# the run config
# --------------------------------------------------------------------------------------------------
def validate(cfg: Config) -> Config:
    """Types and ranges of a run :class:`Config` plus its cross-field checks; ConfigError names the key.

    Mode and criterion names are not checked here: only ``npdg.recipes`` knows them
    (``npdg.recipes.modes.check_config``).
    """
    t, d = cfg.train, cfg.data
    if t.batch_size < 2:
        raise ConfigError(
            f"train.batch_size must be at least 2 (got {t.batch_size}): BatchNorm and DeepLabV3+'s ASPP "
            "image-pooling branch cannot train on a single image per step"
        )
    check_tree(cfg)
    lo, hi = t.scale_range
    if not (0 < lo <= hi) or not math.isfinite(hi):
        raise ConfigError(f"train.scale_range must satisfy 0 < min <= max, got {list(t.scale_range)}")
    if d.length is not None and d.length < t.batch_size:
        raise ConfigError(f"data.length ({d.length}) must be at least train.batch_size ({t.batch_size})")
    if not d.source:
        raise ConfigError("data.source must name a synthetic domain or NAME:ROOT")
    p = cfg.prune
    if any(b < 1 or b > MAX_BATCH for b in p.cost_batches):
        raise ConfigError(f"prune.cost_batches must be in [1, {MAX_BATCH}], got {list(p.cost_batches)}")
    check_pixels("prune.cost_size", p.cost_size)
    check_pixels("data.size", d.size)
    check_pixels("train.crop", cfg.crop)
    if hi > 8:
        raise ConfigError(f"train.scale_range max must be at most 8 (images are rescaled by it), got {hi}")
    return cfg


def check_pixels(name: str, size: tuple[int, int]) -> tuple[int, int]:
    """Refuse an input size above :data:`MAX_PIXELS` (4096×4096) with a message saying what to lower."""
    h, w = size
    if h * w > MAX_PIXELS:
        raise ConfigError(f"{name} {h}x{w} is too large: at most {MAX_PIXELS} pixels (e.g. 4096x4096); lower it")
    return size


def config_from_dict(data: dict[str, Any] | None, where: str = "config") -> Config:
    """Build and validate a :class:`Config` from a nested dict (missing keys take defaults)."""
    return validate(tree_from_dict(Config, data, where))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a run config YAML (None → all defaults), apply ``key=value`` overrides, validate."""
    return load_tree(Config, path, overrides, validate)


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Return ``cfg`` with dotted ``section.field=value`` overrides applied and validated."""
    return validate(override_tree(cfg, overrides))


def load_run_config(run_dir: str | Path) -> Config | None:
    """The validated config of a run folder (``RUN/config.yaml``), or None when it has none.

    Reads configs written by every npdg version: sections and keys added later take their defaults.
    """
    path = Path(run_dir) / "config.yaml"
    return load_config(path) if path.is_file() else None


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (tuples → lists) suitable for YAML/JSON and ``torch.load(weights_only=True)``."""
    return tree_to_dict(cfg)


def dump_config(cfg: Config, path: str | Path | None = None) -> str:
    """Serialize the fully resolved configuration as YAML; also write it to ``path`` (atomically) if given."""
    text = tree_to_yaml(cfg)
    if path is not None:
        atomic_write_text(text, path)
    return text


def valid_keys() -> list[str]:
    """Every ``section.field`` key accepted by ``--set``."""
    return [f"{s}.{f.name}" for s, cls in tree_sections(Config).items() for f in fields(cls)]
