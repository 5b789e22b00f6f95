"""Tests of evaluation-time inference (specs/ael.md §8, specs/eln.md §6)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semiseg_lit.ops.sliding_window import (
    center_crop,
    default_stride,
    multi_scale_inference,
    pad_bottom_right,
    sliding_window_inference,
    whole_image_inference,
    window_starts,
)


def _pointwise_model(num_classes: int = 4, seed: int = 0) -> nn.Module:
    """A 1x1 conv: no spatial context, so every window sees the same per-pixel function."""
    gen = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(3, num_classes, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen))
    return conv.eval()


class _Recorder:
    """Wraps a model and records the shapes (and inputs) it was called with."""

    def __init__(self, model):
        self.model, self.shapes, self.inputs = model, [], []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        self.inputs.append(x.clone())
        return self.model(x)


def _images(b=2, h=10, w=13, seed=1) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- window_starts / default_stride
def test_window_starts_hand_examples():
    # 1024: n = ceil((1024-769)/513)+1 = ceil(0.497)+1 = 2; starts min(0,255)=0, min(513,255)=255
    assert window_starts(1024, 769, 513) == [0, 255]
    # 2048: n = ceil(1279/513)+1 = 3+1 = 4; starts 0, 513, 1026, min(1539, 1279)=1279
    assert window_starts(2048, 769, 513) == [0, 513, 1026, 1279]


def test_window_starts_single_window_and_exact_fit():
    assert window_starts(500, 769, 513) == [0]
    assert window_starts(769, 769, 513) == [0]
    # (10-4)/3 = 2 exactly -> n = 3, last start 6 = 10-4 (no duplicate window)
    assert window_starts(10, 4, 3) == [0, 3, 6]


@pytest.mark.parametrize("args", [(0, 4, 2), (10, 0, 2), (10, 4, 0), (10, 4.0, 2)])
def test_window_starts_rejects_bad_input(args):
    with pytest.raises(ValueError, match="expected a positive int"):
        window_starts(*args)


def test_default_stride():
    assert default_stride(769) == 513  # ceil(1538/3) = ceil(512.67)
    assert default_stride(513) == 342  # 1026/3 = 342 exactly
    assert default_stride(4) == 3  # ceil(8/3)
    with pytest.raises(ValueError, match="crop"):
        default_stride(0)


def test_pad_bottom_right():
    x = torch.ones(1, 1, 2, 3)
    out = pad_bottom_right(x, 4, 2, value=-1.0)
    assert out.shape == (1, 1, 4, 3)
    assert torch.equal(out[..., :2, :], x) and (out[..., 2:, :] == -1).all()
    assert pad_bottom_right(x, 1, 1) is x


# ---------------------------------------------------------------- sliding window
@pytest.mark.parametrize("crop,stride", [(6, 4), ((7, 5), (3, 2)), (6, None)])
def test_sliding_equals_whole_for_pointwise_model(crop, stride):
    model, images = _pointwise_model(), _images()
    with torch.no_grad():
        slid = sliding_window_inference(model, images, 4, crop=crop, stride=stride, batch_windows=3)
        whole = whole_image_inference(model, images, 4)
    assert slid.shape == (2, 4, 10, 13)
    torch.testing.assert_close(slid, whole, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(whole, model(images).softmax(1))


def test_sliding_batches_windows_and_crops():
    model, images = _Recorder(_pointwise_model()), _images()
    # ys = window_starts(10,6,4) = [0,4]; xs = window_starts(13,6,4) = [0,4,7] -> 6 windows, 3 per call
    with torch.no_grad():
        out3 = sliding_window_inference(model, images, 4, crop=6, stride=4, batch_windows=3)
        assert model.shapes == [(6, 3, 6, 6), (6, 3, 6, 6)]  # 3 windows x B=2 per call
        out1 = sliding_window_inference(model, images, 4, crop=6, stride=4, batch_windows=1)
    assert len(model.shapes) == 2 + 6
    torch.testing.assert_close(out3, out1)
    # first crop of the second call is window (y=4, x=0) of image 0
    assert torch.equal(model.inputs[1][0], images[0, :, 4:10, 0:6])


def test_sliding_overlap_count_hand_example():
    # Image row of width 10, crop (4,6), stride (4,3): xs = window_starts(10,6,3) = [0,3,4] (n=ceil(4/3)+1=3).
    # The model answers class k (one-hot, logit 100) for the window starting at x = xs[k]; it reads the
    # start from channel 0, which holds the column index. Coverage: w0 = x 0..5, w1 = x 3..8, w2 = x 4..9.
    #   x:        0  1  2   3    4    5    6   7   8   9
    #   windows: {0}{0}{0}{0,1}{0,1,2}{0,1,2}{1,2}{1,2}{1,2}{2}
    # probs = fraction of covering windows of each class.
    cols = torch.arange(10.0).expand(1, 1, 4, 10)
    images = torch.cat([cols, torch.zeros(1, 2, 4, 10)], dim=1)

    def model(x):
        left = x[:, 0, 0, 0]
        cls = (left == 3).long() + 2 * (left == 4).long()
        return 100.0 * F.one_hot(cls, 3).float()[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])

    out = sliding_window_inference(model, images, 3, crop=(4, 6), stride=(4, 3), batch_windows=2)
    t = 1 / 3
    expected = torch.tensor([
        [1, 1, 1, .5, t, t, 0, 0, 0, 0],
        [0, 0, 0, .5, t, t, .5, .5, .5, 0],
        [0, 0, 0, 0, t, t, .5, .5, .5, 1],
    ])
    torch.testing.assert_close(out[0, :, 0], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out[0, :, 3], expected, atol=1e-6, rtol=0)


def test_sliding_constant_probs_are_preserved_under_overlap():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])

    def model(x):  # logits log(p): softmax gives back p exactly, at 1/4 resolution
        return probs.log()[None, :, None, None].expand(x.shape[0], -1, x.shape[2] // 4, x.shape[3] // 4)

    out = sliding_window_inference(model, _images(h=20, w=27), 4, crop=8, stride=3)
    assert out.shape == (2, 4, 20, 27)
    torch.testing.assert_close(out, probs[None, :, None, None].expand_as(out), atol=1e-6, rtol=0)


def test_sliding_pads_when_image_smaller_than_crop():
    model, images = _Recorder(_pointwise_model()), _images(b=1, h=5, w=7)
    with torch.no_grad():
        out = sliding_window_inference(model, images, 4, crop=8, stride=6)
        assert model.shapes == [(1, 3, 8, 8)]  # one padded window
        padded = model.inputs[0]
        assert torch.equal(padded[:, :, :5, :7], images)
        assert (padded[:, :, 5:] == 0).all() and (padded[:, :, :, 7:] == 0).all()
        assert out.shape == (1, 4, 5, 7)
        torch.testing.assert_close(out, model.model(images).softmax(1))


def test_sliding_upsamples_low_resolution_logits():
    conv = _pointwise_model()

    def model(x):  # logits at 1/2 resolution
        return F.avg_pool2d(conv(x), 2)

    images = _images(h=8, w=8)
    with torch.no_grad():
        out = sliding_window_inference(model, images, 4, crop=8, stride=4)  # a single window
        expected = F.interpolate(model(images), size=(8, 8), mode="bilinear", align_corners=False).softmax(1)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(whole_image_inference(model, images, 4), expected)


def test_sliding_rejects_bad_input():
    model = _pointwise_model()
    with pytest.raises(ValueError, match="model output"):
        sliding_window_inference(model, _images(), 5, crop=6, stride=4)
    with pytest.raises(ValueError, match=r"\[B,C,H,W\]"):
        sliding_window_inference(model, torch.zeros(3, 8, 8), 4, crop=6, stride=4)
    with pytest.raises(ValueError, match="crop"):
        sliding_window_inference(model, _images(), 4, crop=(6, 0), stride=4)
    with pytest.raises(ValueError, match="batch_windows"):
        sliding_window_inference(model, _images(), 4, crop=6, stride=4, batch_windows=0)


# ---------------------------------------------------------------- whole image
@pytest.mark.parametrize("pad_to,divisor,shape", [
    (None, None, (10, 13)),
    (16, None, (16, 16)),
    ((12, 10), None, (12, 13)),  # never smaller than the image
    (None, 8, (16, 16)),  # ceil(10/8)*8, ceil(13/8)*8
    (17, 8, (24, 24)),  # max(10,17)=17 -> 24
])
def test_whole_image_padding(pad_to, divisor, shape):
    model, images = _Recorder(_pointwise_model()), _images()
    with torch.no_grad():
        out = whole_image_inference(model, images, 4, pad_to=pad_to, size_divisor=divisor)
    assert model.shapes == [(2, 3, *shape)]
    seen = model.inputs[0]
    assert torch.equal(seen[:, :, :10, :13], images)
    assert seen[:, :, 10:].abs().sum() == 0 and seen[:, :, :, 13:].abs().sum() == 0
    assert out.shape == (2, 4, 10, 13)
    torch.testing.assert_close(out.sum(1), torch.ones(2, 10, 13))


def test_whole_image_rejects_bad_divisor():
    with pytest.raises(ValueError, match="size_divisor"):
        whole_image_inference(_pointwise_model(), _images(), 4, size_divisor=0)


# ---------------------------------------------------------------- center crop
def test_center_crop_larger_image():
    images = torch.arange(48.0).reshape(1, 1, 6, 8).expand(1, 3, 6, 8)
    labels = torch.arange(48).reshape(1, 6, 8)
    img, lab = center_crop(images, labels, 4)
    # top = (6-4)//2 = 1, left = (8-4)//2 = 2
    assert torch.equal(img, images[:, :, 1:5, 2:6])
    assert torch.equal(lab, labels[:, 1:5, 2:6])
    assert lab[0, 0, 0] == 1 * 8 + 2
    img, lab = center_crop(images, labels, (3, 5))  # top = 1, left = 1
    assert torch.equal(lab, labels[:, 1:4, 1:6])


def test_center_crop_pads_smaller_image():
    images = torch.ones(2, 3, 3, 4)
    labels = torch.full((2, 3, 4), 7)
    img, lab = center_crop(images, labels, 6)
    # pad h: 3 -> (1 top, 2 bottom); pad w: 2 -> (1 left, 1 right)
    assert img.shape == (2, 3, 6, 6) and lab.shape == (2, 6, 6)
    assert (img[:, :, 1:4, 1:5] == 1).all() and img.sum() == 2 * 3 * 12
    assert (lab[:, 1:4, 1:5] == 7).all() and (lab == 255).sum() == 2 * (36 - 12)
    _, lab0 = center_crop(images, labels, 6, label_pad_value=0)  # AEL VOC quirk
    assert (lab0 == 0).sum() == 2 * (36 - 12)


def test_center_crop_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="labels"):
        center_crop(torch.zeros(1, 3, 6, 6), torch.zeros(1, 5, 6, dtype=torch.long), 4)


# ---------------------------------------------------------------- multi-scale / flip
def test_multi_scale_single_scale_no_flip_is_plain_call():
    model, images = _pointwise_model(), _images()

    def infer(x):
        return sliding_window_inference(model, x, 4, crop=6, stride=4)

    with torch.no_grad():
        assert torch.equal(multi_scale_inference(infer, images), infer(images))


def test_flip_of_flip_equivariant_model_is_unchanged():
    model, images = _pointwise_model(), _images()

    def infer(x):
        return whole_image_inference(model, x, 4)

    with torch.no_grad():
        torch.testing.assert_close(multi_scale_inference(infer, images, flip=True), infer(images))


def test_flip_averages_flipped_pass_hand_example():
    # infer_fn: class 0 on the left half, class 1 on the right half, whatever the input. The flipped pass,
    # flipped back, says class 1 on the left and class 0 on the right -> average 0.5 everywhere.
    def infer(x):
        w = x.shape[-1]
        right = (torch.arange(w) >= w // 2).float().expand(x.shape[0], 1, x.shape[2], w)
        return torch.cat([1 - right, right], dim=1)

    images = _images(w=8)
    torch.testing.assert_close(multi_scale_inference(infer, images, flip=True), torch.full((2, 2, 10, 8), 0.5))
    assert multi_scale_inference(infer, images, flip=False)[0, 0, 0, 0] == 1


def test_multi_scale_resizes_and_averages():
    sizes = []

    def infer(x):
        sizes.append(tuple(x.shape[-2:]))
        return torch.full((x.shape[0], 2, *x.shape[-2:]), 0.25) + 0.5 * (len(sizes) == 2)

    out = multi_scale_inference(infer, _images(), scales=(0.5, 1.5))
    # 0.5: (floor(5.5), floor(7.0)) = (5, 7); 1.5: (floor(15.5), floor(20.0)) = (15, 20)
    assert sizes == [(5, 7), (15, 20)]
    assert out.shape == (2, 2, 10, 13)
    torch.testing.assert_close(out, torch.full_like(out, (0.25 + 0.75) / 2))


@pytest.mark.parametrize("align", [False, True])
def test_multi_scale_align_corners_flag(align):
    images = _images(b=1)

    def infer(x):  # "probs" = the image itself, so the resizes are visible in the output
        return x

    out = multi_scale_inference(infer, images, scales=(0.5,), align_corners=align)
    small = F.interpolate(images, size=(5, 7), mode="bilinear", align_corners=align)
    expected = F.interpolate(small, size=(10, 13), mode="bilinear", align_corners=align)
    torch.testing.assert_close(out, expected)
    other = F.interpolate(F.interpolate(images, size=(5, 7), mode="bilinear", align_corners=not align),
                          size=(10, 13), mode="bilinear", align_corners=not align)
    assert not torch.allclose(out, other)


@pytest.mark.parametrize("scales", [(), (0.0,), (1.0, -0.5)])
def test_multi_scale_rejects_bad_scales(scales):
    with pytest.raises(ValueError, match="scales"):
        multi_scale_inference(lambda x: x, _images(), scales=scales)


def test_inference_has_no_python_loop_over_images():
    # the batch dimension goes to the model in one call per window chunk, whatever B is
    model = _Recorder(_pointwise_model())
    with torch.no_grad():
        sliding_window_inference(model, _images(b=5), 4, crop=10, stride=10)
    n_windows = len(window_starts(10, 10, 10)) * len(window_starts(13, 10, 10))
    assert len(model.shapes) == math.ceil(n_windows / 8) and model.shapes[0][0] == 5 * n_windows
