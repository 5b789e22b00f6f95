"""metrics.json: the last model at the top level (unchanged keys) plus a ``best`` entry = the best
in-training validation of the evaluated network, the same one ``best.ckpt`` holds, carried across a resume."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from semiseg_lit.tasks import run_task
from tests.conftest import tiny_overrides


def logged_val_mious(out) -> list[tuple[int, float]]:
    """(step, val/miou) of every validation in the CSV logs (earlier resumed segments included)."""
    rows = []
    for path in sorted((out / "csv").glob("metrics*.csv")):
        with open(path) as f:
            rows += [(int(r["step"]), float(r["val/miou"])) for r in csv.DictReader(f) if r.get("val/miou")]
    return rows


@pytest.mark.slow
def test_metrics_json_has_last_and_best_with_steps(compose_cfg, synth_root, tmp_path):
    overrides = [*tiny_overrides(synth_root, tmp_path), "trainer.val_check_interval=1", "trainer.max_steps=4",
                 "method.optim.lr=0.05"]
    miou = run_task(compose_cfg(["+experiment=supervised_synthscapes", *overrides]))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # top level unchanged: the last model
    assert metrics["miou"] == pytest.approx(miou) and metrics["step"] == 4 and "per_class_iou" in metrics
    best = metrics["best"]
    vals = logged_val_mious(tmp_path)
    assert len(vals) >= 4  # validations at steps 1..4 during fit (+ the final one)
    fit_vals = vals[:4]
    top = max(v for _, v in fit_vals)
    assert best["miou"] == pytest.approx(top, abs=1e-6)
    assert best["step"] == [k + 1 for k, (_, v) in enumerate(fit_vals) if v == pytest.approx(top, abs=1e-6)][0]
    assert best["evaluated_model"] == "student" and best["checkpoint"].endswith("best.ckpt")
    assert len(best["per_class_iou"]) == len(metrics["per_class_iou"])
    assert best["miou"] >= metrics["miou"] - 1e-9 or best["step"] != 4
    state = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == best["step"] and state["best_val_scores"]["miou"] == pytest.approx(best["miou"])


@pytest.mark.slow
def test_best_survives_a_resume(compose_cfg, synth_root, tmp_path):
    base = [*tiny_overrides(synth_root, tmp_path), "trainer.val_check_interval=1", "method.optim.lr=0.05"]
    run_task(compose_cfg(["+experiment=supervised_synthscapes", *base, "trainer.max_steps=2"]))
    first = json.loads((tmp_path / "metrics.json").read_text())["best"]
    run_task(compose_cfg(["+experiment=supervised_synthscapes", *base, "trainer.max_steps=3", "ckpt_path=last",
                          "resume_check=warn"]))  # a longer schedule than the checkpoint's: allowed with warn
    best = json.loads((tmp_path / "metrics.json").read_text())["best"]
    last_state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    step3 = last_state["best_val_scores"]
    assert step3["miou"] == pytest.approx(best["miou"]) and step3["step"] == best["step"]
    # the record of the first segment is kept: the best is the first segment's unless step 3 beat it
    assert best["miou"] >= first["miou"] - 1e-12
    assert best["step"] == first["step"] or (best["step"] == 3 and best["miou"] > first["miou"])


def test_no_validation_during_fit_gives_best_null(compose_cfg, synth_root, tmp_path):
    from semiseg_lit.tasks.train import best_to_json

    cfg = compose_cfg(["+experiment=supervised_synthscapes", *tiny_overrides(synth_root, tmp_path)])
    assert best_to_json(None, ["a"], cfg, tmp_path) is None
    entry = best_to_json({"miou": 0.5, "pixel_acc": 0.9, "per_class_iou": [0.25, 0.75], "step": 7}, ["a", "b"],
                         cfg, tmp_path)
    assert entry == {"miou": 0.5, "pixel_acc": 0.9, "per_class_iou": {"a": 0.25, "b": 0.75}, "step": 7,
                     "evaluated_model": "student", "checkpoint": str(tmp_path / "checkpoints" / "best.ckpt")}
