"""Pruning (docs/method.md §4–§5): selection, soft masks, physical surgery, the sparsity objective.

Submodules: :mod:`.selection` (which units, as a :class:`~npdg.pruning.selection.PruningPlan`),
:mod:`.soft` (reversible masks), :mod:`.physical` (torch-pruning surgery, plan replay and
``load_model`` for pruned runs), :mod:`.sparsity` (the γ penalty and sensitivity refresh),
:mod:`.cost` (FLOPs and parameters of a plan). What can be pruned lives below, in
:mod:`npdg.models.units`; the prune pipeline is a recipe, :mod:`npdg.recipes.prune`. Import from the
submodules; this package imports nothing heavy at import time.
"""
