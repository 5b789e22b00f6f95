"""Tasks behind ``python -m semiseg_lit task=...``: one small module per task."""

from __future__ import annotations

from omegaconf import DictConfig

from semiseg_lit.config import PARITY_MODES, TASKS, check_schema
from semiseg_lit.errors import UserError, checking_input


def run_task(cfg: DictConfig) -> float | None:
    with checking_input():
        check_schema(cfg)  # before any work: keys added with `+key=value` must exist in the schema
        if cfg.get("parity", "reference") not in PARITY_MODES:
            raise ValueError(f"parity={cfg.parity!r}: expected one of {', '.join(PARITY_MODES)} (reference = the "
                             "official code's behaviour, clean = the deliberate fixes; README 'Deliberate differences')")
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
    if task == "predict":
        from semiseg_lit.tasks.predict import predict

        return predict(cfg)
    if task == "report":
        from semiseg_lit.tasks.report import report_sweep

        return report_sweep(cfg)
    if task == "export":
        from semiseg_lit.tasks.export import export

        return export(cfg)
    raise UserError(f"task={task!r} is not one of {', '.join(TASKS)}")
