"""Accuracy benchmark on synthscapes: supervised vs mean-teacher CutMix vs AEL (and ELN with ``--rows ELN``).

Each row trains the same network, data, augmentation and schedule (the ``*_synthscapes``
experiments) for every seed, through the real CLI, and reads the run's ``metrics.json``.

    python benchmarks/accuracy.py --seeds 0 1 [--steps 800] [--out BENCHMARKS_accuracy.json] [-- extra overrides]

Without ``--steps`` every row runs its experiment's schedule (400 steps): about 27 minutes for the three
default rows and two seeds on 2 CPU cores.

"mean-teacher CutMix" is AEL with every AEL component off (no copy-paste, random-box CutMix,
no equalization sampling, no re-weighting): the CutMix-Seg-like basic framework of Table 3.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROWS = {
    "supervised": ["+experiment=supervised_synthscapes"],
    "mean-teacher CutMix": ["+experiment=ael_synthscapes", "method.ael.copy_paste=false",
                            "method.ael.cutmix_adaptive=false", "method.ael.sampling=false",
                            "method.ael.reweight=false"],
    "AEL": ["+experiment=ael_synthscapes"],
    "ELN": ["+experiment=eln_synthscapes"],
}
# the AEL table (issue "AEL" item 8, <= 30 min on 2 CPU cores for 2 seeds); ELN with --rows ELN
DEFAULT_ROWS = ["supervised", "mean-teacher CutMix", "AEL"]


def run(name: str, overrides: list[str], seed: int, steps: int | None, out_root: Path, extra: list[str]) -> dict:
    out = out_root / f"{name.replace(' ', '_')}_seed{seed}"
    cmd = [sys.executable, "-m", "semiseg_lit", *overrides, f"seed={seed}", f"hydra.run.dir={out}",
           "logger.wandb.enabled=false", "trainer.enable_progress_bar=false", *extra]
    if steps:
        cmd.append(f"trainer.max_steps={steps}")
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["seconds"] = time.time() - t0
    return metrics


def mean_spread(values: list[float]) -> str:
    spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.1f}{spread}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=None, help="override trainer.max_steps for every row")
    ap.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=list(ROWS))
    ap.add_argument("--out-dir", type=Path, default=Path("logs/benchmarks/accuracy"))
    ap.add_argument("--out", type=Path, default=None, help="write all results as JSON")
    ap.add_argument("extra", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args()
    results: dict[str, list[dict]] = {}
    for name in args.rows:
        for seed in args.seeds:
            m = run(name, ROWS[name], seed, args.steps, args.out_dir, args.extra)
            results.setdefault(name, []).append(m)
            print(f"{name:22s} seed {seed}: mIoU {100 * m['miou']:.2f}  head {100 * m['head_miou']:.2f}  "
                  f"tail {100 * m['tail_miou']:.2f}  ({m['seconds']:.0f} s)", flush=True)
    print("\n| method | seeds | mIoU | head mIoU | tail mIoU | time / run |\n|---|---|---|---|---|---|")
    for name, ms in results.items():
        secs = statistics.mean(m["seconds"] for m in ms)
        cells = " | ".join(mean_spread([100 * m[k] for m in ms]) for k in ("miou", "head_miou", "tail_miou"))
        print(f"| {name} | {len(ms)} | {cells} | {secs:.0f} s |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
