"""Determinism on CPU: the same seed and config give bit-identical metrics.json and final weights,
whatever ``data.num_workers``; another seed gives other weights (so the comparison is not vacuous)."""

import json

import pytest
import torch

from semiseg_lit.tasks import run_task
from tests.conftest import tiny_overrides


def _run(compose_cfg, synth_root, out, experiment, *extra):
    run_task(compose_cfg([*tiny_overrides(synth_root, out), f"+experiment={experiment}", "trainer.max_steps=3",
                          "trainer.val_check_interval=3", *extra]))
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("checkpoint_dir")
    if metrics.get("best"):
        metrics["best"].pop("checkpoint")  # the run folder's path
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return metrics, state


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["supervised_synthscapes", "ael_synthscapes"])
def test_same_seed_same_config_gives_identical_results(compose_cfg, synth_root, tmp_path, experiment):
    m1, s1 = _run(compose_cfg, synth_root, tmp_path / "a", experiment)
    m2, s2 = _run(compose_cfg, synth_root, tmp_path / "b", experiment)
    assert m1 == m2  # exact, not approximate
    assert s1["state_dict"].keys() == s2["state_dict"].keys()
    for k, v in s1["state_dict"].items():
        assert torch.equal(v, s2["state_dict"][k]), k
    for name, state in s1["callbacks"].items():  # EMA teacher counters, confidence / CutMix banks
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, s2["callbacks"][name][key]), f"{name}.{key}"
    # the data streams do not depend on the number of loader processes (per-sample seeds)
    m4, s4 = _run(compose_cfg, synth_root, tmp_path / "d", experiment, "data.num_workers=2")
    assert m4 == m1
    for k, v in s1["state_dict"].items():
        assert torch.equal(v, s4["state_dict"][k]), k
    _, s3 = _run(compose_cfg, synth_root, tmp_path / "c", experiment, "seed=1")
    assert any(not torch.equal(v, s3["state_dict"][k]) for k, v in s1["state_dict"].items()
               if v.is_floating_point())
