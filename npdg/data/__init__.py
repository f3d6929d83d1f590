"""Datasets: the embedded synthetic multi-domain scenes and loaders for real benchmarks.

Every dataset in npdg yields the same sample, a flat dict that ``default_collate`` batches:

=========  ==============================================================
``image``  float32 tensor ``[3, H, W]`` in [0, 1] (RGB)
``label``  int64 tensor ``[H, W]``: Cityscapes train ids 0–18, 255 = ignore
``domain`` str: synthetic domain name, or dataset name (``gta5``, ...)
``split``  str: ``train`` / ``val`` / ``test``
``index``  int: position in the dataset (stable: same index → same sample)
``name``   str: file stem (real data) or ``<domain>_<split>_<index:06d>`` (synthetic)
=========  ==============================================================
"""

REAL_DATASETS: tuple[str, ...] = ("gta5", "synthia", "cityscapes", "bdd100k", "mapillary")
SAMPLE_KEYS: tuple[str, ...] = ("image", "label", "domain", "split", "index", "name")


def resolve_index(i: int, length: int, what: str) -> int:
    """Python-style index into a dataset of ``length`` items (negatives count from the end);
    ``IndexError`` naming ``what`` when out of range (ends iteration for ``for x in ds``)."""
    i = int(i)
    if i < 0:
        i += length
    if not 0 <= i < length:
        raise IndexError(f"index {i} out of range for {what}")
    return i
