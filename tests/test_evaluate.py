"""npdg.evaluate and the ``eval`` command: scores against hand-computed numbers, inference modes,
protocols, Cityscapes-format export, JSON shape."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from npdg.cli import main
from npdg.errors import ConfigError, DataError
from npdg.evaluate import (
    MMSEG,
    ROBUSTNET,
    ConfusionMatrix,
    Protocol,
    ResizePolicy,
    evaluate,
    get_protocol,
    predict,
    prepare_sample,
    slide_windows,
)
from npdg.labels import CLASS_NAMES, ID_TO_TRAINID, IGNORE, PALETTE

# ------------------------------------------------------------------------------ confusion matrix


def test_confusion_matrix_matches_hand_computation():
    # 4 classes; class 3 is in neither gt nor pred; one pixel ignored
    gt = torch.tensor([0, 0, 1, 1, 2, 255, 2])
    pred = torch.tensor([0, 1, 1, 1, 0, 2, 2])
    cm = ConfusionMatrix(num_classes=4)
    cm.update(pred[:3], gt[:3]).update(pred[3:], gt[3:])  # two batches add up
    assert cm.numpy().tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    iou = cm.iou()
    assert iou[:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx(0.5)  # (1/3 + 2/3 + 1/2) / 3: class 3 left out
    assert cm.pixel_accuracy() == pytest.approx(4 / 6)


def test_class_only_predicted_counts_as_zero_iou():
    cm = ConfusionMatrix(num_classes=3).update(torch.tensor([0, 2]), torch.tensor([0, 0]))
    iou = cm.iou()
    assert iou[0] == pytest.approx(0.5) and iou[2] == 0.0 and math.isnan(iou[1])
    assert cm.miou() == pytest.approx(0.25)  # (1/2 + 0) / 2


def test_confusion_matrix_agrees_with_numpy_on_random_maps():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 19, size=(3, 31, 17))
    gt[rng.random(gt.shape) < 0.1] = IGNORE
    pred = rng.integers(0, 19, size=gt.shape)
    cm = ConfusionMatrix().update(torch.from_numpy(pred), torch.from_numpy(gt))
    keep = gt != IGNORE
    ref = np.bincount(gt[keep] * 19 + pred[keep], minlength=361).reshape(19, 19)
    assert (cm.numpy() == ref).all()


def test_sync_free_histogram_equals_bincount():
    from npdg.evaluate import _histogram  # the accelerator path, checked on the CPU

    idx = torch.randint(0, 362, (5000,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_histogram(idx, 362), torch.bincount(idx, minlength=362))


def test_labels_that_are_not_train_ids_raise():
    cm = ConfusionMatrix().update(torch.tensor([0, 1]), torch.tensor([0, 33]))
    assert cm.numpy().sum() == 1
    with pytest.raises(DataError, match="1 labelled pixels hold ids outside 0..18"):
        cm.check()


# ------------------------------------------------------------------------------ inference


def test_slide_windows_follow_mmseg():
    assert slide_windows((10, 25), (10, 10), (10, 8)) == [(0, 10, 0, 10), (0, 10, 8, 18), (0, 10, 15, 25)]
    assert slide_windows((5, 6), (8, 8), (4, 4)) == [(0, 5, 0, 6)]  # crop larger than the image
    covered = np.zeros((37, 53), int)
    for y1, y2, x1, x2 in slide_windows((37, 53), (16, 16), (10, 10)):
        assert (y2 - y1, x2 - x1) == (16, 16)
        covered[y1:y2, x1:x2] += 1
    assert covered.min() >= 1


def test_sliding_window_equals_whole_image_for_a_pointwise_model():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 5, kernel_size=1)
    x = torch.rand(2, 3, 37, 53)
    with torch.no_grad():
        whole = predict(model, x, "whole")
        slide = predict(model, x, "slide", crop=(16, 16), stride=(10, 10))
    assert slide.shape == whole.shape == (2, 5, 37, 53)
    assert torch.allclose(slide, whole, atol=1e-6)


def test_sliding_window_averages_overlaps():
    class WindowWidth(nn.Module):  # every logit = width of the window it was computed on
        def forward(self, x):
            return torch.full((x.shape[0], 1, *x.shape[-2:]), float(x.shape[-1]))

    out = predict(WindowWidth(), torch.zeros(1, 3, 4, 6), "slide", crop=(4, 4), stride=(4, 2))
    assert torch.all(out == 4.0)
    with pytest.raises(ConfigError, match="crop"):
        predict(WindowWidth(), torch.zeros(1, 3, 4, 6), "slide")
    with pytest.raises(ConfigError, match="unknown inference mode"):
        predict(WindowWidth(), torch.zeros(1, 3, 4, 6), "tiles")


# ------------------------------------------------------------------------------ protocols


def test_protocol_presets():
    assert get_protocol("robustnet") is ROBUSTNET and get_protocol(MMSEG) is MMSEG
    with pytest.raises(ConfigError, match="robustnet, mmseg"):
        get_protocol("shade")
    # RobustNet: Cityscapes/BDD native, Mapillary height 1536 + centre crop 1536x1536
    assert ROBUSTNET.policy_for("cityscapes").target_size(1024, 2048) == (1024, 2048)
    mapillary = ROBUSTNET.policy_for("mapillary")
    assert mapillary.target_size(3024, 4032) == (1536, 2048) and mapillary.crop == (1536, 1536)
    assert ROBUSTNET.mode == "whole" and ROBUSTNET.score_at == "input"
    # mmseg/Rein: Cityscapes → 1024x512, Mapillary keeps ratio, BDD stays 1280x720; slide 512/341
    assert MMSEG.policy_for("cityscapes").target_size(1024, 2048) == (512, 1024)
    assert MMSEG.policy_for("mapillary").target_size(3024, 4032) == (512, 683)
    assert MMSEG.policy_for("bdd100k").target_size(720, 1280) == (720, 1280)
    assert (MMSEG.mode, MMSEG.crop, MMSEG.stride, MMSEG.score_at) == ("slide", (512, 512), (341, 341), "label")
    # synthetic domains: native under both
    assert ROBUSTNET.policy_for("night").kind == MMSEG.policy_for("night").kind == "native"
    assert MMSEG.with_mode("whole").name == "mmseg+whole" and MMSEG.with_mode("slide") is MMSEG
    with pytest.raises(ConfigError, match="score_at='input'"):
        Protocol("bad", default=ResizePolicy("resize", (8, 8), crop=(4, 4)), score_at="label")


def test_prepare_sample_resizes_labels_by_nearest_and_pads_crops_with_ignore():
    image = torch.rand(3, 4, 10)
    label = torch.arange(40).view(4, 10) % 19
    policy = ResizePolicy("height", (8, 0), crop=(8, 24))
    inp, lab = prepare_sample(image, label, policy, "input")
    assert inp.shape == (3, 8, 24) and lab.shape == (8, 24)
    assert (lab[:, :2] == IGNORE).all() and (lab[:, -2:] == IGNORE).all()  # 20 wide → 2 px pad per side
    assert set(lab[:, 2:-2].unique().tolist()) <= set(label.unique().tolist())  # nearest: no new ids
    assert inp.min() >= 0 and inp.max() <= 1
    inp, lab = prepare_sample(image, label, ResizePolicy("resize", (8, 20)), "label")
    assert inp.shape == (3, 8, 20) and torch.equal(lab, label)  # mmseg: label kept at stored size


# ------------------------------------------------------------------------------ evaluate()


class OracleModel(nn.Module):
    """Reads the class from the red channel (value k/18) — a perfect, translation-equivariant model."""

    num_classes = 19

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        k = torch.arange(19, dtype=x.dtype, device=x.device).view(1, 19, 1, 1) / 18
        return -(x[:, :1] - k).abs() + self.dummy


class CodedDataset(torch.utils.data.Dataset):
    """Labels from a fixed generator, images encoding them; ``wrong`` flips the code for class 13."""

    def __init__(self, n, size, domain, classes=(0, 2, 13, 10), wrong=False):
        self.n, self.size, self.domain, self.classes, self.wrong = n, size, domain, classes, wrong

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        label = torch.tensor(self.classes)[torch.randint(len(self.classes), self.size, generator=g)]
        code = label.clone()
        if self.wrong:
            code[label == 13] = 11  # the model will say "person" where the truth is "car"
        label[:, :2] = IGNORE
        image = torch.stack([code.float() / 18, torch.rand(self.size, generator=g), torch.zeros(self.size)])
        return {"image": image, "label": label, "domain": self.domain, "split": "val", "index": 10 + i,
                "name": f"{self.domain}_{i}"}


def test_evaluate_scores_json_shape_and_targets():
    data = {"source": CodedDataset(3, (12, 20), "source"), "night": CodedDataset(2, (12, 20), "night", wrong=True)}
    calls = []
    result = evaluate(OracleModel(), data, "robustnet", batch_size=2, device="cpu",
                      progress=lambda d, t: calls.append((d, t)), checkpoint="m.safetensors", seed=5)
    assert calls[-1] == (5, 5)
    assert result.targets == ("night",)  # the synthetic source domain is not a target
    src, night = result.results["source"], result.results["night"]
    assert src.miou == 1.0 and src.pixel_acc == 1.0 and src.num_images == 3
    assert src.confusion.sum() == 3 * 12 * 18  # two ignored columns per image
    # night: every car predicted as person → car IoU 0, person IoU 0, others 1 → mIoU 3/5
    assert night.per_class_iou["car"] == 0.0 and night.per_class_iou["person"] == 0.0
    assert night.miou == pytest.approx(3 / 5)
    assert result.mean_target_miou == pytest.approx(3 / 5)

    d = result.to_dict()
    text = json.dumps(d, allow_nan=False)  # strict JSON: absent classes are null, not NaN
    assert set(d) == {"protocol", "results", "mean_target_miou"}
    assert set(d["results"]) == {"source", "night"}
    for r in d["results"].values():
        assert set(r) == {"miou", "per_class_iou", "pixel_acc", "num_images"}
        assert list(r["per_class_iou"]) == list(CLASS_NAMES)
    assert d["results"]["source"]["per_class_iou"]["wall"] is None
    p = json.loads(text)["protocol"]
    assert (p["name"], p["checkpoint"], p["seed"], p["classes"]) == ("robustnet", "m.safetensors", 5, list(CLASS_NAMES))
    assert p["resolution"] == {"source": "12x20", "night": "12x20"} and p["split"]["night"] == "val"
    assert result.table()["role"].tolist() == ["source", "target"]
    assert len(result.per_class_frame()) == 2 * 19


def test_evaluate_limit_targets_and_mmseg_label_resolution():
    data = {"cityscapes": CodedDataset(4, (16, 32), "cityscapes"), "bdd100k": CodedDataset(2, (18, 32), "bdd100k")}
    result = evaluate(OracleModel(), data, MMSEG, batch_size=3, limit=2, targets=["cityscapes"])
    assert [r.num_images for r in result.results.values()] == [2, 2]
    assert result.targets == ("cityscapes",)
    # the model ran at mmseg's 512x1024 but is scored against the stored 16x32 labels
    assert result.protocol["resolution"]["cityscapes"] == "512x1024"
    assert result.results["cityscapes"].confusion.sum() == 2 * 16 * 30
    assert result.results["cityscapes"].miou == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="not among the evaluated domains"):
        evaluate(OracleModel(), data, MMSEG, targets=["mapillary"])


def test_channels_last_gives_the_same_scores_and_restores_the_model():
    from npdg.models import build_model

    torch.manual_seed(0)
    model = build_model("deeplabv3plus", "mobilenet_v2").train()
    data = {"night": CodedDataset(1, (32, 64), "night")}
    plain = evaluate(model, data, "robustnet", channels_last=False)
    fast = evaluate(model, data, "robustnet", channels_last=True)
    assert np.array_equal(plain.results["night"].confusion, fast.results["night"].confusion)
    assert model.training  # train mode comes back
    assert model.net.encoder.features[0][0].weight.is_contiguous()  # and the memory format


def test_evaluate_refuses_labels_that_are_not_train_ids():
    class Bad(CodedDataset):
        def __getitem__(self, i):
            s = super().__getitem__(i)
            s["label"][0, 5] = 26  # a label id, not a train id
            return s

    with pytest.raises(DataError, match="not train ids"):
        evaluate(OracleModel(), {"x": Bad(1, (8, 8), "x")}, "robustnet")


def test_export_writes_cityscapes_label_ids_and_colours(tmp_path):
    data = {"night": CodedDataset(2, (12, 20), "night")}
    evaluate(OracleModel(), data, "robustnet", export_dir=tmp_path)
    files = sorted(p.name for p in (tmp_path / "night").iterdir())
    assert files == ["000010_color.png", "000010_labelIds.png", "000011_color.png", "000011_labelIds.png"]
    ids = np.array(Image.open(tmp_path / "night" / "000011_labelIds.png"))
    color = np.array(Image.open(tmp_path / "night" / "000011_color.png"))
    sample = data["night"][1]
    train = sample["image"][0].mul(18).round().long().numpy()  # what the oracle predicts everywhere
    assert ids.dtype == np.uint8 and ids.shape == (12, 20)
    assert (ID_TO_TRAINID[ids] == train).all()
    assert set(np.unique(ids).tolist()) <= {7, 11, 23, 26}  # road, building, sky, car label ids
    assert (color == PALETTE[train]).all()


# ------------------------------------------------------------------------------ the eval command


def test_eval_cli_on_a_tiny_saved_model(tmp_path, capsys):
    from npdg.data.synthetic import SOURCE_DOMAIN
    from npdg.models import build_model, save_model

    torch.manual_seed(0)
    save_model(build_model("segformer", "mit_b0"), tmp_path, extra_meta={"seed": 3})
    out = tmp_path / "res.json"
    rc = main(["eval", "--run", str(tmp_path), "--data", "synthetic", "--domains", SOURCE_DOMAIN, "night",
               "--limit", "2", "--size", "32x64", "--device", "cpu", "--json", str(out),
               "--export", str(tmp_path / "pred"), "--no-progress"])
    assert rc == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "img/s" not in captured.err  # no progress bar in logs
    assert "mean target mIoU (1 domains)" in printed and "night" in printed
    d = json.loads(out.read_text())
    assert set(d["results"]) == {SOURCE_DOMAIN, "night"}
    assert all(r["num_images"] == 2 for r in d["results"].values())
    assert d["protocol"]["targets"] == ["night"] and d["protocol"]["seed"] == 3
    assert d["protocol"]["resolution"]["night"] == "32x64"
    assert d["protocol"]["checkpoint"].endswith("model.safetensors")
    assert 0.0 <= d["mean_target_miou"] <= 1.0
    assert len(list((tmp_path / "pred" / "night").glob("*_labelIds.png"))) == 2


def test_eval_cli_errors_are_clear(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "none.safetensors"), "--data", "synthetic"]) == 2
    assert "model file not found" in capsys.readouterr().err
    from npdg.models import build_model, save_model

    save_model(build_model("segformer", "mit_b0"), tmp_path)
    assert main(["eval", "--run", str(tmp_path), "--data", "kitti", "--device", "cpu"]) == 2
    assert "use 'synthetic' or NAME:ROOT" in capsys.readouterr().err
    assert main(["eval", "--run", str(tmp_path), "--data", "synthetic", "--domains", "mars", "--device", "cpu"]) == 2
    assert "unknown domains ['mars']" in capsys.readouterr().err


def test_miou_agrees_with_the_official_cityscapes_evaluator(tmp_path):
    """Exported label-id PNGs scored by cityscapesscripts give npdg's per-class IoU and mIoU."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as csev

    from npdg.labels import train_ids_to_ids

    class Noisy(CodedDataset):  # the oracle sees a label with 25% of its pixels changed
        def __getitem__(self, i):
            s = super().__getitem__(i)
            g = torch.Generator().manual_seed(100 + i)
            code = s["image"][0].mul(18).round().long()
            flip = torch.rand(code.shape, generator=g) < 0.25
            code[flip] = torch.randint(0, 19, code.shape, generator=g)[flip]
            s["image"][0] = code.float() / 18
            return s

    data = Noisy(3, (24, 40), "cityscapes", classes=(0, 1, 2, 8, 10, 11, 13))
    result = evaluate(OracleModel(), {"cityscapes": data}, "robustnet", export_dir=tmp_path / "pred")
    preds, gts = [], []
    for i in range(len(data)):
        s = data[i]
        gt = tmp_path / f"{s['index']:06d}_gtFine_labelIds.png"
        Image.fromarray(train_ids_to_ids(s["label"].numpy())).save(gt)
        gts.append(str(gt))
        preds.append(str(tmp_path / "pred" / "cityscapes" / f"{s['index']:06d}_labelIds.png"))
    args = csev.args
    args.evalInstLevelScore, args.JSONOutput, args.quiet = False, False, True
    official = csev.evaluateImgLists(preds, gts, args)
    ours = result.results["cityscapes"]
    for name, iou in ours.per_class_iou.items():
        theirs = official["classScores"][name]
        assert (math.isnan(iou) and math.isnan(theirs)) or iou == pytest.approx(theirs), name
    assert ours.miou == pytest.approx(official["averageScoreClasses"])
    assert 0.1 < ours.miou < 0.9 and 0 < ours.per_class_iou["road"] < 1  # a non-trivial case


def test_default_targets_leave_out_source_and_content_shift():
    from npdg.evaluate import default_targets

    names = ["source", "photo", "night", "suburb", "cityscapes"]
    assert default_targets(names, "source") == ("photo", "night", "cityscapes")
    assert default_targets(["gta5", "cityscapes"], "gta5") == ("cityscapes",)
