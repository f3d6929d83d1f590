"""``python -m npdg data ...`` in-process: doctor exit codes, export round-trip, preview grid, domains."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from fixtures_real import write_bdd, write_cityscapes, write_gta5
from PIL import Image

from npdg.cli import main
from npdg.data.real import open_real
from npdg.labels import ID_TO_TRAINID, TRAINID_TO_ID


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_doctor_exit_codes(tmp_path, capsys):
    write_cityscapes(tmp_path / "cs")
    assert main(["data", "doctor", "--dataset", "cityscapes", "--root", str(tmp_path / "cs")]) == 0
    out = capsys.readouterr().out
    assert "cityscapes at" in out and "USABLE" in out and "fewer than the official 2975" in out

    assert main(["data", "doctor", "--dataset", "gta5", "--root", str(tmp_path / "nope"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["usable"] is False and report["counts"]["error"] == 1 and "does not exist" in \
        report["findings"][0]["message"]


def test_doctor_full_finds_orphans(tmp_path, capsys):
    write_gta5(tmp_path, n=3)
    (tmp_path / "labels" / "00003.png").unlink()
    assert main(["data", "doctor", "--dataset", "gta5", "--root", str(tmp_path), "--full", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["full"] is True and report["splits"][0]["checked"] == 2
    assert [f["file"] for f in report["findings"] if f["level"] == "error"] == ["00003.png"]


def test_argument_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse: unknown dataset name
        main(["data", "doctor", "--dataset", "kitti", "--root", str(tmp_path)])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["data", "export", "--domain", "source", "--dataset", "gta5", "--split", "train", "--n", "1",
              "--out", str(tmp_path)])
    capsys.readouterr()
    assert main(["data", "export", "--dataset", "gta5", "--split", "train", "--n", "1", "--out", str(tmp_path)]) == 2
    assert "needs --root" in capsys.readouterr().err
    write_gta5(tmp_path / "g", n=1)
    assert main(["data", "export", "--dataset", "gta5", "--root", str(tmp_path / "g"), "--split", "train",
                 "--n", "1", "--size", "12by3", "--out", str(tmp_path / "o")]) == 2
    assert "HxW" in capsys.readouterr().err
    assert main(["data", "export", "--dataset", "gta5", "--root", str(tmp_path / "g"), "--split", "val",
                 "--n", "1", "--out", str(tmp_path / "o")]) == 2
    assert "split file" in capsys.readouterr().err


def test_help_texts(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", "export", "--help"])
    assert exc.value.code == 0
    assert "labelTrainIds" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "doctor", "--help"])
    assert "2975" in capsys.readouterr().out


def test_export_real_round_trip(tmp_path, capsys):
    tree = write_cityscapes(tmp_path / "cs", {"val": {"lindau": 3}})
    out = tmp_path / "out"
    assert main(["data", "export", "--dataset", "cityscapes", "--root", str(tmp_path / "cs"), "--split", "val",
                 "--n", "5", "--out", str(out)]) == 0
    assert "exported 3 samples (the split has only 3)" in capsys.readouterr().out
    d = out / "cityscapes" / "val"
    assert sorted(p.name for p in d.iterdir()) == sorted(
        [f"{i:06d}{s}.png" for i in range(3) for s in ("", "_labelTrainIds", "_labelIds")] + ["samples.csv"])
    for i, fx in enumerate(tree.split("val")):
        np.testing.assert_array_equal(_png(d / f"{i:06d}.png"), fx.image)
        train = _png(d / f"{i:06d}_labelTrainIds.png")
        np.testing.assert_array_equal(train, ID_TO_TRAINID[fx.raw])
        ids = _png(d / f"{i:06d}_labelIds.png")
        # a train-class id survives the round trip; every other id becomes 0 ("unlabeled")
        keep = ID_TO_TRAINID[fx.raw] != 255
        np.testing.assert_array_equal(ids[keep], fx.raw[keep])
        assert (ids[~keep] == 0).all()
        np.testing.assert_array_equal(ID_TO_TRAINID[ids], train)
    rows = list(csv.DictReader((d / "samples.csv").open()))
    assert [r["name"] for r in rows] == [fx.image_path.stem for fx in tree.split("val")]
    assert {r["domain"] for r in rows} == {"cityscapes"}


def test_export_with_size(tmp_path, capsys):
    write_bdd(tmp_path / "bdd", counts={"train": 2})
    out = tmp_path / "out"
    assert main(["data", "export", "--dataset", "bdd100k", "--root", str(tmp_path / "bdd"), "--split", "train",
                 "--n", "2", "--size", "12x20", "--out", str(out)]) == 0
    d = out / "bdd100k" / "train"
    assert _png(d / "000001.png").shape == (12, 20, 3)
    train = _png(d / "000001_labelTrainIds.png")
    expected = open_real("bdd100k", tmp_path / "bdd")[1]["label"].numpy()
    assert train.shape == (12, 20) and set(np.unique(train)) <= set(np.unique(expected))
    np.testing.assert_array_equal(_png(d / "000001_labelIds.png"), TRAINID_TO_ID[train])


def test_preview_grid(tmp_path, capsys):
    write_gta5(tmp_path / "g", n=3, size=(20, 30))
    out = tmp_path / "grid.png"
    assert main(["data", "preview", "--dataset", "gta5", "--root", str(tmp_path / "g"), "--n", "2",
                 "--size", "40x60", "--out", str(out)]) == 0
    msg = capsys.readouterr().out
    assert "2 samples" in msg and "classes present: 0, 1, 2" in msg
    img = _png(out)
    # two columns of 60 px tiles (+ padding) and two rows of 40 px tiles with titles, then a legend
    assert img.ndim == 3 and img.shape[1] >= 2 * 60 and img.shape[0] > 2 * 40 + 18 * 3
    assert img.reshape(-1, 3).std(axis=0).mean() > 10  # not a blank canvas


def test_preview_default_height_for_real_images(tmp_path, capsys):
    write_gta5(tmp_path / "g", n=1, size=(8, 16))
    out = tmp_path / "grid.png"
    assert main(["data", "preview", "--dataset", "gta5", "--root", str(tmp_path / "g"), "--n", "1",
                 "--out", str(out)]) == 0
    assert _png(out).shape[1] >= 2 * 512  # 8x16 scaled to height 256 → 256x512 tiles


def test_domains_and_synthetic_export(tmp_path, capsys):
    synthetic = pytest.importorskip("npdg.data.synthetic")
    assert main(["data", "domains", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(synthetic.DOMAINS)
    assert all(r["role"] and r["description"] for r in rows)
    assert main(["data", "domains"]) == 0
    assert "source" in capsys.readouterr().out
    out = tmp_path / "out"
    assert main(["data", "export", "--domain", "source", "--split", "train", "--n", "2", "--size", "32x64",
                 "--out", str(out)]) == 0
    d = out / "source" / "train"
    ds = synthetic.SyntheticDataset("source", split="train", size=(32, 64))
    for i in range(2):
        np.testing.assert_array_equal(_png(d / f"{i:06d}_labelTrainIds.png"), ds[i]["label"].numpy())
        np.testing.assert_array_equal(_png(d / f"{i:06d}.png"),
                                      (ds[i]["image"].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
    assert main(["data", "preview", "--domain", "source", "--n", "1", "--size", "64x128",
                 "--out", str(tmp_path / "p.png")]) == 0
    assert np.asarray(Image.open(tmp_path / "p.png")).shape[1] >= 2 * 128
    assert main(["data", "preview", "--domain", "no-such-domain", "--out", str(tmp_path / "q.png")]) == 2
    assert "unknown synthetic domain" in capsys.readouterr().err
