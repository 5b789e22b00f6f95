"""Tests of the Error Localization Network (eln.md §2.3)."""

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

from semiseg_lit.models.eln_net import (
    ELNWeightsError,
    ErrorLocalizationNet,
    dropout_disabled,
    find_first_conv,
    load_matching_weights,
)
from semiseg_lit.ops.eln_targets import eln_inputs


@pytest.fixture(scope="module")
def net21():
    torch.manual_seed(0)
    return ErrorLocalizationNet(21, encoder_weights=None)


def test_forward_shape_and_no_grad_into_seg_logits(net21):
    images = torch.randn(2, 3, 64, 64)
    seg_logits = torch.randn(2, 21, 16, 16, requires_grad=True)  # 1/4 resolution
    out = net21.train()(images, seg_logits)
    assert out.shape == (2, 1, 64, 64)
    out.mean().backward()
    assert seg_logits.grad is None  # detached inside the ELN
    assert net21.head[-1].weight.grad is not None and net21.encoder.conv1.weight.grad is not None
    net21.zero_grad(set_to_none=True)


def test_structure_follows_reference(net21):
    # 3 + 1 + 21 = 25 input channels; head 1×1 256→256 → ReLU → 1×1 256→1; ASPP rates 6/12/18, not separable
    assert net21.in_channels == 25 and net21.encoder.conv1.in_channels == 25
    convs = [m for m in net21.head if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(256, 256, (1, 1)), (256, 1, (1, 1))]
    aspp = net21.decoder.aspp[0]
    assert [branch[0].dilation for branch in list(aspp.convs)[1:4]] == [(6, 6), (12, 12), (18, 18)]
    assert aspp.project[-1].p == 0.5
    assert net21.encoder.output_stride == 16
    groups = net21.param_groups()
    assert {id(p) for p in groups["backbone"]} == {id(p) for p in net21.encoder.parameters()}
    assert len(groups["backbone"]) + len(groups["head"]) == len(list(net21.parameters()))


def test_c10_odd_input_size_and_eval_batch_one():
    torch.manual_seed(0)
    net = ErrorLocalizationNet(10, encoder_weights=None, decoder_channels=32).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 50, 70), torch.randn(1, 10, 13, 18))  # padded to 64×80 inside
    assert out.shape == (1, 1, 50, 70) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="seg_logits"):
        net(torch.randn(1, 3, 64, 64), torch.randn(1, 21, 16, 16))
    with pytest.raises(ValueError, match="ELN input"):
        net.forward_inputs(torch.randn(1, 5, 64, 64))


def test_forward_equals_forward_inputs_of_eln_inputs(net21):
    images, z = torch.randn(2, 3, 64, 64), torch.randn(2, 21, 64, 64)
    net21.eval()
    with torch.no_grad():
        assert torch.allclose(net21(images, z), net21.forward_inputs(eln_inputs(images, z)))


def test_clean_mode_disables_dropout_only(net21):
    # train mode: dropout makes two passes differ; clean=True (gt_mode) makes them equal,
    # while BN stays in train mode (batch statistics) and dropout layers come back afterwards
    net21.train()
    images, z = torch.randn(2, 3, 64, 64), torch.randn(2, 21, 16, 16)
    with torch.no_grad():
        torch.manual_seed(1)
        a = net21(images, z)
        torch.manual_seed(2)
        b = net21(images, z)
        c, d = net21(images, z, clean=True), net21(images, z, clean=True)
    assert not torch.allclose(a, b)
    assert torch.allclose(c, d)
    assert net21.decoder.aspp[0].project[-1].training and net21.encoder.bn1.training


def test_dropout_disabled_restores_state():
    m = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm1d(2), nn.Dropout2d(0.1))
    with dropout_disabled(m):
        assert not m[0].training and not m[2].training and m[1].training
    assert m[0].training and m[2].training


def test_first_conv_reset_and_smp_modes(monkeypatch):
    import semiseg_lit.models.eln_net as eln_net

    calls = []

    def spy(module, in_channels):
        calls.append(in_channels)
        return find_first_conv(module, in_channels)

    monkeypatch.setattr(eln_net, "find_first_conv", spy)
    torch.manual_seed(0)
    ErrorLocalizationNet(3, encoder_name="resnet18", encoder_weights=None, decoder_channels=16)
    assert calls == [7]  # "reset" (default) re-initialises the 3+1+3-input stem conv
    net = ErrorLocalizationNet(3, encoder_name="resnet18", encoder_weights=None, decoder_channels=16,
                               first_conv_init="smp")
    assert calls == [7]  # "smp" keeps smp's stem
    conv = find_first_conv(net.encoder, 7)
    assert conv is net.encoder.conv1 and conv.weight.shape == (64, 7, 7, 7)
    with pytest.raises(ELNWeightsError, match="in_channels=9"):
        find_first_conv(net.encoder, 9)
    with pytest.raises(ValueError, match="first_conv_init"):
        ErrorLocalizationNet(3, encoder_weights=None, first_conv_init="zeros")


def test_local_encoder_weights_skip_the_widened_stem(tmp_path):
    # a 3-channel resnet18 encoder state dict: everything loads except the stem conv (3 vs 3+1+4 inputs),
    # which is re-initialised (reference: conv1 replaced after loading ImageNet weights)
    torch.manual_seed(0)
    src = smp.encoders.get_encoder("resnet18", in_channels=3, weights=None)
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    net = ErrorLocalizationNet(4, encoder_name="resnet18", encoder_weights=str(path), decoder_channels=16)
    assert torch.equal(net.encoder.layer3[0].conv1.weight, src.layer3[0].conv1.weight)
    assert torch.equal(net.encoder.bn1.weight, src.bn1.weight)
    assert net.encoder.conv1.weight.shape == (64, 8, 7, 7)
    skipped = load_matching_weights(net.encoder, path)
    assert skipped == ["conv1.weight"]


def test_bad_weights_and_classes_are_named(tmp_path):
    with pytest.raises(ELNWeightsError, match="missing.pth"):
        ErrorLocalizationNet(4, encoder_name="resnet18", encoder_weights=str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(ELNWeightsError, match="no key of matching shape"):
        ErrorLocalizationNet(4, encoder_name="resnet18", encoder_weights=str(bad))
    with pytest.raises(ValueError, match="num_classes"):
        ErrorLocalizationNet(1, encoder_weights=None)
    with pytest.raises(ValueError, match="not_an_encoder"):
        ErrorLocalizationNet(4, encoder_name="not_an_encoder", encoder_weights=None)
