"""Recipes: the methods of the paper assembled from the engine (docs/method.md §0).

:mod:`.modes` is THE table of training modes and pruning criteria — the only module that knows
their names. :mod:`.train` plugs a mode into the training loop, :mod:`.dsp` picks the stylization
of a mode's batches, :mod:`.sparse` sparse-trains a finished run, :mod:`.prune` is the whole prune
pipeline.
"""

from npdg.recipes.modes import CRITERIA, MODES, check_config, criterion, mode
from npdg.recipes.prune import PruneResult, prune_run
from npdg.recipes.sparse import sparse_train
from npdg.recipes.train import plugin_for, train

__all__ = ["CRITERIA", "MODES", "PruneResult", "check_config", "criterion", "mode", "plugin_for", "prune_run",
           "sparse_train", "train"]
