"""npdg.data.doctor: counts, orphans, bad labels, bad images and size mismatches become findings."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from fixtures_real import write_bdd, write_cityscapes, write_gta5, write_mapillary, write_synthia
from PIL import Image

import npdg.data.doctor as doctor_mod
from npdg.data.doctor import DoctorReport, Finding, diagnose
from npdg.data.io import write_png
from npdg.errors import ConfigError


def _files(report: DoctorReport, level: str) -> list[str]:
    return [f.file for f in report.findings if f.level == level and f.file]


def test_clean_cityscapes(tmp_path):
    write_cityscapes(tmp_path)
    rep = diagnose("cityscapes", tmp_path)
    assert rep.usable and rep.layout == "cityscapes"
    assert [(s.split, s.images, s.labels, s.pairs, s.expected, s.checked) for s in rep.splits] == [
        ("train", 3, 3, 3, 2975, 3), ("val", 2, 2, 2, 500, 2)]
    msgs = [f.message for f in rep.findings if f.level == "warning"]
    assert msgs == ["train: 3 image/label pairs, fewer than the official 2975",
                    "val: 2 image/label pairs, fewer than the official 500"]
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["usable"] is True and d["counts"] == {"error": 0, "warning": 2, "info": 1}
    assert d["splits"][0]["pairs"] == 3
    text = rep.render()
    assert "USABLE" in text and "NOT USABLE" not in text and "2975" in text


@pytest.mark.parametrize("writer,name,layout", [
    (write_gta5, "gta5", "gta5"), (write_synthia, "synthia", "synthia"),
    (lambda r: write_bdd(r, layout="seg"), "bdd100k", "bdd100k-seg"), (write_mapillary, "mapillary", "mapillary-v1.2")])
def test_clean_trees_are_usable(tmp_path, writer, name, layout):
    writer(tmp_path)
    rep = diagnose(name, tmp_path, full=True)
    assert rep.usable, rep.render()
    assert rep.layout == layout and all(s.checked == s.pairs > 0 for s in rep.splits)


def test_missing_and_wrong_root(tmp_path):
    rep = diagnose("gta5", tmp_path / "absent")
    assert not rep.usable and rep.layout is None and rep.splits == ()
    assert "does not exist" in rep.findings[0].message
    write_cityscapes(tmp_path / "cs")
    rep = diagnose("bdd100k", tmp_path / "cs")
    assert not rep.usable and "expected" in rep.findings[0].message and "gtFine/" in rep.findings[0].message
    with pytest.raises(ConfigError):
        diagnose("kitti", tmp_path)


def test_missing_split_is_a_warning_when_another_split_is_usable(tmp_path):
    write_cityscapes(tmp_path, {"train": {"aachen": 1}})
    rep = diagnose("cityscapes", tmp_path)
    assert rep.usable
    assert any(f.level == "warning" and f.message.startswith("val: image folder") for f in rep.findings)
    assert rep.splits[1].pairs == 0


def test_no_usable_split_is_an_error(tmp_path):
    write_cityscapes(tmp_path, {"train": {"aachen": 1}})
    for p in (tmp_path / "gtFine").rglob("*.png"):
        p.unlink()
    rep = diagnose("cityscapes", tmp_path)
    assert not rep.usable
    assert any(f.level == "error" and f.message.startswith("val: image folder") for f in rep.findings)


def test_orphans_listed_by_name(tmp_path):
    write_gta5(tmp_path, n=4)
    (tmp_path / "labels" / "00002.png").unlink()
    write_png(tmp_path / "labels" / "00099.png", np.zeros((6, 8), np.uint8))
    rep = diagnose("gta5", tmp_path)
    assert not rep.usable
    assert _files(rep, "error") == ["00002.png"]
    assert "00099.png" in _files(rep, "warning")
    assert (rep.splits[0].orphan_images, rep.splits[0].orphan_labels, rep.splits[0].pairs) == (1, 1, 3)


def test_bad_label_values_and_bad_images(tmp_path):
    tree = write_gta5(tmp_path, n=5, mismatch={4})
    s = tree.samples
    write_png(s[0].label_path, np.full((6, 8), 40, np.uint8))  # id 40 > 33
    Image.fromarray(np.dstack([s[1].image, np.full((6, 8), 255, np.uint8)]), "RGBA").save(s[1].image_path)
    Image.fromarray(s[2].image[..., 0]).save(s[2].image_path)
    cv2.imwrite(str(s[3].image_path), s[3].image.astype(np.uint16) * 257)
    big = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    write_png(s[4].image_path, big)
    data = s[4].image_path.read_bytes()
    s[4].image_path.write_bytes(data[: len(data) // 2])
    rep = diagnose("gta5", tmp_path)
    assert not rep.usable
    errors = {f.file: f.message for f in rep.findings if f.level == "error"}
    assert set(errors) == {str(s[0].label_path), str(s[4].image_path)}
    assert "outside the valid range" in errors[str(s[0].label_path)] and ": 40" in errors[str(s[0].label_path)]
    assert "truncated" in errors[str(s[4].image_path)]
    warn = {f.file: f.message for f in rep.findings if f.level == "warning" and f.file}
    assert "alpha" in warn[str(s[1].image_path)]
    assert "greyscale" in warn[str(s[2].image_path)]
    assert "16-bit" in warn[str(s[3].image_path)]
    assert "12x16" in warn[str(s[4].label_path)]  # size mismatch still checked beside the bad image


def test_sample_versus_full(tmp_path):
    tree = write_synthia(tmp_path, n=3)
    bgr = np.zeros((6, 8, 3), np.uint16)
    bgr[..., 2] = 30  # SYNTHIA ids stop at 22
    cv2.imwrite(str(tree.samples[1].label_path), bgr)
    sampled = diagnose("synthia", tmp_path, sample=2)  # evenly spread: pairs 0 and 2
    assert sampled.usable and sampled.splits[0].checked == 2
    full = diagnose("synthia", tmp_path, full=True)
    assert not full.usable and full.splits[0].checked == 3
    assert _files(full, "error") == [str(tree.samples[1].label_path)]


def test_many_findings_are_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor_mod, "MAX_PER_KIND", 2)
    write_gta5(tmp_path, n=5)
    for k in range(5):
        (tmp_path / "labels" / f"{k + 1:05d}.png").rename(tmp_path / "labels" / f"x{k}.png")
    rep = diagnose("gta5", tmp_path)
    assert len(_files(rep, "error")) == 2
    summary = [f.message for f in rep.findings if f.message.startswith("…")]
    assert any("3 more files: image without a label (5 in all)" in m for m in summary)


def test_finding_and_report_are_frozen():
    f = Finding("error", "x", None)
    with pytest.raises(AttributeError):
        f.level = "info"  # type: ignore[misc]
    assert DoctorReport("gta5", "/", None, False).usable
