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
