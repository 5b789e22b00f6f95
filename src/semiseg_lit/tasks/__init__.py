"""Tasks behind ``python -m semiseg_lit task=...``: one small module per task."""

from __future__ import annotations

from omegaconf import DictConfig

from semiseg_lit.config import TASKS


def run_task(cfg: DictConfig) -> float | None:
    task = cfg.task
    if task == "train":
        from semiseg_lit.tasks.train import train

        return train(cfg)
    if task == "eval":
        from semiseg_lit.tasks.evaluate import evaluate

        return evaluate(cfg)
    if task == "check_data":
        from semiseg_lit.tasks.check_data import check_data

        return check_data(cfg)
    raise ValueError(f"task={task!r} is not one of {', '.join(TASKS)}")
