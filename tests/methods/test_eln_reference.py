"""The ELN method on the reference networks (issue 14): ``model=deeplabv3plus_eln`` student / teacher,
``method.eln.network=reference`` ELN with its native 1/4 output on the teacher's 1/4 grid, and the
auxiliary decoders as fresh copies of the official head (eln.md §2.2-§4.2)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from semiseg_lit.__main__ import CONFIG_DIR
from semiseg_lit.data.datamodule import resolve_class_info
from semiseg_lit.methods.eln import ELNMethod
from semiseg_lit.models.reference_nets import ELNHead, ELNSegNet, ReferenceELN
from tests.conftest import tiny_overrides

SIZE = (30, 37)  # odd sizes: the 1/4 grid is (8, 10)
REFERENCE = ["model=deeplabv3plus_eln", "model.encoder=resnet50", "model.encoder_weights=null",
             "model.decoder_channels=256", "model.projection_dim=16", "method.eln.network=reference",
             "method.eln.encoder=resnet18", "method.eln.encoder_weights=null", "method.eln.decoder_channels=256",
             "method.eln.n_crops=2", "method.eln.crop_size=4", "method.eln.pretrain_steps=2",
             "method.eln.eln_steps=3"]


def make_method(tmp_path, extra=()) -> ELNMethod:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=[
                "+experiment=eln_synthscapes", *tiny_overrides(tmp_path / "synth", tmp_path / "out"), *REFERENCE,
                *extra])
    finally:
        GlobalHydra.instance().clear()
    torch.manual_seed(0)
    return ELNMethod(cfg, resolve_class_info(cfg.data))


@pytest.fixture(scope="module")
def method(tmp_path_factory) -> ELNMethod:
    return make_method(tmp_path_factory.mktemp("eln_ref"))


def make_batch(c: int, b: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (b, *SIZE), generator=g)
    y[:, :3] = 255
    x, xu = torch.randn(b, 3, *SIZE, generator=g), torch.randn(b, 3, *SIZE, generator=g)
    return {"labeled": {"image": x, "mask": y, "index": torch.arange(b)},
            "unlabeled": {"image": xu, "image_strong": xu + 0.3 * torch.randn(xu.shape, generator=g),
                          "index": torch.arange(b), "mask": torch.randint(0, c, (b, *SIZE), generator=g)}}


def test_reference_networks_and_aux_decoders_are_built(method):
    assert isinstance(method.student, ELNSegNet) and isinstance(method.eln, ReferenceELN) and method.eln_native
    assert len(method.aux_decoders) == 2 and all(isinstance(d, ELNHead) for d in method.aux_decoders)
    n = [sum(p.numel() for p in m.parameters()) for m in (method.student.head, *method.aux_decoders)]
    assert n[0] == n[1] == n[2]  # same architecture (projector included), fresh weights
    w = [m.aspp.aspp2[0].weight for m in (method.student.head, *method.aux_decoders)]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    groups = method.param_groups()
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for m in (method.student, method.eln, method.aux_decoders) for p in m.parameters()}
    assert len(ids) == len(set(ids)) and set(ids) == trainable


def test_pseudo_labels_use_the_native_quarter_output_cell_for_cell(method, monkeypatch):
    """A ±1 checkerboard on the ELN's native 1/4 grid must come back as the keep mask unchanged (no
    resize, no 4x4 averaging, no shift): the reference ELN's map lies on the teacher's 1/4 grid."""
    x = make_batch(method.num_classes)["unlabeled"]["image"]
    h, w = -(-SIZE[0] // 4), -(-SIZE[1] // 4)
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    board = torch.where((ii + jj) % 2 == 0, 1.0, -1.0).expand(2, 1, h, w)
    seen = {}

    def fake(inp, native=False):
        seen["native"] = native
        return board if native else F.interpolate(board, size=inp.shape[-2:], mode="bilinear", align_corners=True)

    monkeypatch.setattr(method.eln, "forward_inputs", fake)
    labels, keep, yhat, proj = method.pseudo_labels(x)
    assert seen["native"] is True
    assert keep.shape == yhat.shape == (2, h, w) and proj.shape == (2, 16, h, w)
    assert torch.equal(keep, board[:, 0] > 0)
    assert torch.equal(labels, torch.where(keep, yhat, 255))


def test_loss_terms_of_the_three_stages_are_finite(method):
    batch = make_batch(method.num_classes)
    for step, names in ((1, {"sup"}), (2, {"sup", "aux", "eln"}),
                        (5, {"sup", "aux", "eln", "pl_weak", "pl_strong", "con_weak", "con_strong"})):
        terms, _ = method.compute_losses(batch, step=step)
        assert set(terms) == names and all(torch.isfinite(v) for v in terms.values()), step
    terms["pl_weak"].backward()
    assert method.student.head.cls[-1].weight.grad is not None


def test_reference_eln_refuses_options_it_does_not_have(tmp_path):
    with pytest.raises(ValueError, match="first_conv_init"):
        make_method(tmp_path, ["method.eln.first_conv_init=smp"])
    with pytest.raises(ValueError, match="method.eln.network='unet'"):
        make_method(tmp_path, ["method.eln.network=unet"])


def test_a_crop_whose_ael_quarter_grid_differs_from_the_eln_one_is_refused_at_construction(tmp_path):
    # AEL's ceil-mode max-pool: sides 31 / 32 give 1/4 grids of 9 (16 -> 9, 16 -> 9), the ELN's ceil(n/4) is 8
    ael = ["model=deeplabv3plus_ael", "model.encoder=resnet50s", "model.output_stride=8",
           "model.atrous_rates=[12,24,36]"]
    with pytest.raises(ValueError, match=r"data.crop_size=\[31, 32\].*\(9, 9\).*\(8, 8\)"):
        make_method(tmp_path, [*ael, "data.crop_size=[31,32]"])
    with pytest.raises(ValueError, match=r"data.crop_size=\[29, 36\].*\(8, 10\).*\(8, 9\)"):
        make_method(tmp_path, [*ael, "data.crop_size=[29,36]", "method.eln.network=smp",
                               "method.eln.encoder=resnet18", "method.eln.decoder_channels=32"])
    assert make_method(tmp_path, [*ael, "data.crop_size=[29,30]"]).student.quarter_size(30) == 8
