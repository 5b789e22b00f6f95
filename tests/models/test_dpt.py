"""DINOv2 + DPT network (models/dpt.py): patch-14 geometry, outputs the methods read, weights, freezing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from semiseg_lit.errors import RunFailure, UserError
from semiseg_lit.models.deeplab import CheckpointMismatchError, build_segmentation_net
from semiseg_lit.models.dpt import (
    DPTSegNet,
    check_training_crop,
    dinov2_to_timm,
    quarter_grid_resample,
    vit_patch_size,
)
from semiseg_lit.ops.sliding_window import sliding_window_inference

TINY_VIT = {"embed_dim": 48, "depth": 4, "num_heads": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_net(num_classes: int = 5, **kwargs) -> DPTSegNet:
    torch.manual_seed(0)
    args = dict(encoder_kwargs=dict(TINY_VIT), intermediate_channels=(8, 16, 24, 32), decoder_channels=16,
                aux_head=True, aux_channels=8, projection_dim=8)
    args.update(kwargs)
    return DPTSegNet(num_classes, **args)


# ----------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("hw", [(518, 518), (56, 56), (70, 42), (50, 61)])
def test_outputs_at_input_and_quarter_resolution(hw):
    net = tiny_net().eval()
    h, w = hw
    out = net.forward_all(torch.randn(1, 3, h, w), aux=True, proj=True, keep_features=True)
    q = (math.ceil(h / 4), math.ceil(w / 4))
    assert out.logits.shape == (1, 5, h, w) and out.aux.shape == (1, 5, h, w)
    assert out.proj.shape == (1, 8, *q)
    assert out.decoder_features.shape == (1, 16, *q) and out.native_logits.shape == (1, 5, *q)
    # the encoder saw the input padded to whole patches: ceil(side / 14) patches per side
    assert [tuple(f.shape) for f in out.features] == [(1, 48, math.ceil(h / 14), math.ceil(w / 14))] * 4
    assert net.size_divisor == 14


def test_padding_to_the_patch_size_is_zero_bottom_right_and_cropped_back():
    net = tiny_net().eval()
    x = torch.randn(2, 3, 50, 61)
    with torch.no_grad():
        got = net(x)
        padded = net(F.pad(x, (0, 70 - 61, 0, 56 - 50)))   # 56 x 70 = 4 x 5 patches
    assert got.shape == (2, 5, 50, 61)
    torch.testing.assert_close(got, padded[..., :50, :61])


def test_position_embeddings_follow_the_input_size():
    net = tiny_net().eval()
    assert net.encoder.model.pos_embed.shape[1] == 37 * 37 + 1   # built for 518, used at any grid
    with torch.no_grad():
        a = net.forward_all(torch.randn(1, 3, 42, 70), keep_features=True)   # 3 x 5 patches
        b = net.forward_all(torch.randn(1, 3, 98, 28), keep_features=True)   # 7 x 2 patches
    assert a.features[0].shape[-2:] == (3, 5) and b.features[0].shape[-2:] == (7, 2)


def test_smp_dpt_alone_cannot_run_patch14_which_is_why_the_decoder_is_rebuilt():
    import segmentation_models_pytorch as smp

    m = smp.DPT("tu-vit_small_patch14_dinov2", encoder_weights=None, classes=2, dynamic_img_size=True,
                decoder_intermediate_channels=(8, 8, 8, 8), decoder_fusion_channels=8).eval()
    with pytest.raises(RuntimeError), torch.no_grad():
        m(torch.randn(1, 3, 56, 56))


def test_quarter_grid_resample_is_the_pixel_area_geometry():
    # z cell j of a 14-pixel patch grid covers pixels [1.75 j, 1.75 (j+1)): give it its centre coordinate;
    # a 1/4 cell i covers [4i, 4i+4), so the resampled value must be its centre 4i + 2
    for patch, p, h in ((14, 4, 56), (14, 37, 518), (14, 5, 61), (16, 3, 48)):
        s = patch / 8
        z = ((torch.arange(8 * p) + 0.5) * s).view(1, 1, -1, 1).expand(1, 1, -1, 8 * p)
        out = quarter_grid_resample(z.contiguous(), patch, h, h)
        q = math.ceil(h / 4)
        assert out.shape == (1, 1, q, q)
        centre = 4 * torch.arange(q) + 2.0
        inside = centre <= (8 * p - 0.5) * s            # cells whose centre lies before the last z centre
        torch.testing.assert_close(out[0, 0, :, 0][inside], centre[inside])
        assert torch.all(out[0, 0, :, 0][~inside] == z[0, 0, -1, 0])   # beyond: the edge cell


def test_sliding_window_with_518_crops():
    net = tiny_net(3, aux_head=False, projection_dim=None).eval()
    images = torch.randn(1, 3, 530, 600)
    with torch.no_grad():
        probs = sliding_window_inference(net, images, 3, crop=518, batch_windows=4)   # 2 x 2 windows
        whole = net(images[..., :518, :518]).softmax(1)
    assert probs.shape == (1, 3, 530, 600)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 530, 600))
    # windows start at rows [0, 12] and columns [0, 82]: the corner [:12, :82] is the first window's alone
    torch.testing.assert_close(probs[..., :12, :82], whole[..., :12, :82])


# ----------------------------------------------------------------------------------------- heads
def test_aux_head_reads_the_third_tap_and_feature_transform_feeds_the_decoder():
    net = tiny_net().eval()
    assert net.aux_head[0].in_channels == 48
    x = torch.randn(1, 3, 56, 56)
    seen = []

    def zero_last(features):
        seen.append([tuple(f.shape) for f in features])
        return [*features[:3], torch.zeros_like(features[3])]

    def zero_third(features):
        return [*features[:2], torch.zeros_like(features[2]), features[3]]

    with torch.no_grad():
        ref = net.forward_all(x, aux=True, keep_features=True)
        same = net.forward_all(x, aux=True, feature_transform=lambda f: f)
        last = net.forward_all(x, aux=True, keep_features=True, feature_transform=zero_last)
        third = net.forward_all(x, aux=True, feature_transform=zero_third)
    assert seen == [[(1, 48, 4, 4)] * 4]
    torch.testing.assert_close(same.logits, ref.logits)
    assert not torch.allclose(last.logits, ref.logits)          # the decoder sees the transformed maps
    torch.testing.assert_close(last.aux, ref.aux)               # the aux head does not read block 4 ...
    assert not torch.allclose(third.aux, ref.aux)               # ... but block 3
    assert torch.count_nonzero(last.features[3]) == 0           # SegOutput.features are what was decoded


def test_param_groups_split_encoder_and_heads():
    net = tiny_net()
    g = net.param_groups()
    assert {id(p) for p in g["backbone"]} == {id(p) for p in net.encoder.parameters()}
    assert len(g["backbone"]) + len(g["head"]) == len(list(net.parameters()))
    assert {id(p) for p in g["head"]} >= {id(p) for p in net.aux_head.parameters()}


@pytest.mark.parametrize("norm", [True, False])
def test_every_trainable_parameter_gets_a_gradient(norm):
    # 6 blocks tapped at 0..3: blocks 4, 5 (and the final norm without normalised taps) are never reached
    net = tiny_net(encoder_kwargs=dict(TINY_VIT, depth=6), encoder_output_indices=[0, 1, 2, 3], norm_features=norm)
    vit = net.encoder.model
    assert not any(p.requires_grad for p in vit.blocks[4:].parameters())
    assert all(p.requires_grad for p in vit.norm.parameters()) == norm
    out = net.forward_all(torch.randn(2, 3, 28, 42), aux=True, proj=True)
    (out.logits.mean() + out.aux.mean() + out.proj.mean()).backward()
    assert [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None] == []
    assert {id(p) for g in net.param_groups().values() for p in g} == {
        id(p) for p in net.parameters() if p.requires_grad}


def test_freeze_encoder_keeps_it_fixed_in_eval_mode():
    net = tiny_net(freeze_encoder=True, encoder_kwargs=dict(TINY_VIT, drop_path_rate=0.5)).train()
    assert net.param_groups()["backbone"] == []
    assert all(not p.requires_grad for p in net.encoder.parameters())
    assert not net.encoder.training and net.decoder.training
    x = torch.randn(2, 3, 42, 42)
    out = net.forward_all(x, aux=True)
    (out.logits.mean() + out.aux.mean()).backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert net.segmentation_head[0].weight.grad is not None
    with torch.no_grad():   # drop-path off: the encoder is a fixed function
        f1, _ = net.encoder(x)
        f2, _ = net.encoder(x)
    torch.testing.assert_close(f1[0], f2[0])


def test_aux_decoder_for_eln_is_a_fresh_dpt_head():
    net = tiny_net().eval()
    dec = net.build_aux_decoder()
    out = net.forward_all(torch.randn(2, 3, 50, 61), keep_features=True)
    z = dec(out.features, (50, 61))
    assert z.shape == (2, 5, 50, 61)
    z.mean().backward()
    assert all(p.grad is None for p in net.encoder.parameters())   # detached features


# ----------------------------------------------------------------------------------------- weights
def official_layout(vit) -> dict[str, torch.Tensor]:
    """A timm ViT's weights in the facebookresearch DINOv2 layout (same names + mask_token)."""
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    state["mask_token"] = torch.zeros(1, vit.embed_dim)
    return state


