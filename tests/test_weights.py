"""npdg.models.weights: model files round-trip, encoder weights load from foreign namings, unsafe files are refused."""

import os

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from npdg.errors import ConfigError, DataError
from npdg.models import build_model, load_encoder_weights, load_model, read_model_meta, save_model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomize(module: torch.nn.Module) -> torch.nn.Module:
    """Non-default values everywhere (incl. BN running stats), so a failed load cannot go unnoticed."""
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t) * 0.1 + 0.5)
            else:
                t.fill_(3)
    return module


@pytest.fixture(scope="module")
def mit():
    torch.manual_seed(1)
    return _randomize(build_model("segformer", "mit_b0", num_classes=5)).eval()


# -------------------------------------------------------------------------------- whole models


def test_save_load_round_trip_is_exact(mit, tmp_path):
    path = save_model(mit, tmp_path / "m.safetensors", extra_meta={"seed": 11, "mode": "npdg"})
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]  # no temporary file left behind
    meta = read_model_meta(path)
    assert meta["npdg_format"] == "1"
    assert (meta["arch"], meta["encoder"], meta["num_classes"]) == ("segformer", "mit_b0", "5")
    assert (meta["seed"], meta["mode"], meta["dtype"]) == ("11", "npdg", "float32")
    loaded = load_model(path)
    assert not loaded.training
    a, b = mit.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(1, 3, 40, 70)
    with torch.no_grad():
        assert torch.equal(mit(x), loaded(x))


def test_run_directory_is_accepted(mit, tmp_path):
    save_model(mit, tmp_path)  # an existing directory → DIR/model.safetensors
    assert (tmp_path / "model.safetensors").is_file()
    assert load_model(tmp_path, num_classes=5).num_classes == 5


def test_fp16_save_halves_the_file_and_loads_as_fp32(mit, tmp_path):
    full = save_model(mit, tmp_path / "full.safetensors")
    half = save_model(mit, tmp_path / "half.safetensors", fp16=True)
    assert half.stat().st_size < 0.55 * full.stat().st_size
    assert read_model_meta(half)["dtype"] == "float16"
    loaded = load_model(half)
    for key, value in mit.state_dict().items():
        got = loaded.state_dict()[key]
        assert got.dtype == value.dtype
        expected = value.half().float() if value.is_floating_point() else value
        assert torch.equal(got, expected), key


def test_metadata_mismatch_errors(mit, tmp_path):
    path = save_model(mit, tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match="5 classes.*num_classes=19"):
        load_model(path, num_classes=19)
    with pytest.raises(ConfigError, match="arch='deeplabv3plus'"):
        load_model(path, arch="deeplabv3plus")
    # tensors of a 5-class model under metadata that claims 19 classes
    state = {k: v.contiguous() for k, v in mit.net.state_dict().items()}
    meta = {"npdg_format": "1", "arch": "segformer", "encoder": "mit_b0", "num_classes": "19"}
    save_file(state, str(tmp_path / "lie.safetensors"), metadata=meta)
    with pytest.raises(DataError, match=r"shape mismatch 2 \(segmentation_head.0.weight file \[5"):
        load_model(tmp_path / "lie.safetensors")
    save_file(state, str(tmp_path / "plain.safetensors"))
    with pytest.raises(DataError, match="not an npdg model file"):
        load_model(tmp_path / "plain.safetensors")
    with pytest.raises(DataError, match="invalid model metadata"):
        save_file(state, str(tmp_path / "bad.safetensors"), metadata={**meta, "encoder": "mit_b9"})
        load_model(tmp_path / "bad.safetensors")
    with pytest.raises(DataError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError, match="reserved"):
        save_model(mit, tmp_path / "x.safetensors", extra_meta={"arch": "other"})


# -------------------------------------------------------------------------------- unsafe files


class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Exploit(str(marker))}, tmp_path / "evil.pth")
    model = build_model("deeplabv3plus", "resnet18")
    with pytest.raises(DataError, match="refused to load .*evil.pth.*pickled Python objects"):
        load_encoder_weights(model, tmp_path / "evil.pth")
    assert not marker.exists()


