"""Command-line entry: ``python -m semiseg_lit [+experiment=NAME] [key=value ...]``.

Dispatches on ``task`` (train | eval | predict | export | check_data). The config directory is the package's
``conf/`` (a copy of the repository's ``conf/`` inside wheels), found relative to this file so it
works from a source checkout, an editable install and an installed wheel alike.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from semiseg_lit.config import register_configs

CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")

register_configs()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from semiseg_lit.tasks import run_task

    result = run_task(cfg)
    if cfg.task == "check_data" and result:  # problems found: a non-zero exit status for scripts
        raise SystemExit(1)
    return result


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    sys.exit(main())
