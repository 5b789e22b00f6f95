"""The prepared device check (issue 17): one command, every part time-boxed, a JSON + Markdown summary.

    python benchmarks/gpu_check.py --device cuda --out gpu_check_out      # < 8 min on one H200
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/check   # seconds; what CI runs

Parts (each in its own subprocess with its own time box; a failing or timed-out part is recorded and the
next one runs):

a. ``tests``: the test suite's device-parametrised tests on ``--device`` (``pytest --only-device``, see
   tests/conftest.py) plus ``tests/cuda/`` (16-mixed with GradScaler, pinned/asynchronous CutMix-bank
   snapshots, SyncBatchNorm on one process, ``torch.cuda.set_sync_debug_mode("error")`` around the
   training steps of every method; skipped without CUDA).
b. ``step_time``: ``benchmarks/step_time.py`` at the reference shapes, in priority order until its box is
   spent: AEL ResNet-101 769×769 OS8 with the global reference batch (16 labeled + 8 unlabeled, + the
   copy-paste partner and CutMix-bank streams) on one device, ELN ResNet-50 512×1024, supervised; fp32,
   bf16-mixed, 16-mixed; with/without channels_last and torch.compile. Step time, images/s, peak memory,
   ratio to the network floor.
c. ``data``: ``benchmarks/data_throughput.py`` with 16 workers on the Cityscapes-sized pipeline (2048×1024
   PNGs, crop 769): loader images/s per stream against what the measured AEL step consumes (target >= 2×).
d. ``train``: a 300-step AEL run on synthscapes (256×256 scenes, crop 224) through the CLI
   (``python -m semiseg_lit``), bf16-mixed.

``--tiny`` shrinks every part to seconds (a few tests, a supervised ResNet-18 step at 64², VOC-sized JPEGs
with no workers, 2 training steps; about a minute on an idle 2-core machine, several on a loaded one).
The summary (``summary.json``, ``summary.md``) and each part's log are written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def run_part(name: str, cmd: list[str], timeout: float, out: Path, env: dict | None = None) -> dict:
    """Run one part; never raises. Returns its record (``status``: ok | failed | timeout | error)."""
    log = out / f"{name}.log"
    t0 = time.perf_counter()
    rec: dict = {"part": name, "command": " ".join(cmd), "log": log.name}
    try:
        with open(log, "w") as f:
            proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=max(1.0, timeout),
                                  env={**os.environ, **(env or {})}, check=False)
        rec["status"] = "ok" if proc.returncode == 0 else "failed"
        rec["returncode"] = proc.returncode
    except subprocess.TimeoutExpired:
        rec["status"] = "timeout"
    except Exception as exc:  # noqa: BLE001 - the check goes on with the next part
        rec["status"] = "error"
        rec["error"] = f"{type(exc).__name__}: {exc}"
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
    rec["tail"] = tail
    print(f"[gpu_check] {name}: {rec['status']} in {rec['seconds']} s", flush=True)
    return rec


# ----------------------------------------------------------------------------------------- parts
def part_tests(args, out: Path, budget: float) -> dict:
    if args.tiny:
        targets = ["tests/ops/test_sampling.py", "tests/ops/test_ema.py", "tests/cuda"]
    else:
        targets = ["tests", "tests/cuda"]
    # --continue-on-collection-errors: a test module that needs a package the device image lacks (and that
    # the wheels do not bring) must not stop the device tests of every other module
    cmd = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors",
           f"--only-device={args.device}",
           f"--junitxml={out / 'tests.xml'}", *targets]
    rec = run_part("tests", cmd, budget, out)
    summary = [line for line in rec["tail"] if " passed" in line or " failed" in line or " error" in line]
    rec["result"] = summary[-1] if summary else None
    return rec


def step_time_configs(args) -> list[dict]:
    """Step-time configurations in priority order (the box stops at the first that does not fit)."""
    if args.tiny:
        return [dict(method="supervised", precision="bf16-mixed" if args.device == "cuda" else "32-true",
                     cl=False, compile=False)]
    configs = []
    for method in ("ael", "eln", "supervised"):
        configs.append(dict(method=method, precision="bf16-mixed", cl=False, compile=False))
    configs += [dict(method="ael", precision="bf16-mixed", cl=True, compile=False),
                dict(method="ael", precision="16-mixed", cl=False, compile=False),
                dict(method="ael", precision="32-true", cl=False, compile=False),
                dict(method="ael", precision="bf16-mixed", cl=True, compile=True),
                dict(method="eln", precision="bf16-mixed", cl=True, compile=False),
                dict(method="supervised", precision="bf16-mixed", cl=True, compile=True),
                dict(method="eln", precision="16-mixed", cl=False, compile=False),
                dict(method="eln", precision="32-true", cl=False, compile=False),
                dict(method="supervised", precision="16-mixed", cl=False, compile=False),
                dict(method="supervised", precision="32-true", cl=False, compile=False)]
    return configs


def shape_args(method: str, tiny: bool, model: str | None) -> list[str]:
    """step_time.py arguments of the reference shapes and networks (ael.md §1, eln.md §5; the official
    networks of ``conf/model/deeplabv3plus_{ael,eln}.yaml`` unless ``--model`` names another) or the tiny
    ones (smp's small DeepLabV3+)."""
    if tiny:
        return ["--model", model or "deeplabv3plus", "--encoder", "resnet18", "--crop", "64", "--labeled", "2",
                "--unlabeled", "2", "--steps", "1", "--warmup", "1", "--", "model.decoder_channels=32"]
    if method == "eln":  # ELN Cityscapes: the official ResNet-50 OS16 network + reference ELN, 512x1024 crops
        return ["--model", model or "deeplabv3plus_eln", "--encoder", "resnet50", "--crop", "512", "1024",
                "--labeled", "8", "--unlabeled", "8", "--steps", "4", "--warmup", "2", "--distinct-batches", "2",
                "--", "method.eln.network=reference", "method.eln.decoder_channels=256",
                "method.eln.encoder_weights=null"]
    # AEL / supervised: the official deep-stem ResNet-101 OS8, 769x769, the global reference batch on one
    # device; AEL with the reference's 8 emulated GPUs (per-group banks, OHEM, draws)
    extra = ["method.ael.virtual_ranks=8"] if method == "ael" else []
    return ["--model", model or "deeplabv3plus_ael", "--encoder", "resnet101s", "--crop", "769", "--labeled", "16",
            "--unlabeled", "8", "--steps", "4", "--warmup", "2", "--distinct-batches", "2", "--", *extra]


def part_step_time(args, out: Path, budget: float) -> dict:
    deadline = time.perf_counter() + budget
    runs, records = [], []
    for i, c in enumerate(step_time_configs(args)):
        left = deadline - time.perf_counter()
        if left < (10 if args.tiny else 45):
            runs.append({**c, "status": "skipped (time box)"})
            continue
        rec_file = out / f"step_time_{i}.json"
        cmd = [PY, "benchmarks/step_time.py", "--device", args.device, "--methods", c["method"],
               "--precision", c["precision"], "--threads", str(args.threads),
               "--out", str(rec_file)]
        cmd += ["--channels-last"] if c["cl"] else []
        cmd += ["--compile"] if c["compile"] else []
        shape = shape_args(c["method"], args.tiny, args.model)
        split = shape.index("--")
        cmd += shape[:split] + ["--"] + shape[split + 1:]
        r = run_part(f"step_time_{i}", cmd, min(left, 180), out)
        run = {**c, "status": r["status"], "seconds": r["seconds"]}
        if r["status"] == "ok" and rec_file.exists():
            rec = json.loads(rec_file.read_text())[0]
            records.append(rec)
            run.update({k: rec[k] for k in ("step_s", "floor_s", "overhead_ratio", "images_per_s", "peak_mem_mb")})
        else:
            run["tail"] = r["tail"][-5:]
        runs.append(run)
    ok = [r for r in runs if r["status"] == "ok"]
    return {"part": "step_time", "status": "ok" if ok else "failed", "runs": runs, "records": records,
            "seconds": round(budget - max(0.0, deadline - time.perf_counter()), 1)}


def part_data(args, out: Path, budget: float, consumption: float | None) -> dict:
    if args.tiny:
        cmd = [PY, "benchmarks/data_throughput.py", "--datasets", "voc", "--workers", "0", "--batches", "1",
               "--n-images", "4"]
    else:
        cmd = [PY, "benchmarks/data_throughput.py", "--datasets", "cityscapes", "--workers", "16", "--batches",
               "16", "--batch", "2", "--n-images", "16"]
    r = run_part("data", cmd, budget, out)
    rows = []
    for line in r["tail"]:
        if line.startswith("{"):
            rows.append(json.loads(line))
    r["records"] = rows
    if consumption and rows:
        r["consumption_images_per_s"] = round(consumption, 2)
        r["loader_over_consumption"] = {f"{x['stream']}": round(x["images_per_s"] / consumption, 2) for x in rows}
    return r


def part_train(args, out: Path, budget: float) -> dict:
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="gpu_check_train_"))  # data and run folder: not under --out
    run_dir = work / "run"
    if args.tiny:
        size, crop, steps, extra = 64, 48, 2, ["data.synthscapes.n_train=40", "data.synthscapes.n_val=8",
                                               "data.n_labeled=8", "model.decoder_channels=32",
                                               "data.num_workers=0", "trainer.val_check_interval=2"]
    else:
        size, crop, steps, extra = 256, 224, 300, ["data.num_workers=4", "trainer.val_check_interval=150"]
    cmd = [PY, "-m", "semiseg_lit", "+experiment=ael_synthscapes", f"data.synthscapes.height={size}",
           f"data.synthscapes.width={size}", f"data.crop_size={crop}", f"trainer.max_steps={steps}",
           f"data.root={work / 'synthscapes'}", f"hydra.run.dir={run_dir}", "logger.wandb.enabled=false",
           "trainer.enable_progress_bar=false", *extra]
    cmd += (["trainer=gpu"] if args.device == "cuda" else ["trainer=cpu"])
    r = run_part("train", cmd, budget, out, env={"PYTHONPATH": str(REPO / "src")})
    metrics = run_dir / "metrics.json"
    if metrics.exists():
        try:
            m = json.loads(metrics.read_text())
            r["metrics"] = {k: m[k] for k in ("miou", "pixel_acc") if k in m} or m
        except (ValueError, KeyError):
            pass
    return r


