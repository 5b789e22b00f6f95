import pytest
import torch

from semiseg_lit.models.deeplab import CheckpointMismatchError, SegmentationNet


@pytest.mark.parametrize("os_", [8, 16])
def test_output_shapes_for_any_input_size(os_):
    net = SegmentationNet(5, encoder="resnet18", output_stride=os_, decoder_channels=32, aux_head=True,
                          aux_channels=16, projection_dim=8).eval()
    x = torch.randn(2, 3, 50, 70)  # not a multiple of 32: padded internally
    out = net.forward_all(x, aux=True, proj=True)
    assert out.logits.shape == (2, 5, 50, 70)
    assert out.aux.shape == (2, 5, 50, 70)
    assert out.proj.shape == (2, 8, 13, 18)
    assert net(x).shape == (2, 5, 50, 70)


def test_aux_head_sits_on_stride16_features():
    net = SegmentationNet(3, encoder="resnet18", decoder_channels=32, aux_head=True, aux_channels=16)
    assert net.aux_head[0].in_channels == net.encoder.out_channels[-2] == 256


def test_param_groups_split_backbone_and_heads():
    net = SegmentationNet(3, encoder="resnet18", decoder_channels=32, aux_head=True, aux_channels=16)
    g = net.param_groups()
    n_all = sum(p.numel() for p in net.parameters())
    assert sum(p.numel() for p in g["backbone"]) + sum(p.numel() for p in g["head"]) == n_all
    assert {id(p) for p in g["backbone"]} == {id(p) for p in net.encoder.parameters()}


def test_output_stride_validated():
    with pytest.raises(ValueError, match="output_stride"):
        SegmentationNet(3, encoder="resnet18", output_stride=4)


def test_unknown_encoder_named():
    with pytest.raises(ValueError, match="not_an_encoder"):
        SegmentationNet(3, encoder="not_an_encoder")


def test_local_encoder_weights(tmp_path):
    src = SegmentationNet(3, encoder="resnet18", decoder_channels=32)
    path = tmp_path / "enc.pth"
    torch.save(src.encoder.state_dict(), path)
    net = SegmentationNet(3, encoder="resnet18", decoder_channels=32, encoder_weights=str(path))
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(v, net.encoder.state_dict()[k])
    # weights of another encoder are refused with the file name
    other = tmp_path / "other.pth"
    torch.save(SegmentationNet(3, encoder="resnet34", decoder_channels=32).encoder.state_dict(), other)
    with pytest.raises(CheckpointMismatchError, match="other.pth"):
        SegmentationNet(3, encoder="resnet18", decoder_channels=32, encoder_weights=str(other))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        SegmentationNet(3, encoder="resnet18", encoder_weights=str(tmp_path / "missing.pth"))
