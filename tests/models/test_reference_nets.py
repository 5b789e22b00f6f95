"""The official AEL / ELN networks (models/reference_nets.py, issue 14; ael.md §2, eln.md §2).

Parameter counts are the ones measured on the official code; dilations, strides and output sizes
are hand-derived from the official ``_make_layer`` / ``_make_MG_unit`` rules; weight files are
written here in the official key layouts.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from semiseg_lit.models.deeplab import CheckpointMismatchError, build_segmentation_net
from semiseg_lit.models.reference_nets import AELNet, ELNSegNet, ReferenceELN, iter_3x3_convs


def n_params(module: nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


@pytest.fixture(scope="module")
def ael101() -> AELNet:
    torch.manual_seed(0)
    return AELNet(19, encoder="resnet101s")


@pytest.fixture(scope="module")
def eln50() -> ELNSegNet:
    torch.manual_seed(0)
    return ELNSegNet(19, encoder="resnet50")


# ----------------------------------------------------------------------------------------- counts
def test_ael_parameter_counts_are_the_official_ones(ael101):
    assert n_params(ael101.encoder) == 42_623_936
    assert n_params(ael101.decoder) + n_params(ael101.final) == 19_998_739
    assert n_params(ael101.aux_head) == 2_364_947
    assert n_params(ael101) == 64_987_622
    # the deep stem: 3x3 convs 3->64 (/2), 64->64, 64->128; bn1 over 128 channels; ceil-mode max-pool
    stem = ael101.encoder.conv1
    assert [(c.in_channels, c.out_channels, c.stride) for c in (stem[0], stem[3], stem[6])] == [
        (3, 64, (2, 2)), (64, 64, (1, 1)), (64, 128, (1, 1))]
    assert ael101.encoder.bn1.num_features == 128 and ael101.encoder.maxpool.ceil_mode


def test_eln_segmentation_net_parameter_counts_are_the_official_ones(eln50):
    assert (n_params(eln50.encoder), n_params(eln50.head)) == (23_508_032, 17_073_395)
    assert (n_params(eln50.head.cls), n_params(eln50.head.proj)) == (70_675, 98_688)
    assert n_params(eln50) == 40_581_427
    net = ELNSegNet(21, encoder="resnet101")
    assert (n_params(net.encoder), n_params(net.head), n_params(net)) == (42_500_160, 17_073_909, 59_574_069)


def test_reference_eln_parameter_counts_are_the_official_ones():
    assert n_params(ReferenceELN(19, encoder_weights=None)) == 26_904_993
    assert n_params(ReferenceELN(21, encoder_weights=None)) == 26_911_265


# ----------------------------------------------------------------------------------------- dilations
def _trunk_convs(net: nn.Module) -> dict[str, tuple[int, int]]:
    """{name: (dilation, stride)} of every 3x3 conv of the trunk; padding must equal the dilation."""
    out = {}
    for name, conv in iter_3x3_convs(net.encoder):
        assert conv.padding == conv.dilation, name
        out[name] = (conv.dilation[0], conv.stride[0])
    return out


def test_ael_dilation_and_stride_of_every_3x3_conv(ael101):
    expected = {"conv1.0": (1, 2), "conv1.3": (1, 1), "conv1.6": (1, 1)}
    expected |= {f"layer1.{i}.conv2": (1, 1) for i in range(3)}
    expected |= {f"layer2.{i}.conv2": (1, 2 if i == 0 else 1) for i in range(4)}
    expected |= {f"layer3.{i}.conv2": (1 if i == 0 else 2, 1) for i in range(23)}   # 1, 2, 2, ...
    expected |= {f"layer4.{i}.conv2": (d, 1) for i, d in enumerate((4, 8, 16))}     # multi-grid
    assert _trunk_convs(ael101) == expected
    assert ael101.encoder.layer3[0].downsample[0].stride == (1, 1) == ael101.encoder.layer4[0].downsample[0].stride
    heads = {n: (c.dilation[0], c.padding[0]) for n, c in iter_3x3_convs(ael101) if not n.startswith("encoder.")}
    assert heads == {"decoder.aspp.conv3.0": (12, 12), "decoder.aspp.conv4.0": (24, 24),
                     "decoder.aspp.conv5.0": (36, 36), "decoder.head.0": (1, 1), "decoder.tail.0": (1, 1),
                     "decoder.tail.4": (1, 1), "aux_head.0": (1, 1)}
    drops = [m for m in ael101.modules() if isinstance(m, nn.Dropout2d)]
    assert [d.p for d in drops] == [0.1] * 4  # head, 2 x tail, aux


def test_eln_segmentation_net_dilation_and_stride_of_every_3x3_conv(eln50):
    expected = {f"layer1.{i}.conv2": (1, 1) for i in range(3)}
    expected |= {f"layer2.{i}.conv2": (1, 2 if i == 0 else 1) for i in range(4)}
    expected |= {f"layer3.{i}.conv2": (1, 2 if i == 0 else 1) for i in range(6)}
    expected |= {f"layer4.{i}.conv2": (d, 1) for i, d in enumerate((2, 4, 8))}     # multi-grid (1,2,4) x 2
    assert _trunk_convs(eln50) == expected
    assert eln50.encoder.conv1.kernel_size == (7, 7) and eln50.encoder.layer4[0].downsample[0].stride == (1, 1)
    aspp = [c.dilation[0] for n, c in iter_3x3_convs(eln50.head.aspp)]
    assert aspp == [6, 12, 18]
    assert [m.p for m in eln50.modules() if isinstance(m, nn.Dropout)] == [0.1, 0.5, 0.1]


def test_reference_eln_trunk_is_undilated_with_a_stride_one_layer4():
    net = ReferenceELN(21, encoder_weights=None)
    convs = _trunk_convs(net)
    assert set(d for d, _ in convs.values()) == {1}
    strided = sorted(n for n, (_, s) in convs.items() if s == 2)
    assert strided == ["layer2.0.conv1", "layer3.0.conv1"]
    assert net.encoder.layer4[0].downsample[0].stride == (1, 1)
    assert (net.encoder.conv1.in_channels, net.encoder.conv1.kernel_size) == (3 + 1 + 21, (7, 7))
    assert [m.p for m in net.modules() if isinstance(m, nn.Dropout)] == [0.5, 0.5, 0.1]


# ----------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("size, quarter, eighth", [(769, 193, 97), (505, 127, 64), (513, 129, 65)])
def test_ael_output_shapes_at_odd_sizes(size, quarter, eighth):
    net = AELNet(19, encoder="resnet101s", projection_dim=16).to("meta").eval()  # shapes only
    out = net.forward_all(torch.empty(1, 3, size, size + 2, device="meta"), aux=True, proj=True,
                          keep_features=True)
    assert out.logits.shape == out.aux.shape == (1, 19, size, size + 2)
    # width: stem conv /2 (floor), ceil-mode max-pool, layer2 conv /2; 771 -> 386 -> 194 (not 193) -> 97
    half = (size + 2 - 1) // 2 + 1
    w4 = math.ceil((half - 1) / 2) + 1
    w8 = (w4 - 1) // 2 + 1
    assert (half, w4, w8) == {769: (386, 194, 97), 505: (254, 128, 64), 513: (258, 130, 65)}[size]
    assert [tuple(f.shape[-2:]) for f in out.features] == [(quarter, w4)] + [(eighth, w8)] * 3
    assert out.native_logits.shape == (1, 19, quarter, w4) and out.proj.shape == (1, 16, quarter, w4)


@pytest.mark.parametrize("size, quarter, sixteenth", [(769, 193, 49), (505, 127, 32), (513, 129, 33)])
def test_eln_output_shapes_at_odd_sizes_and_the_eln_on_the_same_quarter_grid(size, quarter, sixteenth):
    seg = ELNSegNet(19, encoder="resnet50").to("meta").eval()
    x = torch.empty(2, 3, size, size, device="meta")
    out = seg.forward_all(x, proj=True, keep_features=True)
    assert out.logits.shape == (2, 19, size, size)
    assert tuple(out.features[0].shape[-2:]) == (quarter, quarter)
    assert tuple(out.features[1].shape[-2:]) == (sixteenth, sixteenth)
    assert out.native_logits.shape == (2, 19, quarter, quarter) and out.proj.shape == (2, 128, quarter, quarter)
    eln = ReferenceELN(19, encoder_weights=None).to("meta").eval()
    x_eln = torch.empty(2, 3 + 1 + 19, size, size, device="meta")  # [image, entropy, logits] (eln_inputs)
    assert eln.forward_inputs(x_eln, native=True).shape == (2, 1, quarter, quarter)   # the teacher's grid
    assert eln.forward_inputs(x_eln).shape == (2, 1, size, size)


def test_ael_forward_backward_on_cpu_with_aux_and_any_size():
    torch.manual_seed(0)
    net = AELNet(5, encoder="resnet50s").train()
    x = torch.randn(2, 3, 37, 45)
    out = net.forward_all(x, aux=True)
    assert out.logits.shape == out.aux.shape == (2, 5, 37, 45)
    (out.logits.square().mean() + out.aux.square().mean()).backward()
    groups = net.param_groups()
    assert all(p.grad is not None for p in groups["backbone"] + groups["head"])
    assert len(groups["backbone"]) == len(list(net.encoder.parameters()))
    net.eval()
    with torch.no_grad():  # eval: deterministic; forward == forward_all().logits
        torch.testing.assert_close(net(x), net.forward_all(x).logits)


def test_eln_upsampling_is_align_corners_from_the_native_logits(eln50):
    eln50.eval()
    x = torch.randn(1, 3, 41, 50)
    with torch.no_grad():
        out = eln50.forward_all(x, keep_features=True)
    up = torch.nn.functional.interpolate(out.native_logits, size=(41, 50), mode="bilinear", align_corners=True)
    torch.testing.assert_close(out.logits, up)
    # corners of an align_corners upsampling are the native corner values
    torch.testing.assert_close(out.logits[..., 0, 0], out.native_logits[..., 0, 0])
    torch.testing.assert_close(out.logits[..., -1, -1], out.native_logits[..., -1, -1])


# ----------------------------------------------------------------------------------------- weights
def official_deep_stem_state(depths=(3, 4, 23, 3), seed=0) -> dict[str, torch.Tensor]:
    """A ResNet state dict in the SemiSeg-AEL / U2PL ``resnet101.pth`` layout, built from the official
    ``ResNet.__init__`` / ``_make_layer`` rules (inplanes 128 after the deep stem) + the ImageNet fc."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name, o, i, k):
        state[f"{name}.weight"] = torch.randn(o, i, k, k, generator=g)

    def bn(name, c):
        for k in ("weight", "bias", "running_mean"):
            state[f"{name}.{k}"] = torch.randn(c, generator=g)
        state[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5
        state[f"{name}.num_batches_tracked"] = torch.tensor(7)

    conv("conv1.0", 64, 3, 3), bn("conv1.1", 64), conv("conv1.3", 64, 64, 3), bn("conv1.4", 64)
    conv("conv1.6", 128, 64, 3), bn("bn1", 128)
    inplanes = 128
    for li, (planes, n) in enumerate(zip((64, 128, 256, 512), depths), start=1):
        for b in range(n):
            p, cin = f"layer{li}.{b}", inplanes if b == 0 else planes * 4
            conv(f"{p}.conv1", planes, cin, 1), bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3), bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", planes * 4, planes, 1), bn(f"{p}.bn3", planes * 4)
            if b == 0:
                conv(f"{p}.downsample.0", planes * 4, cin, 1), bn(f"{p}.downsample.1", planes * 4)
        inplanes = planes * 4
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 2048, generator=g), torch.zeros(1000)
    return state


