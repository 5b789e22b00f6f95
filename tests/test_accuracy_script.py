"""benchmarks/accuracy.py --merge: one table from several result files (no training)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(seed: int, miou: float) -> dict:
    per_class = {"road": miou, "pole": miou / 2}
    return {"miou": miou, "head_miou": miou, "tail_miou": miou / 2, "per_class_iou": per_class,
            "seconds": 100.0, "seed": seed}


def test_merge_prints_one_table_with_every_seed_and_refuses_a_seed_twice(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"supervised": [_run(0, 0.30)], "ELN": [_run(0, 0.20)]}))
    b.write_text(json.dumps({"supervised": [_run(2, 0.34), _run(1, 0.32)]}))
    cmd = [sys.executable, str(REPO / "benchmarks" / "accuracy.py"), "--merge", str(a), str(b)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    # supervised: 3 seeds, mean 32.0, sample std 2.0, per seed in seed order; ELN: its one seed
    assert "| supervised | 3 | 32.0 ± 2.0 | 32.0 ± 2.0 | 16.0 ± 1.0 | 30.0, 32.0, 34.0 | 100 s |" in out
    assert "| ELN | 1 | 20.0 | 20.0 | 10.0 | 20.0 | 100 s |" in out
    assert "| supervised | 32.0 ± 2.0 | 16.0 ± 1.0 |" in out  # per-class table
    b.write_text(json.dumps({"supervised": [_run(0, 0.31)]}))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode != 0 and "'supervised' seed 0 is in more than one file" in proc.stderr


def _accuracy_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("accuracy_script", REPO / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _makespan(jobs: list[tuple[str, int]], cost: dict[str, float], lanes: int) -> float:
    """End time of greedy list scheduling: each job goes to the lane that frees first."""
    free = [0.0] * lanes
    for name, _ in jobs:
        i = free.index(min(free))
        free[i] += cost[name]
    return max(free)


def test_jobs_run_longest_rows_first_and_end_sooner_than_seed_major():
    acc = _accuracy_module()
    rows, seeds = acc.DEFAULT_ROWS, [0, 1, 2]
    jobs = acc.job_order(rows, seeds, {})
    assert jobs[:3] == [("ELN", 0), ("ELN", 1), ("ELN", 2)]
    assert jobs[-3:] == [("supervised", 0), ("supervised", 1), ("supervised", 2)]
    assert sorted(jobs) == sorted((r, s) for r in rows for s in seeds)
    # run times of sessions 9-10 (s): supervised 310, mean-teacher CutMix 781, AEL 750, ELN 1306 (ResNet-18 trunk)
    secs = {"supervised": 310.0, "mean-teacher CutMix": 781.0, "AEL": 750.0, "ELN": 1306.0}
    seed_major = [(r, s) for s in seeds for r in rows]
    assert round(_makespan(jobs, secs, 2)) == 4763          # 79.4 min: ELN, ELN | ELN, MT, MT | ...
    assert round(_makespan(seed_major, secs, 2)) == 5234    # 87.2 min: ELN seed 2 alone at the end
    # --row-seeds: an expensive row for fewer seeds
    assert acc.job_order(rows, seeds, {"ELN": [0]})[:2] == [("ELN", 0), ("mean-teacher CutMix", 0)]
