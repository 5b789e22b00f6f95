"""`pip install .` (a real wheel, not editable) ships the configs and `python -m semiseg_lit` finds them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_configs_and_cli_runs_from_it(tmp_path):
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheel_dir), str(REPO)], check=True, cwd=tmp_path)
    wheels = list(wheel_dir.glob("semiseg_lit-*.whl"))
    assert len(wheels) == 1
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheels[0])], check=True, cwd=tmp_path)
    assert (target / "semiseg_lit" / "conf" / "config.yaml").is_file()
    assert (target / "semiseg_lit" / "conf" / "experiment" / "supervised_synthscapes.yaml").is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    # run from an unrelated folder so nothing resolves through the source tree
    out = subprocess.run([sys.executable, "-c", "import semiseg_lit, sys; print(semiseg_lit.__file__)"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith(str(target))
    out = subprocess.run([sys.executable, "-m", "semiseg_lit", "--cfg", "job", "+experiment=supervised_synthscapes"],
                         env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "name: synthscapes" in out.stdout
    assert str(target) in subprocess.run(
        [sys.executable, "-c", "from semiseg_lit.__main__ import CONFIG_DIR; print(CONFIG_DIR)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True).stdout
