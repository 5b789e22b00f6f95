"""Method comparison (``+experiment=compare_synthscapes method=a,b seed=...``, README "Compare methods"):
the rows differ only in the method, and ``task=report`` makes one row per method with mean ± std."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from semiseg_lit.tasks import run_task
from semiseg_lit.tasks.report import find_runs
from tests.conftest import tiny_overrides

METHODS = ("supervised", "ael", "eln")
# the method's own keys that a comparison leaves to it (conf/compare_method/synthscapes_eln.yaml)
METHOD_OWNED = {"data.augment.strong"}


def shared(cfg) -> dict:
    """Everything of a composed run that is not the method: data, network, budget, evaluation."""
    out = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "model", "trainer", "eval")}
    out.update(seed=cfg.seed, name=cfg.name, parity=cfg.parity)
    for key in METHOD_OWNED:
        node, last = out, key.split(".")
        for part in last[:-1]:
            node = node[part]
        node.pop(last[-1])
    return out


def test_only_the_method_differs_between_rows(compose_cfg):
    cfgs = {m: compose_cfg(["+experiment=compare_synthscapes", f"method={m}"]) for m in METHODS}
    first = shared(cfgs["supervised"])
    for m, cfg in cfgs.items():
        assert cfg.method.name == m and cfg.name == "compare_synthscapes"
        assert shared(cfg) == first, m
    assert first["trainer"]["max_steps"] == 800 and first["data"]["labeled_batch_size"] == 8
    assert first["data"]["n_labeled"] == 16 and first["model"]["encoder"] == "resnet18"
    # no method brings its own batch, crop or schedule; the lr is each method's own and not rescaled
    assert [cfgs[m].method.optim.lr for m in METHODS] == [1e-3, 1e-3, 1e-4]
    assert not any(cfgs[m].method.optim.scale_lr_with_batch for m in METHODS)
    # another network for the whole sweep: its model file arrives unchanged (the experiment sets no model key)
    other = compose_cfg(["+experiment=compare_synthscapes", "method=ael", "model=deeplabv3plus_ael"]).model
    assert (other.arch, other.encoder) == ("deeplabv3plus_ael", "resnet101s")


def test_eln_budget_settings_follow_the_comparison_budget(compose_cfg):
    eln = compose_cfg(["+experiment=compare_synthscapes", "method=eln"]).method.eln
    # 800 steps: supervised [0, 200), + ELN [200, 400), semi-supervised [400, 800) (eln_synthscapes' proportions)
    assert (eln.pretrain_steps, eln.eln_steps) == (200, 200)
    assert (eln.encoder, eln.encoder_weights) == ("resnet18", None)  # no ImageNet download for the trunk
    longer = compose_cfg(["+experiment=compare_synthscapes", "method=eln", "trainer.max_steps=10000"]).method.eln
    assert (longer.pretrain_steps, longer.eln_steps) == (2500, 2500)
    # outside a comparison, ELN keeps its reference stage boundaries
    assert compose_cfg(["method=eln"]).method.eln.pretrain_steps == 18620
    assert compose_cfg(["+experiment=eln_synthscapes"]).method.eln.pretrain_steps == 80


def test_other_methods_get_no_foreign_nodes(compose_cfg):
    for m, absent in (("supervised", ("ael", "eln")), ("ael", ("eln",))):
        cfg = compose_cfg(["+experiment=compare_synthscapes", f"method={m}"])
        assert all(cfg.method.get(node) is None for node in absent), m


def fake_compare_run(job, method: str, seed: int, miou: float, tail: float, road: float) -> None:
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"name": "compare_synthscapes", "seed": seed, "parity": "reference",
                                     "method": {"name": method}, "data": {"split_seed": 0}}),
                   job / "config_resolved.yaml")
    OmegaConf.save(OmegaConf.create(["+experiment=compare_synthscapes", f"method={method}", f"seed={seed}",
                                     "data.root=/d", "trainer.max_steps=100"]), job / ".hydra" / "overrides.yaml")
    (job / "metrics.json").write_text(json.dumps({
        "miou": miou, "pixel_acc": 0.9, "step": 100, "head_miou": miou + 0.1, "tail_miou": tail,
        "per_class_iou": {"road": road, "car": tail}, "best": {"miou": miou + 0.01, "step": 50}}))


def test_report_rows_are_methods_with_mean_and_std(compose_cfg, tmp_path):
    sweep = tmp_path / "sweep"
    for job, (method, seed, miou, tail, road) in enumerate([("supervised", 0, 0.30, 0.10, 0.80),
                                                             ("supervised", 1, 0.32, 0.12, 0.90),
                                                             ("ael", 0, 0.40, 0.20, 0.85),
                                                             ("ael", 1, 0.44, 0.30, 0.95)]):
        fake_compare_run(sweep / str(job), method, seed, miou, tail, road)
    runs = find_runs(sweep)
    assert [(r.method, r.setting) for r in runs] == [("supervised", ""), ("supervised", ""), ("ael", ""), ("ael", "")]
    assert runs[0].common == ("trainer.max_steps=100",)  # shared by every row; data.root is a path, never a setting
    run_task(compose_cfg(["task=report", f"input={sweep}"]))
    md = (sweep / "report.md").read_text()
    # supervised: last 30, 32 -> 31.00 ± 1.41; best +1; head +10; tail 10, 12 -> 11.00 ± 1.41
    assert "| supervised | – | 2 of 2 | 31.00 ± 1.41 | 32.00 ± 1.41 | 41.00 ± 1.41 | 11.00 ± 1.41 |" in md
    # ael: 40, 44 -> 42.00 ± 2.83; tail 20, 30 -> 25.00 ± 7.07
    assert "| ael | – | 2 of 2 | 42.00 ± 2.83 | 43.00 ± 2.83 | 52.00 ± 2.83 | 25.00 ± 7.07 |" in md
    # per-class means: road (80 + 90) / 2, car = tail
    assert "| supervised | – | 85.00 | 11.00 |" in md and "| ael | – | 90.00 | 25.00 |" in md
    assert "with `trainer.max_steps=100`" in md
    assert md.index("## compare_synthscapes: comparison") < md.index("## compare_synthscapes (method=supervised)")


@pytest.mark.slow
def test_two_methods_two_seeds_multirun_then_report(compose_cfg, synth_root, tmp_path):
    logs = tmp_path / "logs"
    overrides = [o for o in tiny_overrides(synth_root, tmp_path) if not o.startswith("paths.")]
    cmd = [sys.executable, "-m", "semiseg_lit", "-m", "+experiment=compare_synthscapes", "method=supervised,eln",
           "seed=0,1", *overrides, f"paths.log_dir={logs}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (sweep,) = (logs / "train" / "multiruns" / "compare_synthscapes").iterdir()
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir()), key=lambda p: int(p.name))
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    configs = [OmegaConf.load(job / "config_resolved.yaml") for job in jobs]
    assert [(c.method.name, c.seed) for c in configs] == [("supervised", 0), ("supervised", 1), ("eln", 0), ("eln", 1)]
    first = shared(configs[0])
    assert all(shared(c) | {"seed": 0} == first for c in configs)

    run_task(compose_cfg(["task=report", f"input={sweep}"]))
    md = (sweep / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith(("| supervised |", "| eln |"))]
    # the summary table (2 rows, 2 of 2 runs each, mean ± std) and the per-class table (2 rows)
    summary = [r for r in rows if "2 of 2" in r]
    assert [r.split(" | ")[0] for r in summary] == ["| supervised", "| eln"]
    assert all(r.count("±") == 4 for r in summary)  # last, best, head, tail mIoU
    assert "## compare_synthscapes (method=supervised)" in md and "## compare_synthscapes (method=eln)" in md
    assert "Per-class IoU" in md and "| method | setting | road |" in md
    stats = [r for r in csv.DictReader(open(sweep / "report.csv")) if r["row"] in ("mean", "std")]
    assert [(r["method"], r["row"]) for r in stats] == [("supervised", "mean"), ("supervised", "std"),
                                                        ("eln", "mean"), ("eln", "std")]
    assert all(r["last_miou"] and r["tail_miou"] for r in stats)
