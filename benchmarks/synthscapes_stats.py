"""Class table of the synthscapes generator (specs/data.md §4.1 (a)).

Renders N training images in memory (the same pixels ``generate_synthscapes`` writes) and prints, per
class, the share of pixels and the share of images it appears in, then the head:tail ratio
(share of the most frequent class / share of the least frequent one). With ``--write DIR`` it also
times a full on-disk generation (PNG files, split lists, manifest) into the new folder DIR.

    PYTHONPATH=src python benchmarks/synthscapes_stats.py --n 1000 --size 128
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from semiseg_lit.data.synthscapes import class_table, generate_synthscapes, iter_scenes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="number of images")
    ap.add_argument("--size", type=int, default=128, help="height = width in px")
    ap.add_argument("--n-styles", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", type=Path, default=None, help="also time generate_synthscapes into this new folder")
    args = ap.parse_args(argv)

    pixels = np.zeros(256, dtype=np.int64)
    presence = np.zeros(256, dtype=np.int64)
    t0 = time.perf_counter()
    for _, _, mask in iter_scenes(args.n, height=args.size, width=args.size, n_styles=args.n_styles, seed=args.seed):
        counts = np.bincount(mask.ravel(), minlength=256)
        pixels += counts
        presence += counts > 0
    dt = time.perf_counter() - t0
    rows = class_table(pixels, presence, args.n)
    print(f"{args.n} images at {args.size}x{args.size}, {args.n_styles} styles, seed {args.seed} "
          f"(rendered in {dt:.2f} s, {1e3 * dt / args.n:.2f} ms/image)")
    print(f"{'class':<12}{'pixels %':>10}{'present %':>11}")
    for r in rows:
        print(f"{r['class']:<12}{100 * r['share']:>10.2f}{100 * r['presence']:>11.1f}")
    print(f"head:tail ratio = {rows[0]['share'] / max(rows[-1]['share'], 1e-12):.0f}:1 "
          f"({rows[0]['class']} / {rows[-1]['class']})")

    if args.write is not None:
        t0 = time.perf_counter()
        generate_synthscapes(args.write, n_train=args.n, n_val=args.n // 5, height=args.size, width=args.size,
                             n_styles=args.n_styles, seed=args.seed)
        print(f"generate_synthscapes: {args.n} train + {args.n // 5} val written in {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
