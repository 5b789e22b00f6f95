"""Accuracy benchmark on synthscapes: supervised vs mean-teacher CutMix vs AEL (and ELN with ``--rows ELN``).

Each row trains the same network, data, augmentation and schedule (the ``*_synthscapes``
experiments) for every seed, through the real CLI, and reads the run's ``metrics.json``.

    python benchmarks/accuracy.py --seeds 0 1 [--steps 800] [--model experiment|tiny-vit-dpt]
        [--out BENCHMARKS_accuracy.json] [-- extra overrides]

``--model tiny-vit-dpt`` trains every row on a tiny random-init ViT (patch 14, 96-d, 4 blocks) + DPT
(``model=dpt_dinov2_s`` with ``model.encoder_kwargs``) at a 84 crop instead of the experiments'
ResNet-18 DeepLabV3+: the DINOv2 + DPT path of each method on CPU (README "DINOv2 + DPT"); a random ViT
is no DINOv2, so its numbers say nothing about the pretrained network.

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
# the network of every row: the experiments' (ResNet-18 DeepLabV3+) or a tiny random ViT + DPT
MODELS = {
    "experiment": [],
    "tiny-vit-dpt": ["model=dpt_dinov2_s", "model.encoder=tu-vit_small_patch14_dinov2", "model.encoder_weights=null",
                     "model.encoder_kwargs={embed_dim: 96, depth: 4, num_heads: 3}",
                     "model.dpt_intermediate_channels=[24,48,96,96]", "model.decoder_channels=32",
                     "model.aux_channels=32", "data.crop_size=84"],
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
    ap.add_argument("--model", default="experiment", choices=list(MODELS),
                    help="the experiments' network, or a tiny random ViT + DPT (the DPT path on CPU)")
    ap.add_argument("--out-dir", type=Path, default=Path("logs/benchmarks/accuracy"))
    ap.add_argument("--out", type=Path, default=None, help="write all results as JSON")
    ap.add_argument("extra", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args()
    results: dict[str, list[dict]] = {}
    for name in args.rows:
        for seed in args.seeds:
            out_dir = args.out_dir if args.model == "experiment" else args.out_dir / args.model
            m = run(name, ROWS[name] + MODELS[args.model], seed, args.steps, out_dir, args.extra)
            results.setdefault(name, []).append(m)
            print(f"{name:22s} seed {seed}: mIoU {100 * m['miou']:.2f}  head {100 * m['head_miou']:.2f}  "
                  f"tail {100 * m['tail_miou']:.2f}  ({m['seconds']:.0f} s)", flush=True)
    print(f"\nnetwork: {args.model}")
    print("\n| method | seeds | mIoU | head mIoU | tail mIoU | time / run |\n|---|---|---|---|---|---|")
    for name, ms in results.items():
        secs = statistics.mean(m["seconds"] for m in ms)
        cells = " | ".join(mean_spread([100 * m[k] for m in ms]) for k in ("miou", "head_miou", "tail_miou"))
        print(f"| {name} | {len(ms)} | {cells} | {secs:.0f} s |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
