"""DSP — Differentiable Style Perturbation (docs/method.md §1).

* :mod:`npdg.dsp.adain` — style statistics, AdaIN, the frozen style encoders (``vgg19``, ``tiny``)
  and the mirrored decoder;
* :mod:`npdg.dsp.dvae` — the D-VAE over style vectors, its losses and optimisation;
* :mod:`npdg.dsp.model` — :class:`DSP`, the deployable object (stylize, ascend, traverse,
  save/load) and :class:`DSPBatchTransform`, the training-loop hook;
* :mod:`npdg.dsp.train` — ``python -m npdg dsp train``;
* :mod:`npdg.dsp.cli` — the ``dsp`` sub-commands.
"""

from npdg.dsp.adain import adain, adain_blend, build_decoder, build_encoder, style_stats
from npdg.dsp.dvae import StyleVAE
from npdg.dsp.model import DSP, DSPBatchTransform, DSPSpec

__all__ = [
    "DSP",
    "DSPBatchTransform",
    "DSPSpec",
    "StyleVAE",
    "adain",
    "adain_blend",
    "build_decoder",
    "build_encoder",
    "style_stats",
]