# ----------------------------------------------------------------------------------------- summary
def environment(device: str) -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine(), "device_requested": device}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
            info["cuda"] = torch.version.cuda
    except Exception as exc:  # noqa: BLE001
        info["torch"] = f"unavailable: {exc}"
    return info


def markdown(summary: dict) -> str:
    env = summary["environment"]
    lines = [f"# GPU check ({'tiny' if summary['tiny'] else 'full'}, device {env['device_requested']})", "",
             f"Machine: {env.get('gpu', 'no GPU')}, torch {env.get('torch')}, Python {env['python']}; "
             f"{summary['seconds']} s in all.", "", "| part | status | seconds | result |", "|---|---|---:|---|"]
    for p in summary["parts"]:
        result = p.get("result") or p.get("metrics") or ""
        lines.append(f"| {p['part']} | {p['status']} | {p.get('seconds', '')} | {result} |")
    st = next((p for p in summary["parts"] if p["part"] == "step_time"), None)
    if st:
        lines += ["", "## Step time", "", "| method | precision | channels_last | compile | status | step s | "
                  "floor s | ratio | images/s | peak MB |", "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
        for r in st["runs"]:
            lines.append(f"| {r['method']} | {r['precision']} | {r['cl']} | {r['compile']} | {r['status']} | "
                         f"{r.get('step_s', '')} | {r.get('floor_s', '')} | {r.get('overhead_ratio', '')} | "
                         f"{r.get('images_per_s', '')} | {r.get('peak_mem_mb', '')} |")
    data = next((p for p in summary["parts"] if p["part"] == "data"), None)
    if data and data.get("records"):
        lines += ["", "## Data pipeline", "", "| stream | workers | images/s | loader / consumption |",
                  "|---|---:|---:|---:|"]
        ratio = data.get("loader_over_consumption", {})
        for r in data["records"]:
            lines.append(f"| {r['dataset']} {r['stream']} | {r['num_workers']} | {r['images_per_s']} | "
                         f"{ratio.get(r['stream'], '')} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="shrink every part to seconds (CI, CPU machines)")
    ap.add_argument("--out", type=Path, required=True, help="folder for summary.json, summary.md and the logs")
    ap.add_argument("--parts", nargs="+", default=["tests", "step_time", "data", "train"],
                    choices=["tests", "step_time", "data", "train"])
    ap.add_argument("--model", default=None, help="model config under conf/model/ for step_time (default: the "
                    "official networks deeplabv3plus_ael / deeplabv3plus_eln; tiny: deeplabv3plus)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the step-time children")
    ap.add_argument("--budget", type=float, default=None,
                    help="total seconds (default 450 full / 600 tiny), shared by the parts")
    args = ap.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            ap.error("--device cuda: no CUDA device is visible here; use --device cpu (with --tiny on a CPU machine)")
    return args


# share of the total budget per part (the data and train parts are cheap to cut short)
SHARES = {"tests": 0.18, "step_time": 0.5, "data": 0.1, "train": 0.22}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    total = args.budget or (600.0 if args.tiny else 450.0)
    t0 = time.perf_counter()
    parts: list[dict] = []
    consumption = None
    for name in args.parts:
        left = total - (time.perf_counter() - t0)
        remaining = args.parts[args.parts.index(name):]
        budget = max(5.0, left * SHARES[name] / sum(SHARES[p] for p in remaining))  # time left flows on
        if name == "tests":
            parts.append(part_tests(args, out, budget))
        elif name == "step_time":
            st = part_step_time(args, out, budget)
            recs = [r for r in st["records"] if r["method"] == "ael"] or st["records"]
            if recs:  # images the loaders deliver per second of an AEL step (first = bf16, reference shapes)
                consumption = recs[0]["loads_per_step"] / recs[0]["step_s"]
                st["consumption_from"] = f"{recs[0]['method']} {recs[0]['precision']}"
            parts.append(st)
        elif name == "data":
            parts.append(part_data(args, out, budget, consumption))
        else:
            parts.append(part_train(args, out, budget))
    summary = {"tiny": args.tiny, "environment": environment(args.device), "seconds": round(time.perf_counter() - t0, 1),
               "parts": parts}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    print(markdown(summary), flush=True)
    return 0 if all(p["status"] == "ok" for p in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
