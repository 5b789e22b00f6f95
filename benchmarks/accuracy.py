"""Accuracy benchmark on synthscapes: supervised vs mean-teacher CutMix vs AEL vs ELN (and UniMatch V2).

Each row trains the same network, data, split, augmentation, schedule and evaluation (the
``*_synthscapes`` experiments) for every seed, through the real CLI, and reads the run's
``metrics.json``; only the method differs.

    python benchmarks/accuracy.py [--seeds 0 1 2] [--rows ...] [--jobs 2] [--steps N] [--model experiment|tiny-vit-dpt]
        [--out results.json] [-- overrides]
    python benchmarks/accuracy.py --row-seeds ELN=0          # an expensive row for fewer seeds
    python benchmarks/accuracy.py --merge a.json b.json     # one table from several --out files

``--jobs 2`` (the default) trains two runs at a time with one intra-op thread each (the 2-core
machine's cores split between them): on small CPU tensors this gives more runs per hour than one run on
two threads. Per-run wall times are then those of a half machine.

``--model tiny-vit-dpt`` trains every row on a tiny random-init ViT (patch 14, 96-d, 4 blocks) + DPT
(``model=dpt_dinov2_s`` with ``model.encoder_kwargs``) at an 84 crop instead of the experiments'
ResNet-18 DeepLabV3+: the DINOv2 + DPT path of each method on CPU (README "DINOv2 + DPT"); a random ViT
is no DINOv2, so its numbers say nothing about the pretrained network.

"mean-teacher CutMix" is AEL with every AEL component off (no copy-paste, random-box CutMix,
no equalization sampling, no re-weighting): the CutMix-Seg-like basic framework of AEL's Table 3.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROWS = {
    "supervised": ["+experiment=supervised_synthscapes"],
    "mean-teacher CutMix": ["+experiment=ael_synthscapes", "method.ael.copy_paste=false",
                            "method.ael.cutmix_adaptive=false", "method.ael.sampling=false",
                            "method.ael.reweight=false"],
    "AEL": ["+experiment=ael_synthscapes"],
    "ELN": ["+experiment=eln_synthscapes"],
    "UniMatch V2": ["+experiment=unimatch_v2_synthscapes"],
}
DEFAULT_ROWS = ["supervised", "mean-teacher CutMix", "AEL", "ELN"]  # the issue-16 table; UniMatch V2 by --rows
# wall time of one run of each row relative to a supervised run (two runs at a time, one thread each, on the
# 2-core machine; BENCHMARKS.md, sessions 9-10: 310 / 781 / 750 / 1096 s). UniMatch V2 not measured: AEL's.
RUN_COST = {"supervised": 1.0, "mean-teacher CutMix": 2.5, "AEL": 2.4, "ELN": 3.5, "UniMatch V2": 2.4}
# the network of every row: the experiments' (ResNet-18 DeepLabV3+) or a tiny random ViT + DPT
MODELS = {
    "experiment": [],
    "tiny-vit-dpt": ["model=dpt_dinov2_s", "model.encoder=tu-vit_small_patch14_dinov2", "model.encoder_weights=null",
                     "model.encoder_kwargs={embed_dim: 96, depth: 4, num_heads: 3}",
                     "model.dpt_intermediate_channels=[24,48,96,96]", "model.decoder_channels=32",
                     "model.aux_channels=32", "data.crop_size=84"],
}


def run(name: str, overrides: list[str], seed: int, steps: int | None, out_root: Path, extra: list[str],
        threads: int) -> dict:
    out = out_root / f"{name.replace(' ', '_')}_seed{seed}"
    cmd = [sys.executable, "-m", "semiseg_lit", *overrides, f"seed={seed}", f"hydra.run.dir={out}",
           "logger.wandb.enabled=false", "trainer.enable_progress_bar=false", "overwrite=true", *extra]
    if steps:
        cmd.append(f"trainer.max_steps={steps}")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["seconds"] = time.time() - t0
    metrics["seed"] = seed
    return metrics


def mean_spread(values: list[float]) -> str:
    spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.1f}{spread}"


def tables(results: dict[str, list[dict]]) -> str:
    """The summary table (mean ± std over seeds) and the per-class IoU table (mean over seeds)."""
    lines = ["| method | seeds | mIoU | head mIoU | tail mIoU | per seed (mIoU) | time / run |",
             "|---|---|---|---|---|---|---|"]
    for name, ms in results.items():
        secs = statistics.mean(m["seconds"] for m in ms)
        cells = " | ".join(mean_spread([100 * m[k] for m in ms]) for k in ("miou", "head_miou", "tail_miou"))
        per_seed = ", ".join(f"{100 * m['miou']:.1f}" for m in sorted(ms, key=lambda m: m["seed"]))
        lines.append(f"| {name} | {len(ms)} | {cells} | {per_seed} | {secs:.0f} s |")
    classes = list(next(iter(results.values()))[0]["per_class_iou"])
    lines += ["", "| method | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for name, ms in results.items():
        cells = " | ".join(mean_spread([100 * m["per_class_iou"][c] for m in ms]) for c in classes)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def merge(paths: list[Path]) -> dict[str, list[dict]]:
    """The rows of several ``--out`` files, in first-seen row order; a (row, seed) twice is refused."""
    results: dict[str, list[dict]] = {}
    for path in paths:
        for name, runs in json.loads(path.read_text()).items():
            row = results.setdefault(name, [])
            for m in runs:
                if any(r["seed"] == m["seed"] for r in row):
                    raise SystemExit(f"--merge: {name!r} seed {m['seed']} is in more than one file ({path})")
                row.append(m)
    return {name: sorted(runs, key=lambda m: m["seed"]) for name, runs in results.items() if runs}


def job_order(rows: list[str], seeds: list[int], row_seeds: dict[str, list[int]]) -> list[tuple[str, int]]:
    """Every (row, seed) to train, longest runs first (``RUN_COST``), seeds in order within a row.

    With ``--jobs`` lanes each taking the next job as it frees, longest-first keeps a lane from starting
    an ELN run while the other has little left: for the four rows x 3 seeds in two lanes it ends at
    79 min against 87 for the seed-major order (run times of sessions 9-10, ELN with a ResNet-18 trunk). An interrupted table keeps
    whole rows; ``--merge`` joins the rest run later."""
    jobs = [(name, seed) for name in rows for seed in seeds if seed in row_seeds.get(name, seeds)]
    return sorted(jobs, key=lambda job: -RUN_COST.get(job[0], 1.0))  # stable: row, then seed order kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="override trainer.max_steps for every row")
    ap.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=list(ROWS))
    ap.add_argument("--model", default="experiment", choices=list(MODELS),
                    help="the experiments' network, or a tiny random ViT + DPT (the DPT path on CPU)")
    ap.add_argument("--jobs", type=int, default=2, help="runs trained at the same time (cores split evenly)")
    ap.add_argument("--out-dir", type=Path, default=Path("logs/benchmarks/accuracy"))
    ap.add_argument("--out", type=Path, default=None, help="write all results as JSON")
    ap.add_argument("--row-seeds", nargs="+", default=[], metavar="ROW=S,S",
                    help="fewer seeds for a row than --seeds, e.g. ELN=0 (an expensive row); the row must be in --rows")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                    help="train nothing: print the tables of the runs in these --out files together (e.g. a "
                         "row run for fewer seeds than the others); a (row, seed) in several files is an error")
    ap.add_argument("extra", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args()
    if args.merge:
        print(tables(merge(args.merge)))
        return
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    row_seeds = {}
    for item in args.row_seeds:
        name, _, seeds = item.partition("=")
        if name not in args.rows or not seeds:
            raise SystemExit(f"--row-seeds {item!r}: expected ROW=S[,S...] with ROW one of --rows {args.rows}")
        row_seeds[name] = [int(x) for x in seeds.split(",")]
    jobs = job_order(args.rows, args.seeds, row_seeds)
    t0 = time.time()
    results: dict[str, list[dict]] = {name: [] for name in args.rows}

    def one(job: tuple[str, int]) -> tuple[str, dict]:
        name, seed = job
        out_dir = args.out_dir if args.model == "experiment" else args.out_dir / args.model
        return name, run(name, ROWS[name] + MODELS[args.model], seed, args.steps, out_dir, args.extra, threads)

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for name, m in pool.map(one, jobs):
            results[name].append(m)
            print(f"{name:22s} seed {m['seed']}: mIoU {100 * m['miou']:.2f}  head {100 * m['head_miou']:.2f}  "
                  f"tail {100 * m['tail_miou']:.2f}  ({m['seconds']:.0f} s)", flush=True)
            if args.out:  # after every run: an interrupted table keeps what finished (--merge reads it)
                args.out.write_text(json.dumps({k: v for k, v in results.items() if v}, indent=2))
    print(f"\nnetwork: {args.model}; {len(jobs)} runs in {time.time() - t0:.0f} s ({args.jobs} at a time, {threads} thread(s) each)\n")
    print(tables({k: v for k, v in results.items() if v}))


if __name__ == "__main__":
    main()
