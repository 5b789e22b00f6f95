"""``task=report``: the table of a multirun sweep beside the published numbers.

``python -m semiseg_lit task=report input=<sweep dir>`` finds every run below the folder (a folder with
``config_resolved.yaml`` or ``.hydra/config.yaml``), reads its ``metrics.json`` (``miou``/``step`` of
the last model, ``best.miou``/``best.step`` of the best validation) and prints one Markdown table per
experiment (per setting, when the sweep varies more than the seeds): last and best mIoU per seed,
mean ± sample standard deviation over the finished runs, and the published mIoU with its source
(``published_results.yaml``). The same tables go to ``<sweep>/report.md`` and the rows to
``<sweep>/report.csv``; both are derived files and are rewritten on every call.
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

log = logging.getLogger(__name__)

PUBLISHED_FILE = Path(__file__).resolve().parents[1] / "published_results.yaml"
# overrides that tell runs of one setting apart without changing the setting
_RUN_KEYS = ("seed", "data.split_seed", "data.root", "experiment", "ckpt_path", "task", "input", "output")
_RUN_PREFIXES = ("paths.", "hydra.", "logger.", "hydra/")


@dataclass
class RunResult:
    """One run of a sweep (mIoU as fractions, as in ``metrics.json``; None = not available)."""

    run_dir: Path
    experiment: str
    setting: str
    seed: int | None
    split_seed: int | None
    parity: str | None
    last_miou: float | None
    last_step: int | None
    best_miou: float | None
    best_step: int | None


def load_published(path: Path = PUBLISHED_FILE) -> dict[str, dict[str, Any]]:
    """``{experiment: {"miou", "table", "source"}}`` with the source's full citation."""
    data = yaml.safe_load(path.read_text())
    sources = data.get("sources", {})
    return {name: {**entry, "source": sources.get(entry.get("source"), entry.get("source"))}
            for name, entry in (data.get("experiments") or {}).items()}


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def run_setting(overrides: list[str]) -> str:
    """The setting a run belongs to: its command-line overrides minus seeds, paths and the experiment."""
    kept = [o for o in overrides if _override_key(o) not in _RUN_KEYS
            and not _override_key(o).startswith(_RUN_PREFIXES)]
    return ",".join(sorted(kept))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the run's config ({exc}); remove the folder or fix the file") from None


