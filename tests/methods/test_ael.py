"""AEL method wiring (the pure AEL ops are tested in tests/ops/, the runs in tests/tasks/)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from semiseg_lit.__main__ import CONFIG_DIR
from semiseg_lit.callbacks.confidence_bank import ConfidenceBank
from semiseg_lit.callbacks.cutmix_bank import CutMixBank
from semiseg_lit.callbacks.ema_teacher import EMATeacher
from semiseg_lit.data.datamodule import resolve_class_info
from semiseg_lit.methods.ael import AELMethod
from tests.conftest import tiny_overrides


def _compose_method(tmp_path, *overrides) -> AELMethod:
    """An AEL method built from `+experiment=ael_synthscapes` on the tiny data, with ``overrides``."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=[
                "+experiment=ael_synthscapes", *tiny_overrides(tmp_path / "synth", tmp_path / "out"), *overrides])
    finally:
        GlobalHydra.instance().clear()
    return AELMethod(cfg, resolve_class_info(cfg.data), num_unlabeled=8)


def test_configure_callbacks_returns_the_same_state_owners_every_time(tmp_path):
    """Lightning calls configure_callbacks for fit and again for the final validate: the second call must
    hand back the trained confidence bank, CutMix bank and EMA teacher, not fresh ones."""
    method = _compose_method(tmp_path)
    first, second = method.configure_callbacks(), method.configure_callbacks()
    assert [type(c) for c in first] == [EMATeacher, ConfidenceBank, CutMixBank]
    assert all(a is b for a, b in zip(first, second, strict=True))


def test_virtual_ranks_options_are_checked_with_the_key_named(tmp_path):
    import pytest

    def method(*overrides):
        return _compose_method(tmp_path, *overrides)

    emulating = method("method.ael.virtual_ranks=4")  # one process: 4 emulated GPUs, one bank row each
    assert emulating.groups == 4
    bank = emulating.configure_callbacks()[1]
    assert bank.bank.shape == (4, 10) and bool((bank.bank == bank.bank[0]).all())  # the same initial bank
    with pytest.raises(ValueError, match="method.ael.virtual_ranks=0"):
        method("method.ael.virtual_ranks=0")
    # a per-device CutMix bank shared by 2 emulated GPUs emulates no real layout
    with pytest.raises(ValueError, match="method.ael.cutmix_bank_sync=false"):
        method("method.ael.virtual_ranks=2", "method.ael.cutmix_bank_sync=false").configure_callbacks()
