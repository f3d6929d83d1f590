"""npdg.labels against the official cityscapesscripts table."""

import numpy as np
import pytest
from cityscapesscripts.helpers import labels as official

from npdg import labels as L


def test_table_matches_official():
    ours = {(lab.name, lab.id, lab.train_id, lab.color) for lab in L.LABELS}
    theirs = {(lab.name, lab.id, lab.trainId, tuple(lab.color)) for lab in official.labels}
    assert ours == theirs


def test_train_classes_and_palette():
    assert L.NUM_CLASSES == 19 and len(L.CLASS_NAMES) == 19
    assert L.CLASS_NAMES[0] == "road" and L.CLASS_NAMES[13] == "car" and L.CLASS_NAMES[18] == "bicycle"
    for lab in official.labels:
        if 0 <= lab.trainId < 19:
            assert tuple(L.PALETTE[lab.trainId]) == tuple(lab.color)
    assert tuple(L.PALETTE[255]) == (0, 0, 0)


def test_id_to_train_id_matches_official_for_every_id():
    for lab in official.labels:
        if lab.id < 0:
            continue
        expected = lab.trainId if 0 <= lab.trainId < 19 else 255
        assert L.ID_TO_TRAINID[lab.id] == expected, lab.name
    assert (L.ID_TO_TRAINID[34:] == 255).all()


def test_ids_round_trip_and_mapping_arrays():
    ids = np.arange(0, 40, dtype=np.uint8).reshape(5, 8)
    t = L.ids_to_train_ids(ids)
    assert t.dtype == np.uint8 and t[0, 7] == 0 and t[3, 2] == 13 and t[0, 0] == 255
    back = L.train_ids_to_ids(t)
    valid = t != 255
    assert (L.ids_to_train_ids(back)[valid] == t[valid]).all()
    assert (back[~valid] == 0).all()
    # int inputs with negative / large values map to ignore, never wrap around
    assert (L.ids_to_train_ids(np.array([-1, 300, 26])) == [255, 255, 13]).all()


def test_colorize_decolorize_round_trip():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 19, size=(6, 7)).astype(np.uint8)
    t[0, 0] = 255
    rgb = L.colorize(t)
    assert rgb.shape == (6, 7, 3) and tuple(rgb[0, 0]) == (0, 0, 0)
    assert (L.decolorize(rgb) == t).all()


def test_decolorize_refuses_foreign_colours():
    rgb = L.colorize(np.zeros((2, 2), np.uint8))
    rgb[1, 1] = (1, 2, 3)
    with pytest.raises(ValueError, match="no Cityscapes train class"):
        L.decolorize(rgb)
    assert L.decolorize(rgb, strict=False)[1, 1] == 255


def test_class_id():
    assert L.class_id("car") == 13
    with pytest.raises(KeyError, match="valid"):
        L.class_id("spaceship")
