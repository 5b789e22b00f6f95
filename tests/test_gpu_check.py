"""benchmarks/gpu_check.py: the CPU path of the prepared device check (``--device cpu --tiny``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_tiny_cpu_writes_a_complete_summary(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
                           "--threads", "1", "--budget", "900", "--out", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=1200)
    summary = json.loads((out / "summary.json").read_text())
    assert [p["part"] for p in summary["parts"]] == ["tests", "step_time", "data", "train"]
    status = {p["part"]: p["status"] for p in summary["parts"]}
    assert status == dict.fromkeys(status, "ok"), (status, proc.stdout[-3000:])
    assert proc.returncode == 0
    step = next(p for p in summary["parts"] if p["part"] == "step_time")["records"][0]
    assert step["method"] == "supervised" and step["step_s"] > 0 and step["floor_s"] > 0 and step["peak_mem_mb"] > 0
    data = next(p for p in summary["parts"] if p["part"] == "data")
    assert data["records"] and all(r["images_per_s"] > 0 for r in data["records"])
    assert data["loader_over_consumption"]  # loader rate against the measured step's consumption
    md = (out / "summary.md").read_text()
    assert "| step_time | ok |" in md and "## Step time" in md


def test_gpu_check_refuses_cuda_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cuda",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no CUDA device is visible" in proc.stderr and "Traceback" not in proc.stderr
