"""notebooks/quickstart.ipynb runs end to end (nbclient) and is stored without outputs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
BUDGET_S = 180  # the limit for CI (2 CPU cores)


def test_notebook_is_stored_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    # the kernel inherits this environment: its own output folder and dataset cache, no W&B, and one
    # thread per op (steady timing on a shared 2-core machine)
    monkeypatch.setenv("QUICKSTART_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("SEMISEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=BUDGET_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    start = time.monotonic()
    client.execute()
    elapsed = time.monotonic() - start
    print(f"quickstart notebook: {elapsed:.0f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    figures = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(figures) >= 5  # samples, Copy-Paste, CutMix, predictions, confidence bank
    for name in ("supervised/checkpoints/last.ckpt", "predictions/predictions.json", "ael/csv/metrics.csv"):
        assert (tmp_path / "work" / name).is_file(), name
    if os.environ.get("CI"):
        assert elapsed < BUDGET_S, f"the quickstart notebook took {elapsed:.0f} s (budget {BUDGET_S} s)"
