"""End-to-end: every experiment trains a few steps on tiny data and writes what a run promises."""

import json
from pathlib import Path

import pytest
import torch

from semiseg_lit.__main__ import CONFIG_DIR
from semiseg_lit.tasks import run_task
from tests.conftest import tiny_overrides

SYNTH_EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*synthscapes*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("name", SYNTH_EXPERIMENTS)
def test_experiment_trains_two_steps_and_writes_outputs(compose_cfg, synth_root, tmp_path, name):
    cfg = compose_cfg([f"+experiment={name}", *tiny_overrides(synth_root, tmp_path)])
    miou = run_task(cfg)
    assert 0.0 <= miou <= 1.0
    ckpt = tmp_path / "checkpoints"
    assert (ckpt / "last.ckpt").is_file() and (ckpt / "best.ckpt").is_file()
    assert (tmp_path / "config_resolved.yaml").is_file()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["per_class_iou"]) == {"road", "sidewalk", "building", "vegetation", "sky", "car", "pole",
                                              "sign", "person", "bicycle"} or len(metrics["per_class_iou"]) >= 10
    assert metrics["miou"] == pytest.approx(sum(metrics["per_class_iou"].values()) / len(metrics["per_class_iou"]))
    assert "head_miou" in metrics and "tail_miou" in metrics
    state = torch.load(ckpt / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    assert state["hyper_parameters"]["config"]["method"]["name"] == cfg.method.name


@pytest.mark.slow
def test_eval_task_reads_the_checkpoint_and_writes_json_beside_it(compose_cfg, synth_root, tmp_path):
    train_out = tmp_path / "train"
    run_task(compose_cfg(["+experiment=supervised_synthscapes", *tiny_overrides(synth_root, train_out)]))
    ckpt = train_out / "checkpoints" / "last.ckpt"
    eval_out = tmp_path / "eval"
    cfg = compose_cfg(["task=eval", f"ckpt_path={ckpt}", *tiny_overrides(synth_root, eval_out),
                       "model.decoder_channels=64"])  # ignored: the network comes from the checkpoint
    miou = run_task(cfg)
    result = json.loads((train_out / "checkpoints" / "last_eval.json").read_text())
    assert result["miou"] == pytest.approx(miou)
    trained = json.loads((train_out / "metrics.json").read_text())
    assert result["miou"] == pytest.approx(trained["miou"], abs=1e-6)
    assert (train_out / "checkpoints" / "last_eval.csv").is_file()


@pytest.mark.slow
def test_resume_from_checkpoint_continues_training(compose_cfg, synth_root, tmp_path):
    run_task(compose_cfg(["+experiment=supervised_synthscapes", *tiny_overrides(synth_root, tmp_path)]))
    cfg = compose_cfg(["+experiment=supervised_synthscapes", *tiny_overrides(synth_root, tmp_path),
                       "trainer.max_steps=4", "ckpt_path=last", "resume_check=warn"])  # a longer poly schedule
    run_task(cfg)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 4


def test_corrupt_checkpoint_is_named(compose_cfg, synth_root, tmp_path):
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"not a checkpoint")
    cfg = compose_cfg([*tiny_overrides(synth_root, tmp_path), f"ckpt_path={bad}"])
    with pytest.raises(Exception, match="broken.ckpt"):
        run_task(cfg)


