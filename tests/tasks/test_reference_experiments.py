"""The reference experiments train the official networks (issue 14 "Check that scripts run")."""

from __future__ import annotations

import pytest
import torch

from semiseg_lit.tasks import run_task
from tests.data.layout_builders import write_cityscapes


@pytest.mark.slow
def test_ael_cityscapes_experiment_checkpoints_the_official_network(compose_cfg, tmp_path):
    """``+experiment=ael_cityscapes_1_8 model.encoder_weights=null`` on a tiny Cityscapes tree, crop 129,
    one CPU step: the checkpoint's ``student.*`` floating parameters (BN running statistics excluded)
    number exactly the official model's 64,987,622."""
    tree = write_cityscapes(tmp_path / "cityscapes", size=(64, 128), seed=0)
    out = tmp_path / "run"
    common = [f"data.root={tree.root}", "data.n_labeled=4", "data.val_crop_size=129", "data.val_batch_size=2",
              "data.num_workers=0",
              "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "logger.wandb.enabled=false"]
    miou = run_task(compose_cfg([
        "+experiment=ael_cityscapes_1_8", "model.encoder_weights=null", *common, "data.crop_size=129",
        # a 2 + 2 batch for CPU seconds: one emulated GPU (the reference's 8 need 16 + 8 images)
        "data.labeled_batch_size=2", "data.unlabeled_batch_size=2", "method.ael.virtual_ranks=1", "trainer.max_steps=1",
        "trainer.val_check_interval=1", f"paths.output_dir={out}", f"paths.log_dir={out / 'logs'}"]))
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 1
    student = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("student.")}
    params = [v for k, v in student.items()
              if v.is_floating_point() and not k.endswith(("running_mean", "running_var"))]
    assert sum(v.numel() for v in params) == 64_987_622
    assert student["student.encoder.bn1.weight"].shape == (128,)  # deep stem
    assert student["student.aux_head.0.weight"].shape == (256, 1024, 3, 3)  # aux FCN head on layer3

    # task=eval rebuilds the reference network from the checkpoint and gives the same score
    ev = tmp_path / "eval"
    eval_miou = run_task(compose_cfg(["task=eval", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
                                      "data=cityscapes", *common, f"paths.output_dir={ev}",
                                      f"paths.log_dir={ev / 'logs'}"]))
    assert eval_miou == pytest.approx(miou, abs=1e-6)
