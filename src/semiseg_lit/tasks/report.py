"""``task=report``: the table of a multirun sweep beside the published numbers.

``python -m semiseg_lit task=report input=<sweep dir>`` finds every run below the folder (a folder with
``config_resolved.yaml`` or ``.hydra/config.yaml``), reads its ``metrics.json`` (``miou``/``step``, head /
tail mIoU and per-class IoU of the last model, ``best.miou``/``best.step`` of the best validation) and
prints one Markdown table per experiment, method and setting (when the sweep varies more than the seeds
and the method): last and best mIoU per seed, mean ± sample standard deviation over the finished runs,
and the published mIoU with its source (``published_results.yaml``). An experiment with several methods
or settings (a method comparison, ``+experiment=compare_<dataset> method=a,b``; README "Compare methods")
first gets a summary: one row per method (× setting) with mean ± std of last / best / head / tail mIoU
over its seeds, and the mean per-class IoU. The same tables go to ``<sweep>/report.md`` and the rows to
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
# overrides that tell runs of one setting apart without changing the setting (the method is a column of
# its own: `method=a,b` gives one group per method, not a setting)
_RUN_KEYS = ("seed", "data.split_seed", "data.root", "experiment", "ckpt_path", "task", "input", "output", "method")
_RUN_PREFIXES = ("paths.", "hydra.", "logger.", "hydra/")


@dataclass
class RunResult:
    """One run of a sweep (mIoU as fractions, as in ``metrics.json``; None = not available)."""

    run_dir: Path
    experiment: str
    method: str | None
    setting: str  # the overrides that tell this run's group apart (see find_runs)
    seed: int | None
    split_seed: int | None
    parity: str | None
    last_miou: float | None
    last_step: int | None
    best_miou: float | None
    best_step: int | None
    # the last model's head / tail mIoU and per-class IoU {class name: IoU} (empty when not written)
    head_miou: float | None = None
    tail_miou: float | None = None
    per_class_iou: dict[str, float] | None = None
    # the setting's overrides, and those every run of the experiment shares (not part of ``setting``)
    overrides: tuple[str, ...] = ()
    common: tuple[str, ...] = ()


def load_published(path: Path = PUBLISHED_FILE) -> dict[str, dict[str, Any]]:
    """``{experiment: {"miou", "table", "source"}}`` with the source's full citation."""
    data = yaml.safe_load(path.read_text())
    sources = data.get("sources", {})
    return {name: {**entry, "source": sources.get(entry.get("source"), entry.get("source"))}
            for name, entry in (data.get("experiments") or {}).items()}


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def setting_overrides(overrides: list[str]) -> tuple[str, ...]:
    """A run's command-line overrides minus seeds, paths, the experiment and the method (sorted)."""
    return tuple(sorted(o for o in overrides if _override_key(o) not in _RUN_KEYS
                        and not _override_key(o).startswith(_RUN_PREFIXES)))


def run_setting(overrides: list[str]) -> str:
    """The setting a run belongs to: its command-line overrides minus seeds, paths, the experiment and the method."""
    return ",".join(setting_overrides(overrides))


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
    extra: dict[str, Any] = {}
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text())
            last = (float(metrics["miou"]), int(metrics["step"]))
            if metrics.get("best"):
                best = (float(metrics["best"]["miou"]), int(metrics["best"]["step"]))
            extra = {k: float(metrics[k]) for k in ("head_miou", "tail_miou") if metrics.get(k) is not None}
            extra["per_class_iou"] = {str(k): float(v) for k, v in (metrics.get("per_class_iou") or {}).items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{metrics_file}: not a metrics.json written by task=train ({type(exc).__name__}: "
                             f"{exc}); remove or fix the file") from None
    data, method = cfg.get("data") or {}, cfg.get("method") or {}
    return RunResult(run_dir=run_dir, experiment=str(cfg.get("name", run_dir.name)),
                     method=str(method["name"]) if method.get("name") else None, setting=run_setting(overrides),
                     overrides=setting_overrides(overrides),
                     seed=cfg.get("seed"), split_seed=data.get("split_seed"), parity=cfg.get("parity"),
                     last_miou=last[0] if last else None, last_step=last[1] if last else None,
                     best_miou=best[0] if best else None, best_step=best[1] if best else None, **extra)


def find_runs(sweep: Path) -> list[RunResult]:
    """Every run folder below ``sweep`` (sorted by path; Hydra's job folders 0, 1, ... numerically)."""
    dirs = {p.parent for p in sweep.rglob("config_resolved.yaml")}
    dirs |= {p.parent.parent for p in sweep.rglob(".hydra/config.yaml")}

    def order(p: Path) -> tuple:
        return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in p.relative_to(sweep).parts)

    runs = [read_run(d) for d in sorted(dirs, key=order)]
    drop_common_overrides(runs)
    return runs