def test_ael_loads_an_official_layout_resnet101_file_strictly(tmp_path):
    state = official_deep_stem_state()
    del state["layer2.1.bn1.num_batches_tracked"]  # old files lack these counters: tolerated
    path = tmp_path / "resnet101.pth"
    torch.save(state, path)
    net = AELNet(19, encoder="resnet101s", encoder_weights=str(path))
    own = net.encoder.state_dict()
    assert set(own) == {k for k in state if not k.startswith("fc.")} | {"layer2.1.bn1.num_batches_tracked"}
    for k, v in own.items():
        if k in state:
            torch.testing.assert_close(v, state[k], msg=k)


def test_ael_weights_file_with_missing_and_unexpected_keys_lists_them(tmp_path):
    state = official_deep_stem_state(depths=(3, 4, 6, 3))
    del state["layer3.5.bn2.running_var"], state["layer1.0.downsample.0.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "r50.pth")
    with pytest.raises(CheckpointMismatchError) as err:
        AELNet(19, encoder="resnet50s", encoder_weights=str(tmp_path / "r50.pth"))
    msg = str(err.value)
    assert "2 missing keys [layer1.0.downsample.0.weight, layer3.5.bn2.running_var]" in msg, msg
    assert "1 unexpected keys [layer5.0.conv1.weight]" in msg and "r50.pth" in msg, msg


def test_ael_refuses_a_torchvision_7x7_stem_file_and_says_why(tmp_path):
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "resnet50-19c8e357.pth")
    with pytest.raises(CheckpointMismatchError, match=r"7x7-stem ResNet .*conv1.weight \[64, 3, 7, 7\].*deep stem"):
        AELNet(19, encoder="resnet50s", encoder_weights=str(tmp_path / "resnet50-19c8e357.pth"))
    mm = {"stem.0.conv.weight": torch.zeros(32, 3, 3, 3), "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}
    torch.save(mm, tmp_path / "mmseg.pth")
    with pytest.raises(CheckpointMismatchError, match="mmseg ResNetV1c"):
        AELNet(19, encoder="resnet50s", encoder_weights=str(tmp_path / "mmseg.pth"))


def test_eln_segnet_loads_a_torchvision_file_and_refuses_a_deep_stem_one(tmp_path):
    torch.manual_seed(1)
    state = torchvision.models.resnet50().state_dict()  # the official ELN loads the torchvision files
    torch.save(state, tmp_path / "resnet50.pth")
    net = build_segmentation_net(_model_cfg("deeplabv3plus_eln", "resnet50", str(tmp_path / "resnet50.pth")), 19)
    own = net.encoder.state_dict()
    assert set(own) == {k for k in state if not k.startswith("fc.")}
    for k, v in own.items():
        torch.testing.assert_close(v, state[k], msg=k)
    torch.save(official_deep_stem_state(depths=(3, 4, 6, 3)), tmp_path / "deep.pth")
    with pytest.raises(CheckpointMismatchError, match="deep-stem ResNet .* torchvision 7x7 stem"):
        ELNSegNet(19, encoder="resnet50", encoder_weights=str(tmp_path / "deep.pth"))


@pytest.mark.parametrize("random_shortcuts", [False, True])
def test_reference_eln_loads_resnet34_then_replaces_the_stem(tmp_path, random_shortcuts):
    g = torch.Generator().manual_seed(2)
    state = {k: (torch.rand(v.shape, generator=g) + 0.5 if v.is_floating_point() else v)
             for k, v in torchvision.models.resnet34().state_dict().items()}
    torch.save(state, tmp_path / "resnet34-333f7ec4.pth")
    net = ReferenceELN(19, encoder_weights=str(tmp_path / "resnet34-333f7ec4.pth"),
                       random_shortcuts=random_shortcuts)
    own = net.encoder.state_dict()
    assert own["conv1.weight"].shape == (64, 23, 7, 7)  # fresh stem over 3 + 1 + 19 channels
    shortcut = sorted(k for k in own if ".downsample." in k and not k.endswith("num_batches_tracked"))
    assert len(shortcut) == 3 * 5  # layer2/3/4 .0: conv weight + BN weight/bias/mean/var
    for k, v in own.items():
        if k == "conv1.weight" or k.endswith("num_batches_tracked"):
            continue
        loaded = not (random_shortcuts and k in shortcut)
        assert torch.equal(v, state[k]) is loaded, k


def _model_cfg(arch: str, encoder: str, weights: str | None = None, **extra):
    from omegaconf import OmegaConf

    from semiseg_lit.config import ModelConfig

    cfg = OmegaConf.structured(ModelConfig(arch=arch, encoder=encoder, encoder_weights=weights))
    defaults = {"deeplabv3plus_ael": dict(output_stride=8, aux_head=True, atrous_rates=[12, 24, 36]),
                "deeplabv3plus_eln": dict(output_stride=16, projection_dim=128, atrous_rates=[6, 12, 18])}[arch]
    for k, v in {**defaults, **extra}.items():
        cfg[k] = v
    return cfg


@pytest.mark.parametrize("arch, extra, match", [
    ("deeplabv3plus_ael", {"output_stride": 16}, "output-stride-8"),
    ("deeplabv3plus_ael", {"aspp_separable": True}, "not separable"),
    ("deeplabv3plus_eln", {"aux_head": True}, "no auxiliary FCN head"),
    ("deeplabv3plus_eln", {"decoder_channels": 128}, "256-channel"),
    ("deeplabv3plus_unet", {}, "expected deeplabv3plus"),
])
def test_reference_arch_options_that_do_not_exist_are_refused(arch, extra, match):
    base = "deeplabv3plus_ael" if arch.endswith("unet") else arch
    cfg = _model_cfg(base, "resnet50s" if base.endswith("ael") else "resnet50", **extra)
    cfg.arch = arch
    with pytest.raises(ValueError, match=match):
        build_segmentation_net(cfg, 19)


def test_wrong_encoder_names_say_which_trunks_exist():
    with pytest.raises(ValueError, match="resnet101s"):
        AELNet(19, encoder="resnet101")
    with pytest.raises(ValueError, match="resnet50 | resnet101"):
        ELNSegNet(19, encoder="resnet101s")
    with pytest.raises(ValueError, match="resnet34"):
        ReferenceELN(19, encoder="resnet50", encoder_weights=None)


def test_traced_reference_net_keeps_dynamic_sizes_for_export():
    from semiseg_lit.tasks.export import ExportableNet

    torch.manual_seed(0)
    net = AELNet(3, encoder="resnet50s").eval()
    wrapped = ExportableNet(net).eval()
    with torch.no_grad():
        traced = torch.jit.trace(wrapped, torch.randn(1, 3, 33, 41), check_trace=False)
        x = torch.randn(2, 3, 45, 27)  # another batch and size than the example
        torch.testing.assert_close(traced(x), net(x), atol=1e-4, rtol=1e-4)


def test_unknown_weight_names_are_refused_not_silently_random():
    with pytest.raises(ValueError, match="model.encoder_weights='imagnet'"):
        AELNet(19, encoder="resnet50s", encoder_weights="imagnet")
    with pytest.raises(ValueError, match="method.eln.encoder_weights='ssl'"):
        ReferenceELN(19, encoder_weights="ssl")
    with pytest.raises(FileNotFoundError, match="missing/r50.pth"):
        ELNSegNet(19, encoder="resnet50", encoder_weights="/missing/r50.pth")
