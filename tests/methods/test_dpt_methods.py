"""Every method trains on DINOv2 + DPT from YAML (tiny random ViT), and a checkpoint evaluates with task=eval."""

from __future__ import annotations

import json

import pytest
import torch

from semiseg_lit.errors import UserError
from semiseg_lit.tasks import run_task
from tests.conftest import tiny_overrides

TINY_DPT = ["model=dpt_dinov2_s", "model.encoder=tu-vit_small_patch14_dinov2", "model.encoder_weights=null",
            "model.encoder_kwargs={embed_dim: 48, depth: 4, num_heads: 2}",
            "model.dpt_intermediate_channels=[8,16,24,32]", "data.crop_size=56"]
PER_METHOD = {
    "supervised": ["model.aux_head=true"],
    "ael": ["model.aux_head=true"],
    "unimatch_v2": ["model.aux_head=true"],
    # stage 2 at step 0, stage 3 (teacher, ELN pseudo labels, contrastive loss) at step 1
    "eln": ["method.eln.pretrain_steps=0", "method.eln.eln_steps=1", "method.eln.encoder=resnet18",
            "method.eln.encoder_weights=null", "method.eln.decoder_channels=16", "method.eln.n_crops=2",
            "method.eln.crop_size=4"],
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(PER_METHOD))
def test_method_trains_two_steps_on_dpt(compose_cfg, synth_root, tmp_path, method):
    cfg = compose_cfg([f"method={method}", *tiny_overrides(synth_root, tmp_path), *TINY_DPT, *PER_METHOD[method]])
    miou = run_task(cfg)
    assert 0.0 <= miou <= 1.0
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    assert state["hyper_parameters"]["config"]["model"]["arch"] == "dpt"
    keys = state["state_dict"]
    assert any(k.startswith("student.encoder.model.blocks.3.") for k in keys)
    if method != "supervised":
        assert any(k.startswith("teacher.decoder.fusion_blocks.") for k in keys)
    if method == "eln":   # DPT error-simulation decoders and the projection head were built and saved
        assert any(k.startswith("aux_decoders.0.decoder.reassemble_blocks.") for k in keys)
        assert any(k.startswith("student.projection_head.") for k in keys)
    else:
        assert any(k.startswith("student.aux_head.") for k in keys)


@pytest.mark.slow
def test_dpt_checkpoint_round_trip_through_task_eval(compose_cfg, synth_root, tmp_path):
    train_out = tmp_path / "train"
    run_task(compose_cfg(["method=supervised", *tiny_overrides(synth_root, train_out), *TINY_DPT,
                          "model.freeze_encoder=true"]))
    ckpt = train_out / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["config"]["model"]["freeze_encoder"] is True
    cfg = compose_cfg(["task=eval", f"ckpt_path={ckpt}", *tiny_overrides(synth_root, tmp_path / "eval")])
    miou = run_task(cfg)   # the network (a DPT, not the overrides' ResNet) comes from the checkpoint
    result = json.loads((train_out / "checkpoints" / "last_eval.json").read_text())
    trained = json.loads((train_out / "metrics.json").read_text())
    assert result["miou"] == pytest.approx(miou)
    assert result["miou"] == pytest.approx(trained["miou"], abs=1e-6)
    # export is refused with one message naming the reason and the alternative, before writing anything
    out = tmp_path / "export"
    with pytest.raises(UserError, match=r"DINOv2 \+ DPT network .* task=predict"):
        run_task(compose_cfg(["task=export", f"ckpt_path={ckpt}", f"output={out}",
                              *tiny_overrides(synth_root, tmp_path / "exp")]))
    assert not out.exists() or not any(out.iterdir())


def test_training_crop_that_is_not_whole_patches_is_refused_before_work(compose_cfg, synth_root, tmp_path):
    cfg = compose_cfg(["method=supervised", *tiny_overrides(synth_root, tmp_path), *TINY_DPT, "data.crop_size=64"])
    with pytest.raises(UserError, match=r"data.crop_size=\[64, 64\].*multiples of 14.*\[56, 70\]"):
        run_task(cfg)
    assert not (tmp_path / "checkpoints").exists()
