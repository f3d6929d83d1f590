"""The Guide's content: a six-step tour of the method, each step a deep link into the real page with
preset settings (the query parameters those pages bind), and a glossary. Kept apart from
``pages/guide.py`` so that tests can open every link (tests/test_app_guide_page.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Step:
    """One screen of the tour: a title, what to look at, the page it opens and with which settings."""

    name: str  # the step's short name: what ?tour= holds
    title: str
    text: str
    page: str  # url_path of the page (app/nav.py)
    link_label: str
    query: dict[str, str | list[str]] = field(default_factory=dict)
    try_this: str = ""


STEPS: tuple[Step, ...] = (
    Step("shift", "1 · The problem: domain shift",
         "A segmentation model learns from one domain — here the synthetic `source` look — and is used on others. "
         "The same street rendered at **night**, in **fog** or as a **toon** keeps every label but changes colour, "
         "contrast and texture: the *style*. A model trained on the source alone loses most of its accuracy on those "
         "looks. Domain generalization asks for a model that holds up on domains it has **never seen**.",
         "data", "Open the same scene in four domains",
         {"scene": "3", "domains": ["source", "night", "fog", "toon"], "view": "Overlay"},
         "Move the scene number: the labels stay identical across the row, only the look changes."),
    Step("DSP", "2 · DSP: styles you can make on demand",
         "NPDG needs styles to probe the network with, without seeing the target domains. **DSP** (differentiable "
         "style perturbation) encodes a scene's per-channel feature statistics — the mean and standard deviation that "
         "AdaIN swaps — with a small VAE (the **D-VAE**), samples new statistics from its latent, and can push the "
         "latent by gradient *ascent* on the segmentation loss to find the styles the model finds hardest.",
         "styles", "Sample 8 DSP styles of one scene with the model's prediction",
         {"k": "8", "scene": "2", "pred": "true"},
         "Look at the cross-entropy under each style: the ascended ones (Ascend tab) are the hard ones."),
    Step("sensitivity", "3 · Which units react to style: unary and binary sensitivity",
         "Run the same content through many styles and watch every **unit** — a BatchNorm filter, or an attention "
         "head. **Unary** sensitivity: how much a unit's activation varies across styles of the same content. "
         "**Binary** sensitivity: how strongly its style reaction is correlated with other units'. λ mixes the two into "
         "one weight **w** per unit (docs/method.md §3).",
         "sensitivity", "Open the unary scores of every layer",
         {"score": "unary", "lam": "0.5"},
         "Slide λ between 0 (binary only) and 1 (unary only); click a cell to open a unit's drill-down."),
    Step("prune", "4 · Prune the sensitive units",
         "Each unit has a scaling factor γ (the BN weight, or a head gate). NPDG trains with an L1 penalty on γ "
         "**weighted by the unit's sensitivity w**, so style-sensitive units are pushed towards zero and then removed "
         "physically — fewer channels, fewer FLOPs. Network Slimming does the same with an unweighted L1.",
         "prune", "Prune the sparse-trained NPDG model at 30 %",
         {"m": "zoo:r18-npdg-sparse", "crit": "npdg", "rate": "0.3"},
         "Move the rate slider and watch GFLOPs fall and the held-out mIoU (dashed) against the source (solid)."),
    Step("compare", "5 · Compare: does it generalize better?",
         "The two birds: a pruned model should be **cheaper** and, if the removed units were the style-sensitive "
         "ones, **better on unseen domains**. Put the source-only model next to the NPDG-pruned one on the same "
         "street in every look, with their errors coloured.",
         "compare", "Compare the source-only and the NPDG model on cars",
         {"a": "zoo:r18-erm", "b": "zoo:r18-npdg", "doms": ["source", "night", "fog", "rain"], "cls": "car"},
         "Read the held-out mean below the table — and the README's honest verdict on the embedded benchmark."),
    Step("explain", "6 · Explain: do the errors run through sensitive units?",
         "Pick the cars a model misses in fog (its false negatives) and ask captum which pixels drive the car logit "
         "there, for both models. Below, the same decision is broken down onto one layer's units and plotted against "
         "their style sensitivity: if errors on held-out looks run through high-w units, removing them is the right "
         "medicine.",
         "explain", "Explain the missed cars in fog",
         {"a": "zoo:r18-erm", "b": "zoo:r18-npdg", "dom": "fog", "target": "false negatives", "class": "car",
          "method": "gradcam"},
         "Switch the method to Integrated Gradients (behind a button) or draw a box on the image."),
)

#: term → explanation (the Guide's glossary).
GLOSSARY: dict[str, str] = {
    "domain generalization": "Training on one (or a few) source domains so that the model works on target domains "
                             "it never sees — unlike domain adaptation, no target images are used at all.",
    "domain shift": "The change of input distribution between source and target: here the style (colour, contrast, "
                    "texture, weather, light) while the content and labels stay the same.",
    "AdaIN": "Adaptive instance normalization: normalize a feature map per channel and re-scale it with another "
             "image's channel means and standard deviations — the standard way to swap an image's style statistics.",
    "DSP / D-VAE": "Differentiable style perturbation: a VAE over AdaIN statistics (the D-VAE) whose latent is sampled "
                   "for random styles or pushed by gradient ascent on the segmentation loss for hard ones.",
    "unit": "What NPDG scores and prunes: one output channel of a BatchNorm (a filter) or one attention head.",
    "unary sensitivity": "How much a unit's activation varies across styles of the same content.",
    "binary sensitivity": "How strongly a unit's style reaction correlates with other units' (its partners on the "
                          "Unit page).",
    "scaling factor γ": "The per-unit multiplier after normalization (BN weight, head gate); a unit with γ ≈ 0 "
                        "contributes nothing and can be removed.",
    "network slimming": "Liu et al. 2017: an L1 penalty on BN γ during training, then removal of the channels with "
                        "the smallest |γ|. NPDG weights that L1 by style sensitivity.",
    "coupling group": "Channels the computation graph ties together (a residual stream, a depthwise conv and its BN): "
                      "they can only be removed together (torch-pruning's dependency graph finds them).",
    "mIoU / held-out mean": "Mean intersection over union over the classes; the held-out mean averages it over the "
                            "style domains never used for training or choosing settings (not the source, not suburb).",
}