def test_local_weights_official_and_timm_layout(tmp_path):
    src = tiny_net()
    vit = src.encoder.model
    assert vit.state_dict()["pos_embed"].shape == (1, 1370, 48)
    official, timm_file = tmp_path / "dinov2_tiny_pretrain.pth", tmp_path / "timm_tiny.pth"
    torch.save(official_layout(vit), official)
    torch.save(vit.state_dict(), timm_file)
    for path in (official, timm_file):
        torch.manual_seed(123)   # another random init before loading
        net = DPTSegNet(5, encoder_weights=str(path), encoder_kwargs=dict(TINY_VIT))
        for k, v in vit.state_dict().items():
            assert torch.equal(net.encoder.model.state_dict()[k], v), k


def test_mismatched_or_missing_weights_are_refused_naming_the_file(tmp_path):
    other = tmp_path / "wider.pth"
    torch.save(official_layout(tiny_net(encoder_kwargs=dict(TINY_VIT, embed_dim=64)).encoder.model), other)
    with pytest.raises(CheckpointMismatchError, match="wider.pth"):
        DPTSegNet(5, encoder_weights=str(other), encoder_kwargs=dict(TINY_VIT))
    extra = tmp_path / "extra.pth"
    state = official_layout(tiny_net().encoder.model)
    state["blocks.9.norm1.weight"] = torch.ones(48)
    torch.save(state, extra)
    with pytest.raises(CheckpointMismatchError, match=r"extra.pth.*blocks\.9\.norm1\.weight"):
        DPTSegNet(5, encoder_weights=str(extra), encoder_kwargs=dict(TINY_VIT))
    small = tmp_path / "img224.pth"   # position embedding of another image size: the message says so
    torch.save(tiny_net(encoder_kwargs=dict(TINY_VIT, img_size=224)).encoder.model.state_dict(), small)
    with pytest.raises(CheckpointMismatchError, match="img224.pth.*img_size"):
        DPTSegNet(5, encoder_weights=str(small), encoder_kwargs=dict(TINY_VIT))
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        DPTSegNet(5, encoder_weights=str(tmp_path / "absent.pth"), encoder_kwargs=dict(TINY_VIT))


