"""Soak benchmark: does memory stay flat over a long run with validation and checkpointing?

Trains the default experiment (AEL on synthscapes, 400 steps, validation every 200; the schedule is
read from the composed config) for ``--factor`` (3) times its length through the real CLI in a subprocess, with validation and
checkpointing at the experiment's rate (the same number of validations per step), and samples
the memory of the whole process tree (trainer, DataLoader workers, the W&B service) every
``--every`` seconds with psutil: RSS summed over the tree and PSS (shared pages split between the
processes, so fork-shared worker memory is not counted twice). The training step is read from the
run's CSV log.

Reported: the peak memory of the tree in the first third of the steps and in the last third (both
windows hold training and validation phases, so like is compared with like), the point values at
1/3 and at the end of training, and the verdict "flat" when the last third's peak PSS is within
``--tolerance`` (5 %) or 64 MiB of the first third's. ``--summarise FILE`` re-reads a saved JSON.

    python benchmarks/soak.py --out soak.json       # the full run: 3 x 400 = 1200 AEL steps (~20 min on 2 CPU cores)
    python benchmarks/soak.py --steps 300           # a quick check of the benchmark itself
    python benchmarks/soak.py --experiment supervised_synthscapes --out soak_sup.json -- data.num_workers=4
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

MIB = 2**20


def experiment_schedule(experiment: str | None, extra: list[str]) -> tuple[int, int]:
    """(max_steps, val_check_interval) of the experiment as the CLI would compose it."""
    from hydra import compose, initialize_config_dir

    from semiseg_lit.__main__ import CONFIG_DIR

    overrides = [*([f"+experiment={experiment}"] if experiment else []), *extra]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return int(cfg.trainer.max_steps), int(cfg.trainer.val_check_interval)


def tree_memory(proc: psutil.Process) -> tuple[int, int, int]:
    """(RSS sum, PSS sum, number of processes) of ``proc`` and all its descendants (bytes)."""
    rss = pss = n = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            full = p.memory_full_info()
            rss += full.rss
            pss += getattr(full, "pss", full.rss)
            n += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return rss, pss, n


def latest_step(csv_path: Path) -> int | None:
    """The largest ``step`` in Lightning's CSV log (flushed every 100 steps); None before the first flush."""
    try:
        with open(csv_path, newline="") as f:
            steps = [int(float(r["step"])) for r in csv.DictReader(f) if r.get("step")]
    except (OSError, ValueError, KeyError, csv.Error):
        return None
    return max(steps) if steps else None


def sample_at(samples: list[dict], step: int) -> dict:
    """The first sample taken once training reached ``step`` (else the last one)."""
    return next((s for s in samples if s["step"] is not None and s["step"] >= step), samples[-1])


def _peak(samples: list[dict], key: str) -> float:
    return max((s[key] for s in samples), default=0) / MIB


