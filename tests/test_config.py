"""The Hydra app: composition, typed schemas, experiment selection, clear errors."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from semiseg_lit.__main__ import CONFIG_DIR

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
# the unimatch_v2_* experiments train DINOv2-B + DPT: they compose once conf/model/dpt_dinov2_b.yaml exists
_NO_DPT_B = not (Path(CONFIG_DIR) / "model" / "dpt_dinov2_b.yaml").is_file()


def _composable(names: list[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.skipif(
        _NO_DPT_B and n.startswith("unimatch_v2_") and not n.endswith("synthscapes"),
        reason="conf/model/dpt_dinov2_b.yaml (issue 18 deliverable 1, the dpt branch) is not in this checkout"))
        for n in names]


def test_config_dir_is_the_repository_conf():
    assert (Path(CONFIG_DIR) / "config.yaml").is_file()
    for group in ("data", "model", "method", "trainer", "logger", "callbacks", "experiment", "paths", "hydra",
                  "hparams_search"):
        assert (Path(CONFIG_DIR) / group).is_dir(), group


def test_default_config_composes(compose_cfg):
    cfg = compose_cfg([])
    assert cfg.task == "train" and cfg.data.name == "synthscapes"
    assert cfg.method._target_.startswith("semiseg_lit.methods.")


def test_default_config_is_the_ael_synthscapes_experiment(compose_cfg):
    """`python -m semiseg_lit` with no arguments trains exactly what `+experiment=ael_synthscapes` does."""
    from omegaconf import OmegaConf

    default, ael = compose_cfg([]), compose_cfg(["+experiment=ael_synthscapes"])
    assert default.method.name == "ael" and default.name == "ael_synthscapes"
    default.logger.wandb.tags = ael.logger.wandb.tags  # the experiment only adds W&B tags
    assert OmegaConf.to_container(default) == OmegaConf.to_container(ael)


@pytest.mark.parametrize("name", _composable(EXPERIMENTS))
def test_every_experiment_composes_with_plus_syntax(compose_cfg, name):
    cfg = compose_cfg([f"+experiment={name}"])
    assert cfg.method.name and cfg.data.name


def test_misspelled_override_is_rejected_with_the_key(compose_cfg):
    with pytest.raises(ConfigCompositionException, match="max_stepz"):
        compose_cfg(["trainer.max_stepz=3"])


def test_wrong_type_is_rejected(compose_cfg):
    with pytest.raises((ConfigCompositionException, ValidationError), match="labeled_batch_size"):
        compose_cfg(["data.labeled_batch_size=big"])


def test_bad_crop_size_is_rejected_before_training(compose_cfg, synth_root, tmp_path):
    """crop_size takes N or [H, W], so it is checked when the data module is built, naming the key."""
    from semiseg_lit.tasks.common import build_datamodule
    from tests.conftest import tiny_overrides

    cfg = compose_cfg([*tiny_overrides(synth_root, tmp_path), "data.crop_size=big"])
    with pytest.raises(ValueError, match="data.crop_size='big'"):
        build_datamodule(cfg).setup("fit")


def test_unknown_experiment_is_rejected(compose_cfg):
    with pytest.raises(ConfigCompositionException, match="no_such_experiment"):
        compose_cfg(["+experiment=no_such_experiment"])


def test_misspelled_key_in_a_yaml_file_is_rejected(compose_cfg, tmp_path):
    bad = Path(CONFIG_DIR) / "data" / "_test_typo.yaml"
    bad.write_text("defaults:\n  - synthscapes\n  - _self_\ncrop_sise: 64\n")
    try:
        with pytest.raises((ConfigCompositionException, ConfigKeyError), match="crop_sise"):
            compose_cfg(["data=_test_typo"])
    finally:
        bad.unlink()


def test_optuna_search_composes():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=["+experiment=ael_synthscapes", "+hparams_search=ael_synthscapes_optuna"])
    GlobalHydra.instance().clear()
    assert cfg.hydra.sweeper.direction == "maximize"
    assert "method.ael.alpha" in cfg.hydra.sweeper.params


def test_key_added_with_plus_must_exist_in_the_schema(compose_cfg):
    """Hydra's `+key=value` adds keys even to typed nodes: run_task re-checks before any work."""
    from semiseg_lit.tasks import run_task

    cfg = compose_cfg(["+experiment=ael_synthscapes", "+data.colour_jitter=0.5"])
    with pytest.raises(ValueError, match="unknown config key: Key 'colour_jitter' not in 'DataConfig'"):
        run_task(cfg)
    cfg = compose_cfg(["+experiment=ael_synthscapes", "+method.ael.alpah=2"])
    with pytest.raises(ValueError, match="alpah"):
        run_task(cfg)


