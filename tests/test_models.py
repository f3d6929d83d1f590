"""npdg.models.build: every arch/encoder builds, any input size works, normalization is inside."""

import pytest
import torch
import torch.nn.functional as F

from npdg.errors import ConfigError
from npdg.models import ARCHS, ENCODERS, SegModel, build_model, select_device

#: the biggest ones take a few seconds each just to initialize their weights
BIG = {"resnet101", "mit_b3", "mit_b4", "mit_b5"}
ALL = [pytest.param(arch, enc, marks=[pytest.mark.slow] if enc in BIG else [])
       for arch, encs in ENCODERS.items() for enc in encs]
FORWARD = [("deeplabv3plus", "resnet18"), ("deeplabv3plus", "mobilenet_v2"), ("deeplabv3plus", "vgg16_bn"),
           ("segformer", "mit_b0")]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_tables():
    assert ARCHS == ("deeplabv3plus", "segformer")
    assert ENCODERS["deeplabv3plus"] == ("resnet18", "resnet50", "resnet101", "mobilenet_v2", "vgg16_bn")
    assert ENCODERS["segformer"] == tuple(f"mit_b{i}" for i in range(6))


@pytest.mark.parametrize("arch,encoder", ALL)
def test_every_model_builds(arch, encoder):
    model = build_model(arch, encoder, num_classes=7)
    assert isinstance(model, SegModel)
    assert (model.arch, model.encoder, model.num_classes) == (arch, encoder, 7)
    assert model.divisor == (32 if arch == "segformer" else 16)
    head = model.net.segmentation_head[0]
    assert head.out_channels == 7
    # the state dict is the smp model's, under "net." (normalization buffers are not saved)
    assert set(model.state_dict()) == {f"net.{k}" for k in model.net.state_dict()}


@pytest.mark.parametrize("arch,encoder", FORWARD)
def test_odd_input_sizes_give_same_size_logits(arch, encoder):
    model = build_model(arch, encoder).eval()
    with torch.no_grad():
        for shape in [(2, 3, 67, 131), (1, 3, 5, 7), (1, 3, 64, 96)]:
            out = model(torch.rand(shape))
            assert out.shape == (shape[0], 19, shape[2], shape[3])
            assert torch.isfinite(out).all()


def test_forward_normalizes_pads_by_reflection_and_crops():
    model = build_model("deeplabv3plus", "resnet18").eval()
    x = torch.rand(1, 3, 67, 131)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    padded = F.pad((x - mean) / std, (0, 13, 0, 13), mode="reflect")  # 80 x 144: multiples of 16
    with torch.no_grad():
        expected = model.net(padded)[..., :67, :131]
        assert torch.allclose(model(x), expected, atol=1e-5)
        y = torch.rand(1, 3, 32, 48)  # already divisible: no padding at all
        assert torch.allclose(model(y), model.net((y - mean) / std), atol=1e-5)


def test_vgg_encoder_stops_at_stride_16_without_dilation():
    model = build_model("deeplabv3plus", "vgg16_bn")
    feats = model.net.encoder(torch.rand(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [64, 32, 16, 8, 4]  # conv1_2 .. conv5_3, no pool5
    assert feats[2].shape[1] == 256  # conv3_3 feeds the decoder's high-resolution branch
    dilations = {m.dilation for m in model.net.encoder.modules() if isinstance(m, torch.nn.Conv2d)}
    assert dilations == {(1, 1)}


def test_aspp_variants():
    smp_default = build_model("deeplabv3plus", "resnet18")
    robust = build_model("deeplabv3plus", "resnet18", aspp="robustnet")
    rates = [m.dilation[0] for m in robust.net.decoder.aspp[0].convs[1:4].modules()
             if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert rates == [6, 12, 18]
    default_rates = {m.dilation[0] for m in smp_default.net.decoder.aspp[0].convs.modules()
                     if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)}
    assert default_rates == {12, 24, 36}
    with pytest.raises(ConfigError, match="only applies to deeplabv3plus"):
        build_model("segformer", "mit_b0", aspp="robustnet")


def test_bad_choices_raise_config_errors_listing_valid_ones():
    with pytest.raises(ConfigError, match="deeplabv3plus, segformer"):
        build_model("unet", "resnet18")
    with pytest.raises(ConfigError, match="mit_b0.*mit_b5|resnet18.*vgg16_bn"):
        build_model("segformer", "resnet18")
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("segformer", "mit_b0", num_classes=0)
    with pytest.raises(ConfigError, match="local file"):
        build_model("deeplabv3plus", "resnet18", encoder_weights="imagenet")


def test_forward_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        build_model("segformer", "mit_b0")(torch.rand(1, 1, 32, 32))


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert select_device("auto").type == expected
    assert select_device(None).type == expected
    with pytest.raises(ConfigError, match="unknown device"):
        select_device("tpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            select_device("cuda")
