"""``task=check_data``: walk a dataset and report split counts, the class histogram and every
unreadable or inconsistent file (nothing is trained).

``python -m semiseg_lit task=check_data data=cityscapes data.root=/data/cityscapes``

Returns the number of problems found; the command line exits with status 1 when it is not 0, so
scripts can gate on it (``__main__``).
"""

from __future__ import annotations

import json
import logging

import numpy as np
from omegaconf import DictConfig

from semiseg_lit.data.datasets import scan_samples
from semiseg_lit.tasks.common import build_datamodule, output_dir

log = logging.getLogger(__name__)


def plural(n: int, word: str) -> str:
    """``1 problem``, ``0 problems``, ``3 problems``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def check_data(cfg: DictConfig) -> int:
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    part = datamodule.resolve_partition()
    names = datamodule.class_info.names
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"dataset": cfg.data.name, "root": cfg.data.root, "partition": part.source, "splits": {}}
    problems_total = 0
    lines = [f"dataset {cfg.data.name} at {cfg.data.root}", f"partition: {part.source}"]
    for split, samples in (("labeled", part.labeled), ("unlabeled", part.unlabeled), ("val", part.val)):
        rep = scan_samples(samples, datamodule.num_classes, ignore_index=int(cfg.data.ignore_index),
                           label_remap=dict(cfg.data.label_remap) if cfg.data.label_remap else None)
        hist = np.asarray(rep.histogram, dtype=np.int64)
        total = max(1, int(hist.sum()))
        report["splits"][split] = {
            "images": len(samples), "masks": rep.n_masks,
            "class_pixels": {n: int(c) for n, c in zip(names, hist)}, "ignore_pixels": int(rep.ignore_pixels),
            "problems": [{"file": str(f), "problem": m} for f, m in rep.problems]}
        problems_total += len(rep.problems)
        lines.append(f"\n[{split}] {plural(len(samples), 'image')}, {plural(rep.n_masks, 'mask')}, "
                     f"{plural(len(rep.problems), 'problem')}")
        if rep.n_masks:
            lines.append("  class histogram (share of labeled pixels):")
            for n, c in zip(names, hist):
                lines.append(f"    {n:<16s} {100 * c / total:7.3f}%")
        for f, m in rep.problems[:50]:
            lines.append(f"  PROBLEM {f}: {m}")
        if len(rep.problems) > 50:
            lines.append(f"  ... and {len(rep.problems) - 50} more (see the JSON report)")
    path = out / "check_data.json"
    path.write_text(json.dumps(report, indent=2))
    lines.append(f"\n{plural(problems_total, 'problem')} found; report written to {path}")
    print("\n".join(lines), flush=True)
    return problems_total
