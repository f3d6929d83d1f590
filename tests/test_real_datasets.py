"""npdg.data.real: each dataset's exact on-disk format decodes to the right train ids, pixel by pixel;
bad downloads fail with messages that name the file."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from fixtures_real import (
    CITYSCAPES_IDS,
    WRITERS,
    id_map,
    write_bdd,
    write_cityscapes,
    write_gta5,
    write_mapillary,
    write_synthia,
)
from PIL import Image

from npdg.data import SAMPLE_KEYS
from npdg.data.io import write_png
from npdg.data.real import DATASET_CLASSES, EXPECTED_COUNTS, RealSegDataset, open_real
from npdg.data.transforms import RandomCrop, Resize
from npdg.errors import ConfigError, DataError

# Expected tables written out from docs/architecture.md §4 (independent of the loader's own tables).
CITYSCAPES_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
SYNTHIA_TRAIN = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12,
                 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}
MAPILLARY_TRAIN = {13: 0, 24: 0, 41: 0, 2: 1, 15: 1, 17: 2, 6: 3, 3: 4, 45: 5, 47: 5, 48: 6, 50: 7, 30: 8,
                   29: 9, 27: 10, 19: 11, 20: 12, 21: 12, 22: 12, 55: 13, 61: 14, 54: 15, 58: 16, 57: 17,
                   52: 18}
BDD_TRAIN = {t: t for t in range(19)}
EXPECTED_TABLES = {"gta5": CITYSCAPES_TRAIN, "cityscapes": CITYSCAPES_TRAIN, "synthia": SYNTHIA_TRAIN,
                   "mapillary": MAPILLARY_TRAIN, "bdd100k": BDD_TRAIN}
LOSSLESS = {"gta5", "synthia", "cityscapes"}  # PNG images; BDD and Mapillary use JPEG


def _expected(raw: np.ndarray, table: dict[int, int]) -> np.ndarray:
    out = np.full(raw.shape, 255, np.int64)
    for src, dst in table.items():
        out[raw == src] = dst
    return out


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_id_decodes_to_its_train_id(tmp_path, name):
    tree = WRITERS[name](tmp_path / name)
    ds = open_real(name, tmp_path / name, "train")
    expected = tree.split("train")
    assert len(ds) == len(expected) >= 2
    covered = set()
    for i, fx in enumerate(expected):
        s = ds[i]
        assert tuple(s) == SAMPLE_KEYS
        assert s["image"].dtype == torch.float32 and s["label"].dtype == torch.int64
        assert s["domain"] == name and s["split"] == "train" and s["index"] == i
        assert s["name"] == fx.image_path.stem
        np.testing.assert_array_equal(s["label"].numpy(), _expected(fx.raw, EXPECTED_TABLES[name]))
        covered |= set(np.unique(fx.raw).tolist())
        img = (s["image"].permute(1, 2, 0).numpy() * 255).round().astype(int)
        if name in LOSSLESS:
            np.testing.assert_array_equal(img, fx.image)
        else:
            assert np.abs(img - fx.image).mean() < 6  # JPEG: nearly equal on a smooth image
    assert set(EXPECTED_TABLES[name]) <= covered  # the fixture really contained every mapped id


def test_val_splits_and_split_folders(tmp_path):
    write_cityscapes(tmp_path / "cs", {"train": {"aachen": 2, "bochum": 1}, "val": {"frankfurt": 2}})
    write_mapillary(tmp_path / "map", {"train": 3, "val": 2})
    ds = open_real("cityscapes", tmp_path / "cs", "val")
    assert [s.name for s, _ in ds.pairs] == [f"frankfurt_{k:06d}_000019_leftImg8bit.png" for k in range(2)]
    train = open_real("cityscapes", tmp_path / "cs", "train")
    assert [p.parent.name for p, _ in train.pairs] == ["aachen", "aachen", "bochum"]  # sorted
    assert all(lab.name.endswith("_gtFine_labelIds.png") for _, lab in train.pairs)
    assert len(open_real("mapillary", tmp_path / "map", "train")) == 3
    assert all("validation" in str(p) for p, _ in open_real("mapillary", tmp_path / "map", "val").pairs)


@pytest.mark.parametrize("layout,expected", [("10k", "bdd100k-10k"), ("seg", "bdd100k-seg")])
def test_bdd_detects_both_layouts(tmp_path, layout, expected):
    tree = write_bdd(tmp_path, layout=layout, counts={"train": 2, "val": 3})
    ds = open_real("bdd100k", tmp_path, "val")
    assert ds.scan.layout == expected and len(ds) == 3
    for i, fx in enumerate(tree.split("val")):
        np.testing.assert_array_equal(ds[i]["label"].numpy(), fx.raw.astype(np.int64))


def test_mapillary_v2_download_labels_folder(tmp_path):
    tree = write_mapillary(tmp_path, {"train": 2})
    (tmp_path / "training" / "labels").rename(tmp_path / "training" / "v1.2_tmp")
    (tmp_path / "training" / "v1.2").mkdir()
    (tmp_path / "training" / "v1.2_tmp").rename(tmp_path / "training" / "v1.2" / "labels")
    ds = open_real("mapillary", tmp_path, "train")
    assert ds.scan.layout == "mapillary-v2.0"
    np.testing.assert_array_equal(ds[1]["label"].numpy(), _expected(tree.split("train")[1].raw, MAPILLARY_TRAIN))


def test_one_pool_datasets_need_a_split_file_for_val(tmp_path):
    write_gta5(tmp_path, n=4)
    with pytest.raises(ConfigError, match="split file"):
        open_real("gta5", tmp_path, "val")
    (tmp_path / "val.txt").write_text("# GTA5 val\n00002\nimages/00004.png\n\n")
    ds = open_real("gta5", tmp_path, "val", split_file=tmp_path / "val.txt")
    assert [p.name for p, _ in ds.pairs] == ["00002.png", "00004.png"]
    assert ds[1]["split"] == "val" and ds[1]["name"] == "00004"
    (tmp_path / "bad.txt").write_text("00002\n09999\n")
    with pytest.raises(DataError, match="09999"):
        open_real("gta5", tmp_path, "train", split_file=tmp_path / "bad.txt")
    with pytest.raises(ConfigError, match="nope.txt"):
        open_real("gta5", tmp_path, "train", split_file=tmp_path / "nope.txt")


def test_cityscapes_split_file_by_key(tmp_path):
    write_cityscapes(tmp_path)
    (tmp_path / "s.txt").write_text("bochum/bochum_000000_000019\naachen_000001_000019_leftImg8bit\n")
    ds = open_real("cityscapes", tmp_path, "train", split_file=tmp_path / "s.txt")
    assert [p.stem for p, _ in ds.pairs] == ["aachen_000001_000019_leftImg8bit", "bochum_000000_000019_leftImg8bit"]


def test_missing_empty_and_wrong_roots(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_real("cityscapes", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="expected .*leftImg8bit.*found an empty folder"):
        open_real("cityscapes", tmp_path / "empty")
    write_gta5(tmp_path / "gta", n=1)
    with pytest.raises(DataError, match=r"does not look like cityscapes.*found images/, labels/"):
        open_real("cityscapes", tmp_path / "gta")
    (tmp_path / "e2" / "images").mkdir(parents=True)
    (tmp_path / "e2" / "labels").mkdir()
    with pytest.raises(DataError, match="no \\*.png images"):
        open_real("gta5", tmp_path / "e2")
    write_cityscapes(tmp_path / "cs", {"train": {"aachen": 1}})
    with pytest.raises(DataError, match="image folder .*val not found"):
        open_real("cityscapes", tmp_path / "cs", "val")


def test_bad_arguments(tmp_path):
    write_gta5(tmp_path, n=1)
    with pytest.raises(ConfigError, match="unknown dataset 'kitti'.*cityscapes"):
        open_real("kitti", tmp_path)
    with pytest.raises(ConfigError, match="unknown split 'test'"):
        open_real("gta5", tmp_path, "test")
    with pytest.raises(ConfigError, match="size_mismatch"):
        open_real("gta5", tmp_path, size_mismatch="crop")


def test_orphan_image_is_named(tmp_path):
    write_gta5(tmp_path, n=3)
    (tmp_path / "labels" / "00002.png").unlink()
    with pytest.raises(DataError, match="1 image\\(s\\) without a label.*00002.png"):
        open_real("gta5", tmp_path)


@pytest.mark.parametrize("name,bad_id", [("cityscapes", 34), ("gta5", 200), ("mapillary", 66),
                                         ("bdd100k", 19), ("synthia", 23)])
def test_out_of_range_ids_name_file_and_values(tmp_path, name, bad_id):
    tree = WRITERS[name](tmp_path)
    fx = tree.split("train")[-1]
    raw = fx.raw.copy()
    raw[0, :2] = bad_id
    if name == "synthia":
        import cv2

        bgr = np.zeros((*raw.shape, 3), np.uint16)
        bgr[..., 2] = raw
        cv2.imwrite(str(fx.label_path), bgr)
    else:
        write_png(fx.label_path, raw.astype(np.uint8), palette=None if name in ("cityscapes", "bdd100k")
                  else np.zeros((256, 3), np.uint8))
    ds = open_real(name, tmp_path)
    ds[0]  # the other files are fine
    with pytest.raises(DataError, match=f"{fx.label_path.name}.*outside the valid range.*: {bad_id}$"):
        ds[len(ds) - 1]


def test_255_in_labelids_is_ignore(tmp_path):
    tree = write_cityscapes(tmp_path, {"train": {"aachen": 1}})
    assert 255 in tree.samples[0].raw
    lab = open_real("cityscapes", tmp_path)[0]["label"].numpy()
    assert (lab[tree.samples[0].raw == 255] == 255).all()


def test_colour_label_is_refused(tmp_path):
    tree = write_gta5(tmp_path, n=1)
    Image.open(tree.samples[0].label_path).convert("RGB").save(tree.samples[0].label_path)
    with pytest.raises(DataError, match="00001.png.*mode 'RGB'"):
        open_real("gta5", tmp_path)[0]


def test_image_formats_in_a_dataset(tmp_path):
    tree = write_gta5(tmp_path, n=3)
    img0, img1 = tree.samples[0].image, tree.samples[1].image
    Image.fromarray(np.dstack([img0, np.zeros(img0.shape[:2], np.uint8)]), "RGBA").save(tree.samples[0].image_path)
    Image.fromarray(img1[..., 0]).save(tree.samples[1].image_path)
    data = tree.samples[2].image_path.read_bytes()
    tree.samples[2].image_path.write_bytes(data[: len(data) // 2])
    ds = open_real("gta5", tmp_path)
    np.testing.assert_array_equal((ds[0]["image"] * 255).round().byte().permute(1, 2, 0).numpy(), img0)
    assert torch.equal(ds[1]["image"][0], ds[1]["image"][2])
    with pytest.raises(DataError, match="00003.png"):
        ds[2]


def test_size_mismatch_modes(tmp_path):
    tree = write_gta5(tmp_path, n=4, mismatch={1, 3})
    ds = open_real("gta5", tmp_path, size_mismatch="resize")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labels = [ds[i]["label"] for i in range(4)]
        ds[3]
    assert len([w for w in caught if "nearest neighbour" in str(w.message)]) == 1  # warned once
    assert "00002.png" in str(caught[0].message)
    assert all(lab.shape == (6, 8) for lab in labels)
    raw = tree.samples[1].raw  # 12x16 label resized to 6x8 by nearest neighbour = every 2nd pixel
    np.testing.assert_array_equal(labels[1].numpy(), _expected(raw[::2, ::2], CITYSCAPES_TRAIN))

    strict = open_real("gta5", tmp_path, size_mismatch="error")
    strict[0]
    with pytest.raises(DataError, match="00002.png is 12x16 but its image is 6x8"):
        strict[1]

    with pytest.warns(UserWarning, match="skipped 2 pair"):
        skip = open_real("gta5", tmp_path, size_mismatch="skip")
    assert [p.name for p, _ in skip.pairs] == ["00001.png", "00003.png"]
    assert [p.name for p, _ in skip.skipped] == ["00002.png", "00004.png"]


def test_transform_and_seed(tmp_path):
    write_cityscapes(tmp_path, {"train": {"aachen": 2}}, size=(16, 20))
    a = open_real("cityscapes", tmp_path, transform=RandomCrop((8, 8)), seed=3)
    b = open_real("cityscapes", tmp_path, transform=RandomCrop((8, 8)), seed=3)
    assert a[0]["image"].shape == (3, 8, 8)
    assert torch.equal(a[0]["image"], b[0]["image"]) and torch.equal(a[1]["label"], b[1]["label"])
    r = open_real("cityscapes", tmp_path, transform=Resize((32, 40)))[0]
    assert r["image"].shape == (3, 32, 40) and r["label"].shape == (32, 40)
    assert set(r["label"].unique().tolist()) <= set(CITYSCAPES_TRAIN.values()) | {255}


def test_dataloader_batches(tmp_path):
    write_synthia(tmp_path, n=3)
    batch = next(iter(torch.utils.data.DataLoader(open_real("synthia", tmp_path), batch_size=2)))
    assert batch["image"].shape == (2, 3, 6, 8) and batch["label"].shape == (2, 6, 8)
    assert batch["domain"] == ["synthia", "synthia"]


def test_registry_and_counts():
    assert set(DATASET_CLASSES) == {"gta5", "synthia", "cityscapes", "bdd100k", "mapillary"}
    assert all(issubclass(c, RealSegDataset) for c in DATASET_CLASSES.values())
    assert EXPECTED_COUNTS == {"gta5": {"train": 24966}, "synthia": {"train": 9400},
                               "cityscapes": {"train": 2975, "val": 500}, "bdd100k": {"train": 7000, "val": 1000},
                               "mapillary": {"train": 18000, "val": 2000}}
    assert len(CITYSCAPES_IDS) == 35 and id_map(CITYSCAPES_IDS).size >= 35
