"""``task=report input=<sweep>``: per-experiment tables of last and best mIoU per seed, mean ± std,
beside the published number, on a fake multirun folder built here (Hydra's layout: <sweep>/<job>/)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from semiseg_lit.tasks import run_task
from semiseg_lit.tasks.report import load_published


def fake_run(job: Path, name: str, seed: int, split_seed: int, last: float | None, best: float | None,
             overrides: list[str], parity: str = "reference") -> None:
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {"name": name, "seed": seed, "parity": parity, "data": {"split_seed": split_seed}}))
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if last is not None:
        metrics = {"miou": last, "pixel_acc": 0.9, "per_class_iou": {}, "step": 32600,
                   "best": None if best is None else {"miou": best, "step": 1630 * split_seed}}
        (job / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "multiruns" / "ael_cityscapes_1_8" / "2026-01-01_00-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    exp = ["+experiment=ael_cityscapes_1_8", "data.root=/data/cityscapes"]
    fake_run(root / "0", "ael_cityscapes_1_8", 0, 1, 0.70, 0.75, [*exp, "data.split_seed=1"])
    fake_run(root / "1", "ael_cityscapes_1_8", 0, 2, 0.72, 0.77, [*exp, "data.split_seed=2"])
    fake_run(root / "2", "ael_cityscapes_1_8", 0, 3, None, None, [*exp, "data.split_seed=3"])  # not finished
    fake_run(root / "10", "supervised_voc_92", 4, 0, 0.6, 0.61, ["+experiment=supervised_voc_92", "seed=4"])
    return root


def test_report_tables_and_files(compose_cfg, sweep, capsys):
    run_task(compose_cfg(["task=report", f"input={sweep}"]))
    printed = capsys.readouterr().out
    md = (sweep / "report.md").read_text()
    assert md.strip() in printed
    # AEL Cityscapes 1/8: last 70, 72 -> 71.00 ± 1.41 (sample std sqrt(2)); best 75, 77 -> 76.00 ± 1.41
    assert "## ael_cityscapes_1_8\n" in md
    assert "| 0 | 1 | reference | 70.00 | 32600 | 75.00 | 1630 |" in md
    assert "| 0 | 3 | reference | – | not finished | – | – |" in md
    assert "| **mean ± std** (2 of 3 runs) | | | **71.00 ± 1.41** | | **76.00 ± 1.41** | |" in md
    assert "| **published** | | | **77.90** | | | |" in md and "Table 1, AEL, 1/8" in md
    # a single run: no ±; an experiment without a published number says so
    assert "## supervised_voc_92\n" in md and "**60.00**" in md and "no published number" in md
    assert md.index("ael_cityscapes_1_8") < md.index("supervised_voc_92")  # job folders in numeric order
    rows = list(csv.DictReader(open(sweep / "report.csv")))
    ael = [r for r in rows if r["experiment"] == "ael_cityscapes_1_8"]
    assert [r["row"] for r in ael] == ["run", "run", "run", "mean", "std"]
    assert ael[0]["last_miou"] == "70.0000" and ael[0]["best_step"] == "1630" and ael[0]["published_miou"] == "77.9"
    assert ael[3]["last_miou"] == "71.0000" and ael[4]["best_miou"] == "1.4142" and ael[2]["last_miou"] == ""


def test_report_is_rewritten_and_runs_are_untouched(compose_cfg, sweep):
    (sweep / "report.md").write_text("stale")
    before = (sweep / "0" / "metrics.json").read_text()
    run_task(compose_cfg(["task=report", f"input={sweep}"]))
    assert (sweep / "report.md").read_text().startswith("# Sweep report")
    assert (sweep / "0" / "metrics.json").read_text() == before


def test_settings_other_than_seeds_get_their_own_table(compose_cfg, tmp_path):
    root = tmp_path / "sweep"
    for k, alpha in enumerate(("0.5", "1.0")):
        fake_run(root / str(k), "ael_synthscapes", 0, 0, 0.3 + k / 10, 0.4, [f"method.ael.alpha={alpha}", "seed=0"])
    run_task(compose_cfg(["task=report", f"input={root}"]))
    md = (root / "report.md").read_text()
    assert "## ael_synthscapes (method.ael.alpha=0.5)" in md and "## ael_synthscapes (method.ael.alpha=1.0)" in md


def test_bad_input_names_the_problem(compose_cfg, tmp_path, sweep):
    with pytest.raises(ValueError, match="task=report needs input="):
        run_task(compose_cfg(["task=report"]))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        run_task(compose_cfg(["task=report", f"input={tmp_path / 'missing'}"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no run found"):
        run_task(compose_cfg(["task=report", f"input={tmp_path / 'empty'}"]))
    (sweep / "1" / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"1/metrics.json: not a metrics.json written by task=train"):
        run_task(compose_cfg(["task=report", f"input={sweep}"]))


def test_published_numbers_come_from_one_file_with_their_source():
    pub = load_published()
    assert pub["ael_cityscapes_1_32"]["miou"] == 74.28 and pub["ael_voc_blend_1_2"]["miou"] == 80.29
    assert pub["supervised_cityscapes_1_8"]["miou"] == 69.81 and pub["eln_voc_blend_1_8"]["miou"] == 75.1
    assert all(p["source"].startswith(("Hu et al.", "Kwon & Kwak", "Yang, Zhao & Zhao")) and p["table"]
               for p in pub.values())
    # UniMatch V2 README, DINOv2-Base (docs/unimatch_v2.md §5)
    assert pub["unimatch_v2_cityscapes_1_16"]["miou"] == 83.6 and pub["unimatch_v2_voc_1464"]["miou"] == 90.8
