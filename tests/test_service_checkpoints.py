"""Your own models and labels (npdg.service.checkpoints, npdg.service.uploads.read_label):
refused with the reason, stored under their content hash, evicted oldest first, never someone else's."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from test_service_core import make_assets

from npdg import service as svc
from npdg.errors import DataError
from npdg.service import checkpoints as ck
from npdg.service import uploads


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder, _ = make_assets(tmp_path_factory.mktemp("ckpt"))
    return folder


def _bytes(run) -> bytes:
    return (run / "model.safetensors").read_bytes()


def test_a_checkpoint_is_checked_loaded_and_stored_under_its_hash(run, dashboard_cache):
    stored = ck.store_checkpoint(_bytes(run), "my-model.safetensors")
    assert stored.id.startswith("up:") and len(stored.id) == 19 and stored.name == "my-model.safetensors"
    assert stored.spec == "deeplabv3plus/resnet18, 19 classes" and not stored.pruned
    assert stored.path.parent == dashboard_cache / "models" and (stored.path / ck.MARKER).is_file()
    assert ck.store_checkpoint(_bytes(run), "again.safetensors").id == stored.id  # same bytes, same id
    assert [m.id for m in ck.stored_models()] == [stored.id]
    assert ck.stored_path(stored.id) == stored.path
    model = svc.shared_model(stored.path)
    ref = svc.shared_model(run)
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), ref(x))
    with pytest.raises(DataError, match="not an uploaded-model id"):
        ck.stored_path("up:../../etc")
    with pytest.raises(DataError, match="upload it again"):
        ck.stored_path("up:0123456789abcdef")


def test_pickles_foreign_files_and_weights_that_do_not_fit_are_refused(run, dashboard_cache, tmp_path):
    state = load_file(str(run / "model.safetensors"))
    buf = io.BytesIO()
    torch.save(state, buf)
    with pytest.raises(DataError, match="pickle"):
        ck.store_checkpoint(buf.getvalue(), "model.pt")
    with pytest.raises(DataError, match="pickle"):
        ck.store_checkpoint(b"\x80\x04K\x01.", "innocent.safetensors")  # a pickle by its bytes, whatever the name
    with pytest.raises(DataError, match="not a safetensors file"):
        ck.store_checkpoint(b"hello world, not a model", "x.safetensors")
    plain = tmp_path / "plain.safetensors"  # tensors, but no npdg metadata
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(DataError, match="not an npdg model file"):
        ck.store_checkpoint(plain.read_bytes(), "plain.safetensors")
    meta = {"npdg_format": "1", "arch": "deeplabv3plus", "encoder": "resnet18", "num_classes": "19", "aspp": "smp"}
    bad = dict(state)
    key = next(k for k in bad if k.endswith("conv1.weight"))
    bad[key] = bad[key][:, :2].contiguous()
    wrong = tmp_path / "wrong.safetensors"
    save_file(bad, str(wrong), metadata={**json.loads(json.dumps(meta)), "dtype": "float32"})
    with pytest.raises(DataError, match="conv1"):
        ck.store_checkpoint(wrong.read_bytes(), "wrong.safetensors")
    with pytest.raises(DataError, match="JSON"):
        ck.store_checkpoint(_bytes(run), "m.safetensors", plan=b"{not json", plan_name="pruning_plan.json")
    plan = {"arch": "segformer"}  # valid JSON, not a plan for this model
    with pytest.raises(DataError):
        ck.store_checkpoint(_bytes(run), "m.safetensors", plan=json.dumps(plan).encode())
    assert ck.stored_models() == [] and not any((dashboard_cache / "models").glob(".*.tmp"))


def test_the_cap_evicts_the_least_recently_used_and_only_npdg_folders(run, dashboard_cache, monkeypatch, tmp_path):
    first = ck.store_checkpoint(_bytes(run), "first.safetensors")
    # a second, different file (fp16 copy)
    state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(run / "model.safetensors")).items()}
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        meta = dict(f.metadata())
    half = tmp_path / "half.safetensors"
    save_file(state, str(half), metadata={**meta, "dtype": "float16"})
    foreign = dashboard_cache / "models" / "0123456789abcdef"  # looks like ours, has no marker: never deleted
    foreign.mkdir(parents=True)
    (foreign / "keep.txt").write_text("not npdg's")
    monkeypatch.setenv(ck.CAP_ENV, str(1.2 * first.size_bytes / 1e6))  # room for about one model
    second = ck.store_checkpoint(half.read_bytes(), "second.safetensors")
    assert [m.id for m in ck.stored_models()] == [second.id]
    assert not first.path.exists() and (foreign / "keep.txt").is_file()
    monkeypatch.setenv(ck.CAP_ENV, "-3")
    with pytest.raises(Exception, match="positive"):
        ck.cap_bytes()


def test_run_folders_are_checked(run, tmp_path):
    assert ck.run_folder(str(run)) == run.resolve()
    assert ck.run_folder(str(run / "model.safetensors")) == run.resolve()
    for path, msg in (("", "give the path"), (tmp_path / "nope", "no such folder"), (tmp_path, "no model.safetensors")):
        with pytest.raises(DataError, match=msg):
            ck.run_folder(path)


def _png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def test_labels_of_each_kind_and_the_ones_refused():
    train = np.zeros((4, 6), np.uint8)
    train[0, 0], train[1, 1] = 13, 255
    assert np.array_equal(uploads.read_label(_png(train), "l.png", (4, 6)), train)
    ids = np.full((4, 6), 7, np.uint8)  # Cityscapes id 7 = road = train id 0; 26 = car = 13
    ids[0, 0] = 26
    got = uploads.read_label(_png(ids), "l.png", (4, 6), kind="cityscapes")
    assert got[0, 0] == 13 and got[1, 1] == 0 and not got.flags.writeable
    from npdg.labels import colorize

    assert np.array_equal(uploads.read_label(_png(colorize(train)), "c.png", (4, 6), kind="color")[0, 0], 13)
    with pytest.raises(DataError, match="the image is 8×4"):
        uploads.read_label(_png(train), "l.png", (4, 8))
    with pytest.raises(DataError, match="PNG"):
        uploads.read_label(_png(np.zeros((4, 6, 3), np.uint8), "JPEG"), "l.jpg", (4, 6))
    with pytest.raises(DataError, match="Cityscapes label ids\\? choose that kind"):
        uploads.read_label(_png(ids), "l.png", (4, 6))
    with pytest.raises(DataError, match="one channel"):
        uploads.read_label(_png(np.zeros((4, 6, 3), np.uint8)), "l.png", (4, 6))
    with pytest.raises(DataError, match="label kind"):
        uploads.read_label(_png(train), "l.png", (4, 6), kind="coco")


def test_oversized_files_are_refused_by_size(run, monkeypatch, dashboard_cache):
    monkeypatch.setattr(ck, "MAX_CHECKPOINT_MB", 1)
    with pytest.raises(DataError, match="the limit is 1 MB"):
        ck.store_checkpoint(_bytes(run), "big.safetensors")
    assert ck.stored_models() == []
    monkeypatch.setattr(uploads, "MAX_UPLOAD_MB", 0.001)
    png = _png(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))  # ~5 KB of noise
    for read in (lambda: uploads.read_image(png, "big.png"), lambda: uploads.read_label(png, "big.png", (40, 40))):
        with pytest.raises(DataError, match="the limit is 0.001 MB"):
            read()