def test_garbage_and_foreign_files_are_refused(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    model = build_model("deeplabv3plus", "resnet18")
    with pytest.raises(DataError, match="cannot read weights file"):
        load_encoder_weights(model, tmp_path / "junk.pth")
    torch.save({"something.else": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(DataError, match="no tensor of .*other.pth matches"):
        load_encoder_weights(model, tmp_path / "other.pth")
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(DataError, match="no state dict of tensors"):
        load_encoder_weights(model, tmp_path / "empty.pth")


# -------------------------------------------------------------------------------- encoder weights


def _assert_encoder_equals(model, state):
    enc = model.net.encoder.state_dict()
    for key, value in state.items():
        if key in enc:
            assert torch.equal(enc[key], value), key


def test_torchvision_resnet_state_dict_loads_with_a_correct_report(tmp_path):
    tv = _randomize(torchvision.models.resnet18(weights=None)).state_dict()
    torch.save(tv, tmp_path / "resnet18.pth")
    model = build_model("deeplabv3plus", "resnet18")
    report = load_encoder_weights(model, tmp_path / "resnet18.pth")
    assert report.num_loaded == len(tv) - 2 == 120
    assert (report.num_missing, report.num_unexpected, report.num_mismatched) == (0, 0, 0)
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert report.complete and report.stripped == ()
    _assert_encoder_equals(model, tv)


def test_torchvision_mobilenet_safetensors_loads_through_build_model(tmp_path):
    tv = _randomize(torchvision.models.mobilenet_v2(weights=None)).state_dict()
    save_file(tv, str(tmp_path / "mnv2.safetensors"))
    model = build_model("deeplabv3plus", "mobilenet_v2", encoder_weights=tmp_path / "mnv2.safetensors")
    _assert_encoder_equals(model, tv)


def test_prefixes_and_wrappers_are_stripped(tmp_path):
    tv = _randomize(torchvision.models.resnet18(weights=None)).state_dict()
    wrapped = {"epoch": 90, "state_dict": {f"module.backbone.{k}": v for k, v in tv.items()}}
    torch.save(wrapped, tmp_path / "ddp.pth")
    model = build_model("deeplabv3plus", "resnet18")
    report = load_encoder_weights(model, tmp_path / "ddp.pth")
    assert report.stripped == ("module.", "backbone.")
    assert report.num_loaded == 120 and report.complete
    _assert_encoder_equals(model, tv)


def test_whole_segmentation_model_gives_its_encoder(tmp_path):
    donor = _randomize(build_model("deeplabv3plus", "resnet18"))
    torch.save({"model": donor.state_dict()}, tmp_path / "seg.pt")  # keys "net.encoder...", "net.decoder..."
    model = build_model("deeplabv3plus", "resnet18", num_classes=3)
    report = load_encoder_weights(model, tmp_path / "seg.pt")
    assert report.stripped == ("net.", "encoder.")
    assert report.num_loaded == len(model.net.encoder.state_dict())
    assert report.skipped and all(k.startswith(("decoder.", "segmentation_head.")) for k in report.skipped)
    _assert_encoder_equals(model, {k[len("net.encoder."):]: v for k, v in donor.state_dict().items()
                                   if k.startswith("net.encoder.")})


def test_shape_mismatch_refused_unless_not_strict(tmp_path):
    tv = _randomize(torchvision.models.resnet18(weights=None)).state_dict()
    tv["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(tv, tmp_path / "bad.pth")
    model = build_model("deeplabv3plus", "resnet18")
    before = model.net.encoder.conv1.weight.detach().clone()
    bn_before = model.net.encoder.bn1.weight.detach().clone()
    with pytest.raises(DataError, match=r"conv1.weight file \[64, 3, 3, 3\] vs model \[64, 3, 7, 7\]"):
        load_encoder_weights(model, tmp_path / "bad.pth")
    assert torch.equal(model.net.encoder.bn1.weight, bn_before)  # strict refusal loads nothing
    report = load_encoder_weights(model, tmp_path / "bad.pth", strict=False)
    assert report.mismatched == (("conv1.weight", (64, 3, 3, 3), (64, 3, 7, 7)),)
    assert report.num_loaded == 119 and not report.complete
    assert torch.equal(model.net.encoder.conv1.weight, before)
    assert torch.equal(model.net.encoder.bn1.weight, tv["bn1.weight"])


def test_missing_and_unexpected_keys_under_strict(tmp_path):
    tv = _randomize(torchvision.models.resnet18(weights=None)).state_dict()
    del tv["layer4.1.bn2.weight"]
    tv["layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save(tv, tmp_path / "partial.pth")
    model = build_model("deeplabv3plus", "resnet18")
    with pytest.raises(DataError, match="missing 1 \\(layer4.1.bn2.weight\\).*unexpected 1"):
        load_encoder_weights(model, tmp_path / "partial.pth")
    report = load_encoder_weights(model, tmp_path / "partial.pth", strict=False)
    assert report.missing == ("layer4.1.bn2.weight",)
    assert report.unexpected == ("layer5.0.conv1.weight",)
    assert "missing 1" in report.summary()