def test_dinov2_register_and_swiglu_keys_are_converted():
    pos = torch.arange(5 * 3, dtype=torch.float32).view(1, 5, 3)
    state = {"module.cls_token": torch.ones(1, 1, 3), "module.pos_embed": pos, "module.mask_token": torch.zeros(1, 3),
             "module.register_tokens": torch.full((1, 4, 3), 2.0), "module.blocks.0.mlp.w12.weight": torch.ones(2),
             "module.blocks.0.mlp.w3.bias": torch.ones(1)}
    out = dinov2_to_timm(state)
    assert set(out) == {"cls_token", "pos_embed", "reg_token", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.bias"}
    torch.testing.assert_close(out["cls_token"], 1.0 + pos[:, :1])
    torch.testing.assert_close(out["pos_embed"], pos[:, 1:])


def test_hub_weights_offline_and_unknown_tags_give_one_message(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RunFailure, match="encoder_weights='imagenet'.*dinov2_vits14_pretrain.pth"):
        DPTSegNet(3, encoder="tu-vit_small_patch14_dinov2", encoder_weights="imagenet")
    with pytest.raises(ValueError, match="lvd142m"):   # the known tags are listed
        DPTSegNet(3, encoder_weights="no_such_tag", encoder_kwargs=dict(TINY_VIT))
    with pytest.raises(ValueError, match="not a timm model"):
        DPTSegNet(3, encoder="tu-not_a_vit", encoder_weights=None)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="encoder_output_indices"):
        tiny_net(encoder_output_indices=[0, 1, 2, 7])
    with pytest.raises(ValueError, match="dpt_readout"):
        tiny_net(readout="concat")
    with pytest.raises(ValueError, match="needs a timm ViT"):
        DPTSegNet(3, encoder="resnet18", encoder_kwargs=dict(TINY_VIT))