def drop_common_overrides(runs: list[RunResult]) -> None:
    """An experiment with several runs: the overrides all its runs share (e.g. ``data.root``, a shorter
    schedule given to the whole sweep) leave ``setting`` and go to ``common``; ``setting`` keeps what
    varies (``method.ael.alpha=0.5``), so a sweep's groups are told apart by what the sweep varied."""
    by_experiment: dict[str, list[RunResult]] = {}
    for run in runs:
        by_experiment.setdefault(run.experiment, []).append(run)
    for group in by_experiment.values():
        if len(group) < 2:
            continue
        common = set.intersection(*(set(r.overrides) for r in group))
        for r in group:
            r.setting = ",".join(o for o in r.overrides if o not in common)
            r.common = tuple(sorted(common))


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


GroupKey = tuple[str, "str | None", str]  # (experiment, method, setting)


def group_runs(runs: list[RunResult]) -> dict[GroupKey, list[RunResult]]:
    """Runs by (experiment, method, setting), in the order of their first run (the sweep's job order)."""
    groups: dict[GroupKey, list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.experiment, run.method, run.setting), []).append(run)
    return groups


def _finished(group: list[RunResult], attr: str) -> list[float]:
    return [getattr(r, attr) for r in group if r.last_miou is not None and getattr(r, attr) is not None]


def _label(method: str | None, setting: str) -> str:
    return ", ".join(x for x in (f"method={method}" if method else "", setting) if x)


def class_means(group: list[RunResult]) -> dict[str, float]:
    """Per-class IoU of the last models, averaged over the finished runs that report the class."""
    names: dict[str, list[float]] = {}
    for r in group:
        if r.last_miou is None:
            continue
        for name, iou in (r.per_class_iou or {}).items():
            names.setdefault(name, []).append(iou)
    return {name: statistics.mean(values) for name, values in names.items()}


def comparison_table(experiment: str, groups: dict[GroupKey, list[RunResult]],
                     published: dict[str, dict[str, Any]]) -> list[str]:
    """One row per method (x setting) of ``experiment``: mean ± std over its seeds, then mean per-class IoU."""
    pub = published.get(experiment)
    lines = [f"## {experiment}: comparison", "",
             "One row per method (and setting); mean ± sample std over the finished runs (seeds). head / tail = "
             "mIoU over the dataset's head / tail classes (data.head_classes / tail_classes), last model.", "",
             "| method | setting | runs | last mIoU | best mIoU | head mIoU | tail mIoU |", "|---|---|---:|---:|---:|---:|---:|"]
    for (_, method, setting), group in groups.items():
        lines.append(f"| {method or '–'} | {setting or '–'} | {len(_finished(group, 'last_miou'))} of {len(group)} | "
                     f"{mean_std(_finished(group, 'last_miou'))} | {mean_std(_finished(group, 'best_miou'))} | "
                     f"{mean_std(_finished(group, 'head_miou'))} | {mean_std(_finished(group, 'tail_miou'))} |")
    if pub is not None:
        lines.append(f"| **published** | | | **{float(pub['miou']):.2f}** | | | |")
    common = next(iter(groups.values()))[0].common
    lines += ["", "Same for every row: the experiment's config" + (
        f" with {', '.join(f'`{o}`' for o in common)}" if common else "") + "."]
    means = {key: class_means(group) for key, group in groups.items()}
    classes = list(dict.fromkeys(name for m in means.values() for name in m))
    if classes:
        lines += ["", "Per-class IoU (%), last model, mean over the finished runs:", "",
                  "| method | setting | " + " | ".join(classes) + " |", "|---|---|" + "---:|" * len(classes)]
        for (_, method, setting), m in means.items():
            lines.append(f"| {method or '–'} | {setting or '–'} | " + " | ".join(pct(m.get(c)) for c in classes) + " |")
    lines.append("")
    return lines