def test_unknown_task_is_named(compose_cfg, synth_root, tmp_path):
    cfg = compose_cfg([*tiny_overrides(synth_root, tmp_path), "task=dance"])
    with pytest.raises(ValueError, match="dance"):
        run_task(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("switches", [
    ["method.ael.copy_paste=false", "method.ael.cutmix_adaptive=false", "method.ael.sampling=false",
     "method.ael.reweight=false"],  # the CutMix-Seg-like basic framework of Table 3
    ["method.ael.cutmix=false", "method.ael.labeled_consistency=true", "method.ael.sampling_shared_noise=true",
     "method.ael.loss_normalize=image", "method.ael.threshold=0.7"],
    # the same two variants with 2 emulated GPUs (random boxes inside each GPU's batch; CE per GPU)
    ["method.ael.copy_paste=false", "method.ael.cutmix_adaptive=false", "method.ael.virtual_ranks=2",
     "method.loss.name=ce"],
    ["method.ael.cutmix=false", "method.ael.sampling_shared_noise=true", "method.ael.loss_normalize=image",
     "method.ael.virtual_ranks=4", "method.ael.bank_sync=false"],
])
def test_ael_components_switch_off(compose_cfg, synth_root, tmp_path, switches):
    cfg = compose_cfg(["+experiment=ael_synthscapes", *tiny_overrides(synth_root, tmp_path), *switches])
    assert 0.0 <= run_task(cfg) <= 1.0
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert "ConfidenceBank" in state["callbacks"] and "EMATeacher" in state["callbacks"]
    assert any(k.startswith("teacher.") for k in state["state_dict"])


@pytest.mark.slow
def test_wandb_offline_run_is_written(compose_cfg, synth_root, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose_cfg(["+experiment=supervised_synthscapes", *tiny_overrides(synth_root, tmp_path),
                       "logger.wandb.enabled=true", "logger.wandb.mode=online"])  # no key -> offline
    run_task(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb"))
    assert (tmp_path / "csv" / "metrics.csv").read_text().count("val/miou") == 1


@pytest.mark.slow
def test_nan_loss_stops_with_step_and_term_and_keeps_the_last_good_checkpoint(compose_cfg, synth_root, tmp_path,
                                                                             monkeypatch):
    from semiseg_lit.methods.supervised import SupervisedMethod

    clean_loss = SupervisedMethod.supervised_loss

    def loss_nan_from_step_3(self, logits, target):
        loss = clean_loss(self, logits, target)
        return loss * float("nan") if self.global_step >= 3 else loss

    monkeypatch.setattr(SupervisedMethod, "supervised_loss", loss_nan_from_step_3)
    cfg = compose_cfg(["+experiment=supervised_synthscapes", *tiny_overrides(synth_root, tmp_path),
                       "trainer.max_steps=8", "trainer.val_check_interval=2"])
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 3: nan \(terms: \['sup'\]\)"):
        run_task(cfg)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2  # written by the validation at step 2; the one at step 4 never ran
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("name", ["ael_synthscapes", "eln_synthscapes"])
def test_gradient_accumulation_is_rejected_for_methods_with_per_step_state(compose_cfg, synth_root, tmp_path, name):
    cfg = compose_cfg([f"+experiment={name}", *tiny_overrides(synth_root, tmp_path),
                       "trainer.accumulate_grad_batches=2"])
    with pytest.raises(ValueError, match=r"trainer.accumulate_grad_batches=2 is not supported by method="):
        run_task(cfg)
    assert not (tmp_path / "checkpoints").exists()  # rejected before anything was written


@pytest.mark.slow
@pytest.mark.parametrize("view", ["weak", "strong"])
def test_ael_student_view_strong_gives_the_student_the_photometric_views(compose_cfg, synth_root, tmp_path,
                                                                         monkeypatch, view):
    """With a strong pipeline that turns images grey, the student's mixed unlabeled batch is grey exactly
    when method.ael.student_view=strong (the teacher's pseudo-labels come from the weak views either way)."""
    from pytorch_lightning.callbacks import Callback

    import semiseg_lit.tasks.common as common_mod
    from semiseg_lit.data.transforms import Normalize

    seen = []

    class KeepMixed(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(pl_module.last_views["mixed"][0].detach().clone())

    build = common_mod.build_callbacks
    monkeypatch.setattr(common_mod, "build_callbacks", lambda *a, **k: [*build(*a, **k), KeepMixed()])
    monkeypatch.setattr("semiseg_lit.tasks.train.build_callbacks", common_mod.build_callbacks)
    cfg = compose_cfg(["+experiment=ael_synthscapes", *tiny_overrides(synth_root, tmp_path),
                       "data.augment.strong=[{_target_:albumentations.ToGray,p:1.0}]",
                       f"method.ael.student_view={view}"])
    run_task(cfg)
    rgb = Normalize(list(cfg.data.mean), list(cfg.data.std)).denormalize(seen[0]).int()
    channel_spread = (rgb.max(1).values - rgb.min(1).values).max()
    assert (channel_spread <= 1) if view == "strong" else (channel_spread > 20)


def test_final_table_names_the_network_that_was_evaluated(compose_cfg, tmp_path):
    from semiseg_lit.data.labels import ClassInfo
    from semiseg_lit.tasks.train import report_text

    info = ClassInfo(name="toy", names=("a", "b"), palette=((0, 0, 0), (1, 1, 1)), head=(0,), tail=(1,))
    scores = {"per_class_iou": [0.5, 0.25], "miou": 0.375}
    default = report_text(compose_cfg(["method=ael"]), tmp_path, scores, info, [], paths=False)
    asked = report_text(compose_cfg(["method=ael", "eval.model=student"]), tmp_path, scores, info, [], paths=False)
    assert "(teacher network" in default and "(student network" in asked