def test_readout_cat_uses_the_class_token():
    net = tiny_net(readout="cat").eval()
    assert net.decoder.projection_blocks[0].project[0].in_features == 96
    with torch.no_grad():
        assert net(torch.randn(1, 3, 42, 56)).shape == (1, 5, 42, 56)


# ----------------------------------------------------------------------------------------- config
def test_model_configs_build_the_dpt(compose_cfg):
    for name, encoder, fusion in (("dpt_dinov2_s", "tu-vit_small_patch14_dinov2", 64),
                                  ("dpt_dinov2_b", "tu-vit_base_patch14_dinov2", 128)):
        cfg = compose_cfg([f"model={name}"])
        assert cfg.model.arch == "dpt" and cfg.model.encoder == encoder and cfg.model.decoder_channels == fusion
        assert cfg.model.encoder_weights == "imagenet" and cfg.model.freeze_encoder is False
    cfg = compose_cfg(["model=dpt_dinov2_s", "model.encoder_weights=null",
                       "model.encoder_kwargs={embed_dim: 48, depth: 4, num_heads: 2}", "model.freeze_encoder=true",
                       "model.dpt_intermediate_channels=[8,16,24,32]", "model.decoder_channels=16"])
    net = build_segmentation_net(cfg.model, 4)
    assert isinstance(net, DPTSegNet) and net.encoder.embed_dim == 48 and net.freeze_encoder
    assert net.encoder.output_indices == [0, 1, 2, 3]


def test_training_crop_must_be_whole_patches(compose_cfg):
    cfg = compose_cfg(["model=dpt_dinov2_s"])
    assert vit_patch_size(cfg.model.encoder) == 14
    check_training_crop(cfg.model, (518, 798))
    with pytest.raises(UserError, match=r"data.crop_size=\[512, 518\].*\[504, 518\]"):
        check_training_crop(cfg.model, (512, 518))


@pytest.mark.slow
def test_channels_last_and_compiled_dpt_match_eager():
    from semiseg_lit.models.compile import compile_networks, compile_problem, to_channels_last

    if compile_problem(torch.device("cpu"), "aot_eager") is not None:
        pytest.skip("torch.compile unavailable here")
    net = tiny_net().eval()
    x = torch.randn(2, 3, 56, 70)
    with torch.no_grad():
        ref = net(x)
        to_channels_last(net)
        torch.testing.assert_close(net(x), ref, atol=1e-5, rtol=1e-4)
        assert compile_networks(net, backend="aot_eager") == 2   # the ViT encoder and the DPT decoder
        torch.testing.assert_close(net(x), ref, atol=1e-5, rtol=1e-4)


def test_vit_keys_are_refused_for_other_networks_and_kwargs_must_be_a_mapping(compose_cfg):
    cfg = compose_cfg(["model=deeplabv3plus", "model.freeze_encoder=true", "model.encoder_output_indices=[0,1,2,3]"])
    with pytest.raises(ValueError, match="model.freeze_encoder, model.encoder_output_indices: only model.arch=dpt"):
        build_segmentation_net(cfg.model, 3)
    build_segmentation_net(compose_cfg(["model=deeplabv3plus"]).model, 3)   # the defaults pass
    with pytest.raises(ValueError, match="model.encoder_kwargs=5: expected a mapping"):
        build_segmentation_net(compose_cfg(["model=dpt_dinov2_s", "model.encoder_kwargs=5"]).model, 3)