def markdown_report(runs: list[RunResult], published: dict[str, dict[str, Any]], sweep: Path) -> str:
    lines = [f"# Sweep report: {sweep}", "",
             "mIoU (%) on the validation set; last = the model at the end of training, best = the best "
             "in-training validation (`checkpoints/best.ckpt`). mean ± sample std over the finished runs.", ""]
    groups = group_runs(runs)
    by_experiment: dict[str, dict[GroupKey, list[RunResult]]] = {}
    for key, group in groups.items():
        by_experiment.setdefault(key[0], {})[key] = group
    for experiment, exp_groups in by_experiment.items():
        several_methods = len({method for _, method, _ in exp_groups}) > 1
        if len(exp_groups) > 1:
            lines += comparison_table(experiment, exp_groups, published)
        for (_, method, setting), group in exp_groups.items():
            pub = published.get(experiment)
            label = _label(method if several_methods else None, setting)
            title = f"## {experiment}" + (f" ({label})" if label else "")
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


CSV_COLUMNS = ("experiment", "method", "setting", "row", "seed", "split_seed", "parity", "last_miou", "last_step",
               "best_miou", "best_step", "head_miou", "tail_miou", "published_miou", "run_dir")


def csv_rows(runs: list[RunResult], published: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run (mIoU in %), then ``mean`` and ``std`` rows per experiment/method/setting."""
    rows: list[dict[str, Any]] = []

    def fmt(v: float | None) -> str:
        return "" if v is None else f"{100 * v:.4f}"

    for (experiment, method, setting), group in group_runs(runs).items():
        pub = published.get(experiment, {}).get("miou", "")
        for r in group:
            rows.append(dict(experiment=experiment, method=method or "", setting=setting, row="run", seed=r.seed,
                             split_seed=r.split_seed, parity=r.parity or "", last_miou=fmt(r.last_miou),
                             last_step=r.last_step or "", best_miou=fmt(r.best_miou), best_step=r.best_step or "",
                             head_miou=fmt(r.head_miou) if r.last_miou is not None else "",
                             tail_miou=fmt(r.tail_miou) if r.last_miou is not None else "",
                             published_miou=pub, run_dir=str(r.run_dir)))
        lasts = [r.last_miou for r in group if r.last_miou is not None]
        bests = [r.best_miou for r in group if r.best_miou is not None]
        heads, tails = _finished(group, "head_miou"), _finished(group, "tail_miou")
        for stat, fn in (("mean", statistics.mean), ("std", statistics.stdev)):
            need = 1 if stat == "mean" else 2

            def agg(values: list[float], fn=fn, need=need) -> str:
                return fmt(fn(values)) if len(values) >= need else ""

            rows.append(dict(experiment=experiment, method=method or "", setting=setting, row=stat, seed="",
                             split_seed="", parity="", last_miou=agg(lasts), last_step="", best_miou=agg(bests),
                             best_step="", head_miou=agg(heads), tail_miou=agg(tails), published_miou=pub,
                             run_dir=""))
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
