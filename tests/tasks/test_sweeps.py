"""Sweeps: W&B run naming / grouping, the Optuna search config, and a tiny Hydra multirun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from semiseg_lit.__main__ import CONFIG_DIR
from semiseg_lit.tasks.common import swept_keys, swept_overrides, wandb_identity
from tests.callbacks.test_wandb_panels import run_record, wandb_records
from tests.conftest import tiny_overrides

WCFG = OmegaConf.create({"group": None, "run_name": None, "job_type": None})


def test_single_run_is_named_by_experiment_and_seed_without_group():
    assert wandb_identity("ael_synthscapes", 3, "train", WCFG, None) == {
        "name": "ael_synthscapes_seed3", "group": None, "job_type": "train"}
    single = {"multirun": False, "sweep_id": "", "experiment": "ael_synthscapes", "overrides": "", "num": 0}
    assert wandb_identity("ael_synthscapes", 0, "eval", WCFG, single)["group"] is None


def test_multirun_job_is_named_by_its_overrides_and_grouped_by_sweep():
    job = {"multirun": True, "sweep_id": "2024-01-01_10-00-00", "experiment": "ael_cityscapes_1_8",
           "overrides": "method.ael.alpha=0.5", "num": 1}
    ident = wandb_identity("ael_cityscapes", 0, "train", WCFG, job)
    assert ident == {"name": "method.ael.alpha=0.5", "group": "ael_cityscapes_1_8_2024-01-01_10-00-00",
                     "job_type": "train"}
    assert wandb_identity("x", 0, "train", WCFG, {**job, "overrides": "", "experiment": None})["name"] == "job1"
    assert wandb_identity("x", 0, "train", WCFG, {**job, "experiment": None})["group"] == "x_2024-01-01_10-00-00"
    explicit = OmegaConf.create({"group": "study", "run_name": "mine", "job_type": "ablation"})
    assert wandb_identity("x", 0, "train", explicit, job) == {"name": "mine", "group": "study", "job_type": "ablation"}


def test_swept_overrides_are_the_varying_keys_only():
    argv = ["-m", "+experiment=ael_synthscapes", "method.ael.alpha=0.5,1.0", "seed=range(0,2)",
            "trainer.enable_progress_bar=false"]
    keys = swept_keys(argv, {"method.optim.lr": "tag(log, interval(0.002, 0.05))"})
    assert keys == {"method.ael.alpha", "seed", "method.optim.lr"}
    job = ["+experiment=ael_synthscapes", "method.ael.alpha=1.0", "seed=1", "trainer.enable_progress_bar=False",
           "method.optim.lr=0.01"]
    assert swept_overrides(job, keys) == ["method.ael.alpha=1.0", "seed=1", "method.optim.lr=0.01"]


def test_optuna_search_config_composes():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="config", return_hydra_config=True,
                          overrides=["+experiment=ael_synthscapes", "+hparams_search=ael_synthscapes_optuna"])
    finally:
        GlobalHydra.instance().clear()
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "maximize"
    assert "method.ael.alpha" in cfg.hydra.sweeper.params
    assert cfg.method.name == "ael"


@pytest.mark.slow
def test_tiny_multirun_gives_one_folder_and_one_grouped_wandb_run_per_job(synth_root, tmp_path):
    logs = tmp_path / "logs"
    # the per-run output folder comes from Hydra's sweep dir, not from paths.output_dir
    overrides = [o for o in tiny_overrides(synth_root, tmp_path) if not o.startswith(("paths.", "logger."))]
    cmd = [sys.executable, "-m", "semiseg_lit", "-m", "+experiment=ael_synthscapes", "method.ael.alpha=0.5,1.0",
           *overrides, f"paths.log_dir={logs}", "logger.wandb.enabled=true", "logger.wandb.mode=offline"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("WANDB_API_KEY", None)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (sweep,) = (logs / "train" / "multiruns" / "ael_synthscapes").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    runs = []
    for job, alpha in zip(jobs, (0.5, 1.0)):
        assert (job / "metrics.json").is_file() and (job / "checkpoints" / "last.ckpt").is_file()
        assert json.loads((job / "metrics.json").read_text())["step"] == 2
        assert OmegaConf.load(job / "config_resolved.yaml").method.ael.alpha == alpha
        (run_dir,) = (job / "wandb").glob("offline-run-*")
        runs.append(run_record(wandb_records(run_dir)))
    assert runs[0].run_group == runs[1].run_group == f"ael_synthscapes_{sweep.name}"
    assert [r.display_name for r in runs] == ["method.ael.alpha=0.5", "method.ael.alpha=1.0"]
    assert runs[0].run_id != runs[1].run_id