def read_run(run_dir: Path) -> RunResult:
    """A run folder -> :class:`RunResult` (metrics.json missing = an unfinished run, mIoU None)."""
    config_file = run_dir / "config_resolved.yaml"
    if not config_file.is_file():
        config_file = run_dir / ".hydra" / "config.yaml"
    cfg = _read_yaml(config_file)
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in _read_yaml(overrides_file)] if overrides_file.is_file() else []
    metrics_file = run_dir / "metrics.json"
    last = best = None
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text())
            last = (float(metrics["miou"]), int(metrics["step"]))
            if metrics.get("best"):
                best = (float(metrics["best"]["miou"]), int(metrics["best"]["step"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{metrics_file}: not a metrics.json written by task=train ({type(exc).__name__}: "
                             f"{exc}); remove or fix the file") from None
    data = cfg.get("data") or {}
    return RunResult(run_dir=run_dir, experiment=str(cfg.get("name", run_dir.name)), setting=run_setting(overrides),
                     seed=cfg.get("seed"), split_seed=data.get("split_seed"), parity=cfg.get("parity"),
                     last_miou=last[0] if last else None, last_step=last[1] if last else None,
                     best_miou=best[0] if best else None, best_step=best[1] if best else None)


def find_runs(sweep: Path) -> list[RunResult]:
    """Every run folder below ``sweep`` (sorted by path; Hydra's job folders 0, 1, ... numerically)."""
    dirs = {p.parent for p in sweep.rglob("config_resolved.yaml")}
    dirs |= {p.parent.parent for p in sweep.rglob(".hydra/config.yaml")}

    def order(p: Path) -> tuple:
        return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in p.relative_to(sweep).parts)

    return [read_run(d) for d in sorted(dirs, key=order)]


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _cell(value: Any) -> str:
    return "–" if value is None else str(value)


def mean_std(values: list[float]) -> str:
    """``mean ± std`` in %, sample standard deviation (n - 1); ``–`` without values, no ± for one."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def group_runs(runs: list[RunResult]) -> dict[tuple[str, str], list[RunResult]]:
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.experiment, run.setting), []).append(run)
    return groups


def markdown_report(runs: list[RunResult], published: dict[str, dict[str, Any]], sweep: Path) -> str:
    lines = [f"# Sweep report: {sweep}", "",
             "mIoU (%) on the validation set; last = the model at the end of training, best = the best "
             "in-training validation (`checkpoints/best.ckpt`). mean ± sample std over the finished runs.", ""]
    for (experiment, setting), group in group_runs(runs).items():
        pub = published.get(experiment)
        title = f"## {experiment}" + (f" ({setting})" if setting else "")
        lines += [title, "", "| seed | split_seed | parity | last mIoU | last step | best mIoU | best step |",
                  "|---:|---:|---|---:|---:|---:|---:|"]
        for r in group:
            lines.append(f"| {_cell(r.seed)} | {_cell(r.split_seed)} | {r.parity or '–'} | {pct(r.last_miou)} | "
                         f"{r.last_step if r.last_step is not None else 'not finished'} | {pct(r.best_miou)} | "
                         f"{r.best_step if r.best_step is not None else '–'} |")
        lasts = [r.last_miou for r in group if r.last_miou is not None]
        bests = [r.best_miou for r in group if r.best_miou is not None]
        lines.append(f"| **mean ± std** ({len(lasts)} of {len(group)} runs) | | | **{mean_std(lasts)}** | | "
                     f"**{mean_std(bests)}** | |")
        if pub is not None:
            lines.append(f"| **published** | | | **{float(pub['miou']):.2f}** | | | |")
        lines.append("")
        lines.append(f"Published: {pub['miou']} ({pub['table']}; {pub['source']})" if pub is not None
                     else "Published: no published number for this experiment.")
        lines.append("")
    return "\n".join(lines)


CSV_COLUMNS = ("experiment", "setting", "row", "seed", "split_seed", "parity", "last_miou", "last_step",
               "best_miou", "best_step", "published_miou", "run_dir")


def csv_rows(runs: list[RunResult], published: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run (mIoU in %), then ``mean`` and ``std`` rows per experiment/setting."""
    rows: list[dict[str, Any]] = []

    def fmt(v: float | None) -> str:
        return "" if v is None else f"{100 * v:.4f}"

    for (experiment, setting), group in group_runs(runs).items():
        pub = published.get(experiment, {}).get("miou", "")
        for r in group:
            rows.append(dict(experiment=experiment, setting=setting, row="run", seed=r.seed, split_seed=r.split_seed,
                             parity=r.parity or "", last_miou=fmt(r.last_miou), last_step=r.last_step or "",
                             best_miou=fmt(r.best_miou), best_step=r.best_step or "", published_miou=pub,
                             run_dir=str(r.run_dir)))
        lasts = [r.last_miou for r in group if r.last_miou is not None]
        bests = [r.best_miou for r in group if r.best_miou is not None]
        for stat, fn in (("mean", statistics.mean), ("std", statistics.stdev)):
            need = 1 if stat == "mean" else 2
            rows.append(dict(experiment=experiment, setting=setting, row=stat, seed="", split_seed="", parity="",
                             last_miou=fmt(fn(lasts)) if len(lasts) >= need else "", last_step="",
                             best_miou=fmt(fn(bests)) if len(bests) >= need else "", best_step="",
                             published_miou=pub, run_dir=""))
    return rows


def report_sweep(cfg: DictConfig) -> None:
    if not cfg.input:
        raise ValueError("task=report needs input=<multirun sweep folder> (e.g. logs/train/multiruns/<name>/<date>)")
    sweep = Path(str(cfg.input))
    if not sweep.is_dir():
        raise FileNotFoundError(f"input={sweep}: no such folder (give the multirun sweep folder)")
    runs = find_runs(sweep)
    if not runs:
        raise ValueError(f"input={sweep}: no run found (no config_resolved.yaml or .hydra/config.yaml below it); "
                         "give the folder of a `python -m semiseg_lit -m ...` sweep")
    published = load_published()
    text = markdown_report(runs, published, sweep)
    # derived files: rewritten on every call (the runs' own files are never touched)
    (sweep / "report.md").write_text(text + "\n")
    with open(sweep / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(runs, published))
    print(text, flush=True)
    print(f"\nwritten: {sweep / 'report.md'}, {sweep / 'report.csv'}", flush=True)