def summarise(samples: list[dict], total_steps: int, tolerance: float) -> dict:
    """Peak memory in the first and the last third of the steps (each window holds training and
    validation phases), the point values at 1/3 and at the end, growth and verdict."""
    if not any(s["step"] is not None for s in samples):
        raise RuntimeError("no sample carries a training step: did the run log to CSV?")
    first = [s for s in samples if s["step"] is None or s["step"] <= total_steps / 3]
    last = [s for s in samples if s["step"] is not None and s["step"] >= 2 * total_steps / 3]
    third, end = sample_at(samples, total_steps // 3), sample_at(samples, int(total_steps * 0.97))
    out = {"total_steps": total_steps, "samples": len(samples),
           "at_third": {"step": third["step"], "rss_mib": third["rss"] / MIB, "pss_mib": third["pss"] / MIB},
           "at_end": {"step": end["step"], "rss_mib": end["rss"] / MIB, "pss_mib": end["pss"] / MIB},
           "peak_first_third_rss_mib": _peak(first, "rss"), "peak_last_third_rss_mib": _peak(last, "rss"),
           "peak_first_third_pss_mib": _peak(first, "pss"), "peak_last_third_pss_mib": _peak(last, "pss"),
           "peak_rss_mib": _peak(samples, "rss"), "peak_pss_mib": _peak(samples, "pss")}
    growth = out["peak_last_third_pss_mib"] - out["peak_first_third_pss_mib"]
    out["growth_pss_mib"] = growth
    out["growth_pss_pct"] = 100.0 * growth / max(1.0, out["peak_first_third_pss_mib"])
    out["flat"] = growth <= max(tolerance * out["peak_first_third_pss_mib"], 64.0)
    return out


def report(s: dict) -> str:
    return "\n".join([
        f"soak: {s['total_steps']} steps, validation + checkpoint every {s.get('val_every')}, "
        f"{s.get('seconds', 0):.0f} s, {s['samples']} samples",
        f"  peak RSS (tree sum): {s['peak_first_third_rss_mib']:.0f} MiB in the first third, "
        f"{s['peak_last_third_rss_mib']:.0f} MiB in the last third, {s['peak_rss_mib']:.0f} MiB overall",
        f"  peak PSS (tree):     {s['peak_first_third_pss_mib']:.0f} MiB in the first third, "
        f"{s['peak_last_third_pss_mib']:.0f} MiB in the last third, {s['peak_pss_mib']:.0f} MiB overall",
        f"  at 1/3 (step {s['at_third']['step']}): RSS {s['at_third']['rss_mib']:.0f} MiB, PSS "
        f"{s['at_third']['pss_mib']:.0f} MiB; at the end (step {s['at_end']['step']}): RSS "
        f"{s['at_end']['rss_mib']:.0f} MiB, PSS {s['at_end']['pss_mib']:.0f} MiB",
        f"  peak PSS growth, first -> last third: {s['growth_pss_mib']:+.0f} MiB ({s['growth_pss_pct']:+.1f} %): "
        f"{'flat' if s['flat'] else 'GROWING'}"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default=None, help="+experiment=NAME (default: the default experiment)")
    ap.add_argument("--factor", type=float, default=3.0, help="run length in multiples of the experiment's")
    ap.add_argument("--steps", type=int, default=None, help="total steps (overrides --factor)")
    ap.add_argument("--val-every", type=int, default=None,
                    help="validation/checkpoint interval (default: the experiment's rate, scaled with --steps)")
    ap.add_argument("--every", type=float, default=3.0, help="seconds between memory samples")
    ap.add_argument("--tolerance", type=float, default=0.05, help="allowed relative growth (1/3 -> end)")
    ap.add_argument("--out-dir", type=Path, default=Path("logs/benchmarks/soak"))
    ap.add_argument("--out", type=Path, default=None, help="write samples + summary as JSON")
    ap.add_argument("--summarise", type=Path, default=None, help="only re-summarise a JSON written by --out")
    ap.add_argument("extra", nargs="*", help="extra Hydra overrides")
    args = ap.parse_args()
    if args.summarise:
        saved = json.loads(args.summarise.read_text())
        old = saved["summary"]
        summary = summarise(saved["samples"], old["total_steps"], args.tolerance)
        summary.update({k: old[k] for k in ("command", "seconds", "val_every", "miou") if k in old})
        print(report(summary))
        return

    base_steps, base_val_every = experiment_schedule(args.experiment, args.extra)
    full = int(round(args.factor * base_steps))
    steps = args.steps or full
    val_every = args.val_every or max(1, round(steps * base_val_every / full))
    run_dir = (args.out_dir / time.strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    cmd = [sys.executable, "-m", "semiseg_lit", *([f"+experiment={args.experiment}"] if args.experiment else []),
           f"trainer.max_steps={steps}", f"trainer.val_check_interval={val_every}",
           "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}", *args.extra]
    print("running:", " ".join(cmd), flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir.parent / f"{run_dir.name}.out", "w")  # noqa: SIM115 - open for the child's lifetime
    t0 = time.time()
    child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    proc = psutil.Process(child.pid)
    samples: list[dict] = []
    try:
        while child.poll() is None:
            rss, pss, n = tree_memory(proc)
            step = latest_step(run_dir / "csv" / "metrics.csv")
            if n:
                samples.append({"t": round(time.time() - t0, 1), "step": step, "rss": rss, "pss": pss, "procs": n})
                print(f"  t={samples[-1]['t']:7.1f}s step={step} rss={rss / MIB:8.1f} MiB "
                      f"pss={pss / MIB:8.1f} MiB procs={n}", flush=True)
            time.sleep(args.every)
    finally:
        if child.poll() is None:
            child.kill()
        log.close()
    if child.returncode != 0:
        sys.exit(f"training failed ({child.returncode}); see {log.name}")
    summary = summarise(samples, steps, args.tolerance)
    summary.update(command=" ".join(cmd), seconds=round(time.time() - t0, 1), val_every=val_every)
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        summary["miou"] = json.loads(metrics.read_text())["miou"]
    print("\n" + report(summary))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "samples": samples}, indent=2))
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
