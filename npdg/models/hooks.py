"""Running a model under forward hooks without leaving a trace: the pattern of every probe.

The sensitivity probe (docs/method.md §3) and the activation atlas both register hooks, run the
model in eval mode without gradients over a few batches, and must remove every hook and restore the
model's mode afterwards — also when a forward fails — because the model may be shared (the
dashboard caches one per process).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


@contextmanager
def hooked(model: nn.Module, handles: list[RemovableHandle]) -> Iterator[nn.Module]:
    """Eval mode and ``no_grad`` for the block; on exit every handle is removed and the mode restored.

    Register hooks into ``handles`` before or inside the block; the list is emptied on exit.
    """
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            yield model
    finally:
        for h in handles:
            h.remove()
        handles.clear()
        model.train(was_training)


class LayerReached(Exception):
    """Raised by a hook (:func:`stop_after`) to end a forward early: what the probe needs has been
    seen, and the layers after it would only cost time (:func:`run_batches` catches it)."""


def stop_after(hook: Callable) -> Callable:
    """``hook``, then :class:`LayerReached`: the forward ends at this module. For a tap on one
    layer (a unit's activation map, the activation atlas) the rest of the network is not run —
    for a shallow layer of DeepLabV3+ most of the forward."""
    def wrapped(*args):
        hook(*args)
        raise LayerReached

    return wrapped


def run_batches(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device, total: int,
                progress: Callable[[int, int], None] | None = None) -> None:
    """Forward each batch (moved to ``device``); ``progress(done, total)`` after each. A forward a
    hook ended with :class:`LayerReached` counts as done."""
    for i, batch in enumerate(batches):
        with suppress(LayerReached):
            model(batch.to(device))
        if progress is not None:
            progress(i + 1, total)
