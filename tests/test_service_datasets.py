"""Real datasets on the dashboard (npdg.service.datasets): configured from the environment or the
command line, opened once per split, sampled at the working size; bad specs and roots explained."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_real import write_cityscapes

from npdg.errors import DataError
from npdg.service import datasets


def test_a_cityscapes_tree_is_browsed_at_the_working_size(tmp_path, monkeypatch):
    tree = write_cityscapes(tmp_path / "cs", size=(64, 128))
    spec = f"cityscapes:{tmp_path / 'cs'}"
    monkeypatch.setenv(datasets.ENV, f" {spec} , ,{spec}")
    assert datasets.configured() == [spec]
    datasets.add_configured(["gta5:/nowhere"])
    assert datasets.configured() == [spec, "gta5:/nowhere"]
    info = datasets.dataset_info(spec)
    assert info.name == "cityscapes" and info.splits == {"train": 3, "val": 2}
    image, label, stem = datasets.sample(spec, "val", 1)
    assert image.shape == (64, 128, 3) and label.shape == (64, 128) and not image.flags.writeable
    val = [s for s in tree.samples if s.split == "val"]
    assert stem.endswith("_leftImg8bit") and any(str(s.image_path).endswith(stem + ".png") for s in val)
    assert set(np.unique(label)) <= set(range(19)) | {255}
    with pytest.raises(DataError, match="out of range"):
        datasets.sample(spec, "val", 5)
    with pytest.raises(DataError, match="no usable 'test' split"):
        datasets.sample(spec, "test", 0)


@pytest.mark.parametrize("spec,msg", [("fog", "synthetic domain"), ("cityscapes:/no/such/root", "no usable split"),
                                      ("imagenet:/x", "imagenet"), ("", "empty")])
def test_bad_specs_are_explained(spec, msg):
    with pytest.raises(DataError, match=msg):
        datasets.dataset_info(spec)
