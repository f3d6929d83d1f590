"""THE table of training modes and pruning criteria (docs/method.md §0).

Every other module of npdg is written in terms of what a mode *does* — stylize batches with DSP,
add a sparsity penalty, use photometric augmentation — and only this module maps the names a user
types (``train.mode``, ``prune.criterion``, ``--criterion``) to those behaviours. Adding a mode or a
criterion is one row here; the CLI choices, the config check and the dashboard read the table.
"""

from __future__ import annotations

from dataclasses import dataclass

from npdg.config import Config
from npdg.data.specs import parse_spec
from npdg.dsp.model import DSP
from npdg.errors import ConfigError
from npdg.evaluate import get_protocol

#: How a mode stylizes training batches with DSP: never, always with ε ascent ("ascend"), always
#: with fresh random ε ("random"), or following ``dsp.ascent_steps`` when ``dsp.path`` is set
#: ("config": the sparse-training modes; required unless the mode allows clean batches).
STYLIZE = (None, "ascend", "random", "config")
#: What a mode adds to the loss: nothing, the γ penalty with w̃ ≡ 1 ("uniform", Network Slimming),
#: or the penalty weighted by the style sensitivity ("sensitivity", NPDG).
SPARSITY = (None, "uniform", "sensitivity")
#: How a criterion scores units for selection (npdg.pruning.selection): |γ|, filter L1 norm, seeded
#: random numbers, or externally given per-unit scores (a proxy criterion).
SCORES = ("gamma", "l1norm", "random", "scores")


@dataclass(frozen=True)
class TrainingMode:
    """One training mode: what it plugs into the training loop."""

    name: str
    summary: str
    stylize: str | None = None
    sparsity: str | None = None
    #: λ forced by the mode (npdg_unary: 1, npdg_binary: 0); None → ``sparsity.lam``.
    lam: float | None = None
    photometric: bool = False
    #: Whether the mode may run without a DSP (clean batches only).
    dsp_optional: bool = False

    @property
    def needs_dsp(self) -> bool:
        return (self.stylize is not None or self.sparsity == "sensitivity") and not self.dsp_optional

    def lam_for(self, configured: float) -> float:
        """The λ this mode combines unary and binary sensitivity with."""
        return float(configured) if self.lam is None else self.lam


@dataclass(frozen=True)
class Criterion:
    """One pruning criterion: how units are scored and which sparse training prepares the model."""

    name: str
    summary: str
    score: str
    #: Training mode used by ``prune --sparse-iters N`` before selection (None: no sparse training).
    sparse_mode: str | None = None
    #: True for criteria that are not a method of the paper (shown as a labelled proxy).
    proxy: bool = False


MODES: dict[str, TrainingMode] = {m.name: m for m in (
    TrainingMode("erm", "plain cross-entropy on the source domain (the baseline)"),
    TrainingMode("photometric", "cross-entropy with colour jitter, blur and noise", photometric=True),
    TrainingMode("dsp", "batches [clean, DSP-stylized], ε pushed by gradient ascent", stylize="ascend"),
    TrainingMode("dsp_random", "batches [clean, DSP-stylized], fresh ε ~ N(0, I), no ascent", stylize="random"),
    TrainingMode("slimming", "Network Slimming: CE + λ_s Σ|γ| (DSP batches when dsp.path is set)",
                 stylize="config", sparsity="uniform", dsp_optional=True),
    TrainingMode("npdg", "NPDG: CE + λ_s Σ w̃|γ| on DSP batches, w from unary and binary sensitivity",
                 stylize="config", sparsity="sensitivity"),
    TrainingMode("npdg_unary", "NPDG ablation: w from unary sensitivity only (λ = 1)",
                 stylize="config", sparsity="sensitivity", lam=1.0),
    TrainingMode("npdg_binary", "NPDG ablation: w from binary sensitivity only (λ = 0)",
                 stylize="config", sparsity="sensitivity", lam=0.0),
)}

CRITERIA: dict[str, Criterion] = {c.name: c for c in (
    Criterion("npdg", "|γ| after sensitivity-weighted sparse training", "gamma", "npdg"),
    Criterion("npdg_unary", "|γ| after unary-weighted sparse training", "gamma", "npdg_unary"),
    Criterion("npdg_binary", "|γ| after binary-weighted sparse training", "gamma", "npdg_binary"),
    Criterion("slimming", "|γ| after plain L1 sparse training (Network Slimming)", "gamma", "slimming"),
    Criterion("l1norm", "L1 norm of the filters that produce each channel", "l1norm"),
    Criterion("random", "seeded random scores", "random"),
    Criterion("sensitivity", "rank by style sensitivity itself (a proxy, not NPDG)", "scores", proxy=True),
)}


def mode(name: str) -> TrainingMode:
    """The training mode ``name``; ConfigError listing the valid ones (and pointing at ``prune`` for criteria)."""
    if name in MODES:
        return MODES[name]
    hint = ""
    if name in CRITERIA:
        hint = f"; {name!r} is a pruning criterion: use `python -m npdg prune --criterion {name}`"
    raise ConfigError(f"train.mode {name!r} is unknown; valid modes: {', '.join(MODES)}{hint}")


def criterion(name: str) -> Criterion:
    """The pruning criterion ``name``; ConfigError listing the valid ones."""
    if name not in CRITERIA:
        raise ConfigError(f"unknown pruning criterion {name!r}; valid: {', '.join(CRITERIA)}")
    return CRITERIA[name]


def cli_criteria() -> list[str]:
    """Criteria ``python -m npdg prune`` accepts (proxies need per-unit scores: dashboard and API only)."""
    return [c.name for c in CRITERIA.values() if c.score != "scores"]


def check_config(cfg: Config) -> Config:
    """The checks only the recipes can make: known mode and criterion, a DSP where the mode needs
    one (and a loadable one wherever ``dsp.path`` is set), well-formed dataset specs, a known
    evaluation protocol (also when evaluation is off, so nothing invalid is stored)."""
    m = mode(cfg.train.mode)
    criterion(cfg.prune.criterion)
    get_protocol(cfg.eval.protocol)
    for spec in (cfg.data.source, *cfg.data.targets):  # also targets only read at the final evaluation
        parse_spec(spec)
    if cfg.dsp.path:  # a DSP named but broken fails now, before any folder exists (also when unused)
        DSP.load(cfg.dsp.path)
    if m.needs_dsp and not cfg.dsp.path:
        raise ConfigError(
            f"train.mode {m.name} needs a trained DSP: set dsp.path (e.g. --set dsp.path=assets/dsp_tiny), "
            "made with `python -m npdg dsp train`"
        )
    return cfg


__all__ = ["CRITERIA", "MODES", "Criterion", "TrainingMode", "check_config", "cli_criteria", "criterion", "mode"]