@pytest.mark.parametrize("name", _composable(EXPERIMENTS))
def test_every_experiment_passes_the_schema_check(compose_cfg, name):
    from semiseg_lit.config import check_schema

    check_schema(compose_cfg([f"+experiment={name}"]))


REFERENCE_EXPERIMENTS = [n for n in EXPERIMENTS if not n.endswith("synthscapes")]


@pytest.mark.parametrize("name", _composable(REFERENCE_EXPERIMENTS))
def test_reference_experiments_keep_the_official_bank_momentum_and_no_warmup(compose_cfg, name):
    """Issue 16: the method configs default to `auto` (bank time constant and unsupervised start sized to
    the schedule); every reference experiment still runs the reference: bank 0.999, full weight from step 0."""
    from semiseg_lit.ops.confidence import resolve_bank_momentum
    from semiseg_lit.ops.rampup import resolve_start_steps

    cfg = compose_cfg([f"+experiment={name}"])
    steps = int(cfg.trainer.max_steps)
    if cfg.method.name == "ael":
        assert cfg.method.ael.bank_momentum == 0.999  # explicit in the experiment file
        assert resolve_bank_momentum(cfg.method.ael.bank_momentum, steps) == 0.999
    # the official EMA teacher decay, explicit in the experiment file (the method default is auto)
    official_ema = {"ael": 0.99, "eln": 0.995, "unimatch_v2": 0.996}
    if cfg.method.name in official_ema:
        assert cfg.method[cfg.method.name].ema_decay == official_ema[cfg.method.name]
    assert resolve_start_steps(cfg.method.unsup_warmup_steps, cfg.method.unsup_rampup_steps, steps) == (0, 0)


@pytest.mark.parametrize(("name", "start"), [("ael_synthscapes", (40, 80)), ("eln_synthscapes", (0, 80))])
def test_short_synthscapes_schedules_get_a_supervised_start_and_a_short_bank(compose_cfg, name, start):
    """320 steps: warm-up 320 // 8, ramp 320 // 4; bank T = 20 (0.95); EMA teacher T = 8 (0.875)."""
    from semiseg_lit.ops.confidence import resolve_bank_momentum
    from semiseg_lit.ops.ema import resolve_ema_decay
    from semiseg_lit.ops.rampup import resolve_start_steps

    cfg = compose_cfg([f"+experiment={name}"])
    steps = int(cfg.trainer.max_steps)
    assert steps == 320
    assert resolve_start_steps(cfg.method.unsup_warmup_steps, cfg.method.unsup_rampup_steps, steps) == start
    node = cfg.method[cfg.method.name]
    assert resolve_ema_decay(node.ema_decay, steps, "ema_decay", 0.99) == pytest.approx(0.875)
    if cfg.method.name == "ael":
        assert resolve_bank_momentum(cfg.method.ael.bank_momentum, steps) == pytest.approx(0.95)


def test_bank_momentum_takes_auto_or_a_number_and_a_bad_value_names_the_key(compose_cfg, synth_root, tmp_path):
    from semiseg_lit.data.datamodule import resolve_class_info
    from semiseg_lit.methods.ael import AELMethod
    from tests.conftest import tiny_overrides

    def build(*overrides):
        cfg = compose_cfg(["+experiment=ael_synthscapes", *tiny_overrides(synth_root, tmp_path), *overrides])
        return AELMethod(cfg, resolve_class_info(cfg.data), num_unlabeled=8)

    assert build("method.ael.bank_momentum=0.98").bank_momentum == 0.98
    assert build("trainer.max_steps=800").bank_momentum == pytest.approx(0.98)  # auto: T = 800 / 16
    assert build("trainer.max_steps=800").configure_callbacks()[1].momentum == pytest.approx(0.98)
    with pytest.raises(ValueError, match=r"method.ael.bank_momentum='slow'"):
        build("method.ael.bank_momentum=slow")
    with pytest.raises(ValueError, match=r"method.unsup_warmup_steps='later'"):
        build("method.unsup_warmup_steps=later")
    with pytest.raises(ValueError, match=r"method.unsup_rampup_shape='cosine'"):
        build("method.unsup_rampup_shape=cosine")
