"""Pruning: units and coupling groups, selection, soft masks, physical surgery, the prune pipeline.

Submodules: :mod:`.units` (what can be pruned), :mod:`.selection` (which units, as a
:class:`~npdg.pruning.selection.PruningPlan`), :mod:`.soft` (reversible masks), :mod:`.physical`
(torch-pruning surgery and plan replay), :mod:`.sparsity` (sparse training), :mod:`.pipeline`
(sparse-train → select → prune → fine-tune). Import from the submodules; this package imports
nothing heavy at import time.
"""
