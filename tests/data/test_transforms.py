import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from semiseg_lit.data.transforms import (
    EvalTransform,
    LabeledTransform,
    Normalize,
    UnlabeledTransform,
    build_transforms,
    crop_hw,
    random_scale,
    reseed,
)

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def scene(h=40, w=50):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = (np.arange(w)[None, :].repeat(h, 0) // 10).astype(np.uint8)  # columns 0..4
    return image, mask


def labeled(crop=32, scale=(0.5, 2.0)):
    return LabeledTransform(crop=crop, scale_range=scale, hflip=True, pad_label=255, mean=MEAN, std=STD)


def test_labeled_output_shapes_and_types():
    image, mask = scene()
    out = labeled()(image, mask, seed=1)
    assert out["image"].shape == (3, 32, 32) and out["image"].dtype == torch.float32
    assert out["mask"].shape == (32, 32) and out["mask"].dtype == torch.int64
    assert set(out["mask"].unique().tolist()) <= {0, 1, 2, 3, 4, 255}


def test_same_seed_same_augmentation_different_seed_differs():
    image, mask = scene()
    t = labeled()
    a, b = t(image, mask, seed=7), t(image, mask, seed=7)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    outs = [t(image, mask, seed=s)["mask"] for s in range(8)]
    assert len({o.numpy().tobytes() for o in outs}) > 1


def test_padding_uses_ignore_label_and_the_mean_colour():
    image, mask = scene(10, 10)
    t = LabeledTransform(crop=32, scale_range=(1.0, 1.0), hflip=False, pad_label=255, mean=MEAN, std=STD)
    out = t(image, mask, seed=0)
    assert (out["mask"] == 255).sum() == 32 * 32 - 100
    # padded image pixels are the mean colour: ~0 after normalisation (uint8 rounding: < 0.5/255/std)
    corner = out["image"][:, 0, 0]
    assert corner.abs().max() < 0.01


def test_weak_and_strong_views_are_pixel_aligned():
    image, mask = scene()
    strong = build_transforms([{"_target_": "albumentations.ColorJitter", "brightness": 0.4, "contrast": 0.4,
                                "saturation": 0.4, "hue": 0.1, "p": 1.0}])
    t = UnlabeledTransform(crop=32, scale_range=(0.5, 2.0), hflip=True, pad_label=255, mean=MEAN, std=STD,
                           strong=strong)
    out = t(image, mask, seed=3)
    assert out["image"].shape == out["image_strong"].shape == (3, 32, 32)
    assert not torch.equal(out["image"], out["image_strong"])
    # geometry is shared: the same seed with the strong ops removed reproduces the weak view
    plain = UnlabeledTransform(crop=32, scale_range=(0.5, 2.0), hflip=True, pad_label=255, mean=MEAN, std=STD)
    assert torch.equal(plain(image, mask, seed=3)["image"], out["image"])
    # pixels that are padding in the weak view are padding in the mask too
    pad = out["mask"] == 255
    assert torch.equal(pad, plain(image, mask, seed=3)["mask"] == 255)


def test_build_transforms_rejects_nodes_without_target():
    import pytest

    with pytest.raises(ValueError, match="_target_"):
        build_transforms([{"p": 0.5}])


def test_eval_transform_keeps_geometry():
    image, mask = scene()
    out = EvalTransform(MEAN, STD)(image, mask)
    assert out["image"].shape == (3, 40, 50) and torch.equal(out["mask"], torch.from_numpy(mask).long())


def test_normalize_roundtrip():
    image, _ = scene()
    n = Normalize(MEAN, STD)
    back = n.denormalize(n(image))
    assert (back.permute(1, 2, 0).numpy().astype(int) - image.astype(int)).__abs__().max() <= 1


class _Seeded(Dataset):
    def __init__(self):
        self.t = labeled()
        self.image, self.mask = scene()

    def __len__(self):
        return 4

    def __getitem__(self, key):
        return self.t(self.image, self.mask, seed=1000 + key)["mask"]


def test_augmentation_does_not_depend_on_worker_count():
    """The albumentations worker-seeding trap (libraries.md D.5): with per-sample seeds the
    stream is identical for 0 and 2 workers and differs between samples."""
    ds = _Seeded()
    a = torch.cat(list(DataLoader(ds, batch_size=2, num_workers=0)))
    b = torch.cat(list(DataLoader(ds, batch_size=2, num_workers=2)))
    assert torch.equal(a, b)
    assert len({m.numpy().tobytes() for m in a}) == 4


def test_crop_hw_accepts_int_or_pair_and_names_the_key():
    assert crop_hw(769) == (769, 769)
    assert crop_hw([512, 1024]) == (512, 1024)
    for bad in (0, -3, [512], [512, 0], "769", True, 1.5):
        with pytest.raises(ValueError, match="data.crop_size"):
            crop_hw(bad)


def test_non_square_crop():
    image, mask = scene(40, 50)
    t = LabeledTransform(crop=[16, 32], scale_range=(1.0, 1.0), hflip=False, pad_label=255, mean=MEAN, std=STD)
    out = t(image, mask, seed=0)
    assert out["image"].shape == (3, 16, 32) and out["mask"].shape == (16, 32)


def test_resize_then_crop_keeps_labels_nearest():
    """ELN VOC geometry: resize to exactly [H, W] (aspect not kept), no scale, crop = the size."""
    image, mask = scene(40, 50)
    t = LabeledTransform(crop=25, scale_range=(1.0, 1.0), hflip=False, pad_label=255, mean=MEAN, std=STD,
                         resize=[25, 25])
    out = t(image, mask, seed=0)
    assert out["mask"].shape == (25, 25)
    # columns of 10 px become columns of 5 px; no interpolated (non-integer / new) label values
    assert out["mask"][0].tolist() == [c // 5 for c in range(25)]
    assert bool((out["mask"] == out["mask"][0]).all())


def test_eval_resize_resizes_image_and_label():
    image, mask = scene(40, 50)
    out = EvalTransform(MEAN, STD, resize=[20, 25])(image, mask)
    assert out["image"].shape == (3, 20, 25) and out["mask"].shape == (20, 25)
    assert out["mask"][0].tolist() == [c // 5 for c in range(25)]
    assert EvalTransform(MEAN, STD)(image, mask)["mask"].shape == (40, 50)


def _scale_factors(sampling: str, n: int = 600) -> np.ndarray:
    import albumentations as A

    pipeline = A.Compose([random_scale(0.5, 2.0, sampling)])
    image = np.zeros((200, 200, 3), np.uint8)
    factors = []
    for seed in range(n):
        reseed(pipeline, seed)
        factors.append(pipeline(image=image)["image"].shape[0] / 200)
    return np.asarray(factors)


def test_scale_sampling_uniform_vs_reference_split():
    """uniform on [0.5, 2]: P(s < 1) = 1/3; the AEL reference's split draw: P(s < 1) = 1/2 (ael.md §9)."""
    uniform, split = _scale_factors("uniform"), _scale_factors("split")
    for s in (uniform, split):
        assert s.min() >= 0.5 - 1e-6 and s.max() <= 2.0 + 1e-6
    assert abs((uniform < 1).mean() - 1 / 3) < 0.06
    assert abs((split < 1).mean() - 1 / 2) < 0.06
    # within each half the draw is uniform: mean of the lower half 0.75, of the upper half 1.5
    assert abs(split[split < 1].mean() - 0.75) < 0.03 and abs(split[split >= 1].mean() - 1.5) < 0.06
    assert np.array_equal(_scale_factors("split", 20), _scale_factors("split", 20))  # seeded


def test_scale_sampling_bad_value_names_the_key():
    with pytest.raises(ValueError, match="data.augment.scale_sampling='halves'"):
        random_scale(0.5, 2.0, "halves")
    with pytest.raises(ValueError, match=r"scale range \[2.0, 0.5\]"):
        random_scale(2.0, 0.5)


def test_labeled_strong_applies_the_photometric_pipeline_on_top_of_the_same_geometry():
    import albumentations as A

    image, mask = scene()
    plain = labeled()
    grey = LabeledTransform(crop=32, scale_range=(0.5, 2.0), hflip=True, pad_label=255, mean=MEAN, std=STD,
                            strong=[A.ToGray(p=1.0)])
    a, b = plain(image, mask, seed=5), grey(image, mask, seed=5)
    assert torch.equal(a["mask"], b["mask"])  # same geometric draw
    rgb = Normalize(MEAN, STD).denormalize(b["image"]).int()
    assert (rgb.max(0).values - rgb.min(0).values).max() <= 1  # grey
    assert not torch.equal(a["image"], b["image"])


@pytest.mark.parametrize("sampling", ["uniform", "split"])
@pytest.mark.parametrize(("h", "w", "crop", "scale"), [
    (96, 192, 72, (0.5, 2.0)),   # Cityscapes-like aspect: crops inside the scaled image and padded ones
    (20, 30, 64, (0.1, 2.0)),    # always padded (partner range)
    (30, 80, [24, 48], (0.5, 2.0)),  # non-square crop
])
def test_crop_first_matches_scaling_the_whole_image(sampling, h, w, crop, scale):
    """RandomScaleCrop (crop window only) against RandomScale + PadIfNeeded + RandomCrop on a random
    image: same draws, identical labels and flips, pixel values equal up to interpolation rounding."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.integers(0, 19, (h, w), dtype=np.uint8)
    kw = dict(crop=crop, scale_range=scale, hflip=True, pad_label=255, mean=MEAN, std=STD, scale_sampling=sampling)
    fast, full = LabeledTransform(**kw), LabeledTransform(**kw, crop_first=False)
    padded = 0
    for seed in range(12):
        a, b = fast(image, mask, seed=seed), full(image, mask, seed=seed)
        assert a["image"].shape == b["image"].shape and a["mask"].shape == b["mask"].shape
        assert torch.equal(a["mask"], b["mask"])  # nearest: the same source pixel for every output pixel
        grey = (a["image"] - b["image"]).abs() * torch.tensor(STD).view(3, 1, 1) * 255.0  # in grey levels
        assert grey.mean() < 0.5 and grey.max() < 24.0  # 1/32-pixel positions vs cv2.resize's 1/2048
        padded += int((b["mask"] == 255).any())
    assert padded > 0  # the padded case was exercised


def test_crop_first_without_mask_and_on_unlabeled_views():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    kw = dict(crop=40, scale_range=(0.5, 2.0), hflip=True, pad_label=255, mean=MEAN, std=STD)
    a = UnlabeledTransform(**kw)(image, seed=5)
    b = UnlabeledTransform(**kw, crop_first=False)(image, seed=5)
    assert set(a) == set(b) == {"image", "image_strong"}
    assert (a["image"] - b["image"]).abs().mean() < 0.5 / 255 / min(STD)


def test_normalize_is_the_formula():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    x = Normalize(MEAN, STD)(image)
    ref = (torch.from_numpy(image).permute(2, 0, 1).double() / 255.0 - torch.tensor(MEAN).view(3, 1, 1).double()) \
        / torch.tensor(STD).view(3, 1, 1).double()
    assert x.shape == (3, 7, 9) and x.dtype == torch.float32 and x.is_contiguous()
    assert torch.allclose(x.double(), ref, atol=1e-5)
