"""Step-cost benchmark: median training-step time of each method against the network floor.

    python benchmarks/step_time.py [--device cpu|cuda] [--methods supervised ael eln] [--steps 20]
        [--warmup 5] [--threads 2] [--model NAME | --models NAME ...] [--encoder resnet18]
        [--crop 128 | --crop H W]
        [--labeled 4] [--unlabeled 4] [--precision 32-true|bf16-mixed|16-mixed] [--channels-last] [--compile]
        [--sequential] [--profile] [--out records.json] [-- extra Hydra overrides]

``--model`` composes ``model=NAME`` from ``conf/model/`` (any config there), so the architecture is the
config's, not the script's; ``--encoder ''`` keeps that config's encoder. ``--models A B`` measures every
method on each model in turn (one row per method and model). DINOv2 + DPT rows (README "DINOv2 + DPT"):
``--models dpt_dinov2_s dpt_dinov2_b`` keeps the configs' ViTs (``--encoder`` defaults to resnet18 for
the DeepLab configs only) at a 518 crop (UniMatch V2's VOC crop; ``--crop`` must be a multiple of 14),
random-init encoder weights, the experiments' optimizers.

For each method the real config is composed (``+experiment=<method>_synthscapes`` plus the size
overrides above; ELN is put in stage 3, its most expensive stage, from step 0) and the method is
trained by a real ``pl.Trainer`` (with its own callbacks: EMA teacher, confidence bank, CutMix bank)
on in-memory batches shaped like the datamodule's (``labeled`` / ``unlabeled`` (weak + strong) /
``partner`` / ``bank`` streams of rendered synthscapes scenes, replayed in turn). ``step_s`` is the
median time of a whole step, measured between consecutive ``on_train_batch_start`` calls after
``--warmup`` steps: Lightning's loop, ``training_step``, backward, optimizer and scheduler, callbacks.

``floor_s`` is the median time of the same forward/backward passes of the same networks (a second,
fresh copy) on the same batch with no method logic (no bank, class draws, connected components,
mixing, masks, EMA; the loss is the mean of the outputs), plus the same optimizer step, without
Lightning. By default each step is preceded by one floor iteration on the same batch, so steps and
floor alternate and a machine whose load changes during the run slows both alike (``--sequential``:
all floor iterations first). ``overhead_ratio = step_s / floor_s``; ``images_per_s = (labeled +
unlabeled batch) / step_s`` (partner / bank draws not counted; supervised counts its labeled batch).
``--clock cpu`` times with the process CPU time (all threads) instead of wall time: on a shared machine
whose other jobs keep the cores busy, wall time mostly measures waiting (every parallel op waits for
its threads to be scheduled), CPU time the work done. ``peak_mem_mb`` comes from a separate short run of the method alone (``--warmup + 1`` steps, before
anything else in the process): peak allocated CUDA memory, or on CPU the peak RSS of the process
(each method runs in its own child process unless ``--in-process``).

The last lines printed are one JSON object per method::

    {"method": ..., "device": ..., "step_s": ..., "floor_s": ..., "overhead_ratio": ...,
     "images_per_s": ..., "peak_mem_mb": ...}
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

METHODS = ("supervised", "ael", "eln")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


# ----------------------------------------------------------------------------------------- config
def model_names() -> list[str]:
    """The model configs under ``conf/model/`` (``--model`` choices)."""
    from semiseg_lit.__main__ import CONFIG_DIR

    return sorted(p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml"))


def config_encoder(model: str) -> str:
    """``encoder`` of ``conf/model/<model>.yaml``."""
    from omegaconf import OmegaConf

    from semiseg_lit.__main__ import CONFIG_DIR

    return str(OmegaConf.load(Path(CONFIG_DIR) / "model" / f"{model}.yaml").encoder)


def is_dpt(model: str | None) -> bool:
    """A ViT + DPT model config (``model.arch=dpt``: ``conf/model/*dpt*.yaml``)."""
    return model is not None and "dpt" in model


def crop_value(crop: list[int]) -> str:
    """``--crop N`` -> ``N``; ``--crop H W`` -> ``[H,W]`` (Hydra list syntax)."""
    return str(crop[0]) if len(crop) == 1 else f"[{crop[0]},{crop[1]}]"


def size_overrides(args: argparse.Namespace) -> list[str]:
    """Hydra overrides that set the benchmark shapes on any ``*_synthscapes`` experiment."""
    out = [f"model={args.model}"] if args.model else []
    encoder = args.encoder if args.encoder is not None else ("" if is_dpt(args.model) else "resnet18")
    if not encoder and is_dpt(args.model):  # the experiments set resnet18: restore the config's ViT
        encoder = config_encoder(args.model)
    if encoder:
        out.append(f"model.encoder={encoder}")
    return out + [
        "model.encoder_weights=null", f"data.crop_size={crop_value(args.crop)}",
        f"data.labeled_batch_size={args.labeled}", f"data.unlabeled_batch_size={args.unlabeled}",
        f"trainer.precision={args.precision}", "logger.wandb.enabled=false", "trainer.enable_progress_bar=false",
        f"trainer.channels_last={str(args.channels_last).lower()}", f"trainer.compile={str(args.compile).lower()}",
    ]


def compose_method_cfg(method: str, args: argparse.Namespace, out: Path):
    """The run config of ``method`` as the CLI would build it (``+experiment=<method>_synthscapes``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from semiseg_lit.__main__ import CONFIG_DIR

    overrides = [f"+experiment={method}_synthscapes", *size_overrides(args), f"paths.output_dir={out}",
                 f"paths.log_dir={out / 'logs'}"]
    if method == "eln":  # stage 3 (pseudo labels + contrastive on top of stages 1-2) from step 0
        overrides += ["method.eln.pretrain_steps=0", "method.eln.eln_steps=0"]
    overrides += list(args.extra)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def num_unlabeled(cfg) -> int:
    """Size of the unlabeled set of the synthscapes partition (the CutMix bank's width)."""
    return int(cfg.data.synthscapes.n_train) - int(cfg.data.n_labeled or 0)


def build_method(cfg):
    """A fresh method instance from ``cfg`` (networks initialised from ``cfg.seed``)."""
    from semiseg_lit.data.datamodule import resolve_class_info
    from semiseg_lit.tasks.common import method_class

    torch.manual_seed(int(cfg.seed))
    cls = method_class(cfg)
    info = resolve_class_info(cfg.data)
    if cfg.method.name == "ael":
        return cls(cfg, info, num_unlabeled=num_unlabeled(cfg))
    return cls(cfg, info)


# ----------------------------------------------------------------------------------------- batches
def scene_tensors(n: int, size: tuple[int, int], start: int, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` rendered synthscapes scenes of ``size`` (H, W) as normalised images ``[n,3,H,W]`` and masks ``[n,H,W]``."""
    import numpy as np

    from semiseg_lit.data.synthscapes import iter_scenes

    images, masks = [], []
    for _, image, mask in iter_scenes(n, height=size[0], width=size[1], n_styles=16, seed=0, start=start):
        images.append(image)
        masks.append(mask)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    m = torch.tensor(list(mean)).view(1, 3, 1, 1)
    s = torch.tensor(list(std)).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous(), torch.from_numpy(np.stack(masks)).long()


def make_batches(cfg, streams: tuple[str, ...], n_batches: int) -> list[dict[str, dict[str, torch.Tensor]]]:
    """``n_batches`` distinct training batches with the datamodule's keys, dtypes and shapes."""
    from semiseg_lit.data.transforms import crop_hw

    crop, b_l, b_u = crop_hw(cfg.data.crop_size), int(cfg.data.labeled_batch_size), int(cfg.data.unlabeled_batch_size)
    mean, std = cfg.data.mean, cfg.data.std
    n_cls, n_unl = int(cfg.data.num_classes), num_unlabeled(cfg)
    g = torch.Generator().manual_seed(0)
    batches, start = [], 0
    for _ in range(n_batches):
        batch: dict[str, dict[str, torch.Tensor]] = {}
        for stream in streams:
            n = b_l if stream in ("labeled", "partner") else b_u
            x, y = scene_tensors(n, crop, start, mean, std)
            start += n
            index = torch.randint(0, n_unl if stream in ("unlabeled", "bank") else 16, (n,), generator=g)
            if stream in ("labeled", "partner"):
                batch[stream] = {"image": x, "mask": y, "index": index}
            elif stream == "unlabeled":  # strong view: a photometric change of the weak one
                strong = x * (0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=g)) + 0.2 * torch.randn(n, 3, 1, 1, generator=g)
                batch[stream] = {"image": x, "image_strong": strong, "index": index, "mask": y}
            else:  # bank
                batch[stream] = {"image": x, "index": index,
                                 "bank_class": torch.randint(0, n_cls, (n,), generator=g)}
        batches.append(batch)
    return batches


class ReplayBatches(torch.utils.data.Dataset):
    """Item ``i`` = prepared batch ``i mod K`` (used with ``batch_size=None``)."""

    def __init__(self, batches: list, length: int):
        self.batches, self.length = batches, int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return self.batches[i % len(self.batches)]


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: {kk: v.to(device, non_blocking=True) for kk, v in d.items()} for k, d in batch.items()}


# ----------------------------------------------------------------------------------------- timing
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = CLOCKS["wall"]


def now() -> float:
    """The selected clock: wall time, or the CPU time of all threads of this process (``--clock cpu``,
    which a busy shared machine disturbs much less than wall time; divide by ``--threads`` to compare)."""
    return _clock()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Lightning callback that times every training step.

    At each ``on_train_batch_start`` (after a device sync) the time since the previous step began is
    recorded; with ``floor_step`` set, one floor iteration on the same batch runs right there first
    (timed separately), so steps and floor iterations alternate and a machine whose load changes
    during the run slows both alike. Optionally profiles the steps after ``profile_from``.
    """

    def __init__(self, device: torch.device, floor_step: Callable[[dict], float] | None = None,
                 profile_from: int | None = None):
        from pytorch_lightning.callbacks import Callback

        self.device, self.floor_step, self.profile_from = device, floor_step, profile_from
        self.step_times: list[float] = []
        self.floor_times: list[float] = []
        self.prof = None
        self._begin: float | None = None
        timer = self

        class _CB(Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                timer.mark(batch)

            def on_train_end(self, trainer, pl_module):
                if timer.prof is not None:
                    timer.prof.__exit__(None, None, None)

        self.callback = _CB()

    def mark(self, batch: dict) -> None:
        sync(self.device)
        t = now()
        if self._begin is not None:
            self.step_times.append(t - self._begin)
        if self.floor_step is not None:
            self.floor_times.append(self.floor_step(batch))
        if self.profile_from is not None and len(self.step_times) == self.profile_from and self.prof is None:
            self.start_profiler()
        sync(self.device)
        self._begin = now()

    def start_profiler(self) -> None:
        acts = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        self.prof = torch.profiler.profile(activities=acts, record_shapes=False)
        self.prof.__enter__()


def fit_steps(cfg, batches: list, n_steps: int, device: torch.device, timer: StepTimer | None = None) -> None:
    """Train a fresh method for ``n_steps`` steps with a real ``pl.Trainer`` on the replayed batches."""
    import pytorch_lightning as pl

    model = build_method(cfg)
    loader = torch.utils.data.DataLoader(ReplayBatches(batches, n_steps + 2), batch_size=None, shuffle=False)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=cfg.trainer.precision,
        max_steps=n_steps, max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False,
        log_every_n_steps=int(cfg.trainer.log_every_n_steps), callbacks=[timer.callback] if timer else [],
        benchmark=device.type == "cuda")
    trainer.fit(model, train_dataloaders=loader)


# ----------------------------------------------------------------------------------------- floor
def floor_passes(method, cfg) -> Callable[[dict], torch.Tensor]:
    """The method's network passes on a batch, returning a scalar to backpropagate (mean of outputs)."""
    name = cfg.method.name
    net = method.student

    def mean_of(*tensors: torch.Tensor | None) -> torch.Tensor:
        return sum(t.float().mean() for t in tensors if t is not None)

    if name == "supervised":
        def passes(b: dict) -> torch.Tensor:
            out = net.forward_all(b["labeled"]["image"], aux=True)
            return mean_of(out.logits, out.aux)
        return passes

    if name == "ael":
        a = cfg.method.ael

        def passes(b: dict) -> torch.Tensor:
            x_l, x1 = b["labeled"]["image"], b["unlabeled"]["image"]
            method.teacher.train(bool(a.teacher_train_mode))
            with torch.no_grad():
                if a.labeled_consistency:
                    method.teacher(x_l)
                if a.cutmix and a.cutmix_adaptive:
                    method.teacher(torch.cat([x1, b["bank"]["image"]]))
                else:
                    method.teacher(x1)
            out_l = net.forward_all(x_l, aux=True)
            return mean_of(out_l.logits, out_l.aux, net(x1))
        return passes

    if name == "eln":
        from semiseg_lit.methods.eln import quarter_logits, training_mode
        from semiseg_lit.models.eln_net import dropout_disabled

        e = cfg.method.eln

        def passes(b: dict) -> torch.Tensor:
            x_l, u = b["labeled"]["image"], b["unlabeled"]
            out_l = net.forward_all(x_l, keep_features=True)
            aux = [dec(out_l.features, x_l.shape[-2:]) for dec in method.aux_decoders]
            terms = [out_l.logits, *aux] + [method.eln(x_l, z) for z in (*aux, out_l.logits)]
            with torch.no_grad():
                with training_mode(method.teacher, bool(e.teacher_train_mode)), dropout_disabled(method.teacher):
                    t = method.teacher.forward_all(u["image"], proj=True, keep_features=True)
                quarter_logits(method.teacher, t)
                with training_mode(method.eln, bool(e.eln_train_mode)):
                    method.eln(u["image"], t.logits, clean=True)
            for x in (u["image"], u["image_strong"]):
                out = net.forward_all(x, proj=True, keep_features=True)
                terms += [quarter_logits(net, out), out.proj]
            return mean_of(*terms)
        return passes

    raise ValueError(f"no floor defined for method {name!r}; expected one of {METHODS}")


def make_optimizer(method, cfg) -> torch.optim.Optimizer:
    """The method's optimizer on its parameter groups (as ``configure_optimizers``, without the scheduler)."""
    o = cfg.method.optim
    groups = [g for g in method.param_groups() if g["params"]]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                               nesterov=o.nesterov)
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


def autocast_for(precision: str, device: torch.device):
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


def floor_stepper(cfg, args: argparse.Namespace, device: torch.device) -> Callable[[dict], float]:
    """``step(batch) -> seconds``: one floor iteration (same networks, shapes, optimizer; no Lightning)
    on a separate fresh copy of the method's networks."""
    method = build_method(cfg).to(device).train()
    if cfg.method.name == "eln":  # stage 3 starts with teacher <- student
        method.teacher.load_state_dict(method.student.state_dict())
    method.apply_speed_options()  # the same channels_last / compile as the method's trainer run
    passes, opt = floor_passes(method, cfg), make_optimizer(method, cfg)
    scaler = torch.amp.GradScaler(device.type) if args.precision == "16-mixed" else None

    def step(batch: dict) -> float:
        batch = to_device(batch, device)
        sync(device)
        t0 = now()
        with autocast_for(args.precision, device):
            loss = passes(batch)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        return now() - t0

    return step


# ----------------------------------------------------------------------------------------- one method
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_one(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Measure one method in this process; returns the JSON record."""
    import logging
    import warnings

    global _clock
    _clock = CLOCKS[args.clock]
    if args.crop is None:  # the default crop of the model: 518 for a ViT + DPT (UniMatch V2's VOC crop)
        args.crop = [518] if is_dpt(args.model) else [128]
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_method_cfg(method, args, Path(tmp))
        from semiseg_lit.tasks.common import method_class

        streams = tuple(method_class(cfg).required_streams(cfg))
        batches = make_batches(cfg, streams, args.distinct_batches)
        # 1. peak memory of the method alone (first thing that runs: the process RSS peak is its own)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        fit_steps(cfg, batches, args.warmup + 1, device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb()
        # 2. timing: method steps, each preceded by one floor iteration on the same batch (or the floor
        #    first, all of it, with --sequential / --profile)
        interleave = not (args.sequential or args.profile)
        floor_step = floor_stepper(cfg, args, device)
        timer = StepTimer(device, floor_step if interleave else None, args.warmup if args.profile else None)
        floor = [] if interleave else [floor_step(batches[i % len(batches)])
                                        for i in range(args.warmup + args.steps)][args.warmup:]
        fit_steps(cfg, batches, args.warmup + args.steps + 1, device, timer)
    steps = timer.step_times[args.warmup:args.warmup + args.steps]
    if interleave:
        floor = timer.floor_times[args.warmup:args.warmup + args.steps]
    step_s, floor_s = statistics.median(steps), statistics.median(floor)
    n_images = int(cfg.data.labeled_batch_size) + (int(cfg.data.unlabeled_batch_size) if "unlabeled" in streams else 0)
    if timer.prof is not None:
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"--- profile of {method} ({args.steps} steps) ---", file=sys.stderr)
        print(timer.prof.key_averages().table(sort_by=sort, row_limit=args.profile_rows), file=sys.stderr)
    print(f"# {method}: step {step_s * 1e3:.1f} ms (min {min(steps) * 1e3:.1f}, max {max(steps) * 1e3:.1f}), "
          f"floor {floor_s * 1e3:.1f} ms (min {min(floor) * 1e3:.1f}, max {max(floor) * 1e3:.1f}), "
          f"ratio of minima {min(steps) / min(floor):.3f}; {len(steps)} steps after {args.warmup} warm-up, "
          f"{'interleaved' if interleave else 'sequential'}, streams {','.join(streams)}", file=sys.stderr)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({args.threads} threads)"
    if args.clock == "cpu":
        device_name += ", CPU-time clock"
    return {"method": method, "device": device_name, "model": args.model or "(experiment's)",
            "encoder": str(cfg.model.encoder), "output_stride": int(cfg.model.output_stride),
            "crop": crop_value(args.crop), "labeled": args.labeled, "unlabeled": args.unlabeled,
            "precision": args.precision, "channels_last": args.channels_last, "compile": args.compile,
            "step_s": round(step_s, 5), "floor_s": round(floor_s, 5),
            "overhead_ratio": round(step_s / floor_s, 4), "images_per_s": round(n_images / step_s, 3),
            "loads_per_step": loads_per_step(cfg, streams), "peak_mem_mb": round(peak, 1)}


def loads_per_step(cfg, streams: tuple[str, ...]) -> int:
    """Images the data loaders deliver per step (every stream: labeled, partner, unlabeled, bank)."""
    b_l, b_u = int(cfg.data.labeled_batch_size), int(cfg.data.unlabeled_batch_size)
    return sum(b_l if s in ("labeled", "partner") else b_u for s in streams)


def drop_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option`` and the values after it (up to the next ``-...`` argument)."""
    out, skipping = [], False
    for a in argv:
        if a == option:
            skipping = True
            continue
        if skipping and not a.startswith("-"):
            continue
        skipping = False
        out.append(a)
    return out


def child_command(method: str, argv: list[str]) -> list[str]:
    """The command line that measures ``method`` alone in a child process."""
    return [sys.executable, str(Path(__file__).resolve()), "--child", method, *argv]


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (median) per method")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--model", default=None,
                    help="a model config under conf/model/ (e.g. deeplabv3plus); default: the experiment's")
    ap.add_argument("--models", nargs="+", default=None,
                    help="several model configs: every method on each (e.g. dpt_dinov2_s dpt_dinov2_b)")
    ap.add_argument("--encoder", default=None,
                    help="model.encoder (default: resnet18; a dpt config keeps its ViT; '' keeps the config's)")
    ap.add_argument("--crop", type=int, nargs="+", default=None,
                    help="N (square) or H W (default: 128; 518 for dpt configs)")
    ap.add_argument("--channels-last", action="store_true", help="trainer.channels_last=true")
    ap.add_argument("--compile", action="store_true", help="trainer.compile=true (torch.compile)")
    ap.add_argument("--out", type=Path, default=None, help="also write the records to this JSON file")
    ap.add_argument("--labeled", type=int, default=4, help="labeled batch size")
    ap.add_argument("--unlabeled", type=int, default=4, help="unlabeled batch size")
    ap.add_argument("--precision", default="32-true", choices=PRECISIONS)
    ap.add_argument("--distinct-batches", type=int, default=4, help="prepared batches, replayed in turn")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of the timed steps")
    ap.add_argument("--profile-rows", type=int, default=25)
    ap.add_argument("--clock", default="wall", choices=list(CLOCKS),
                    help="wall time (default) or process CPU time (all threads; for busy shared machines)")
    ap.add_argument("--sequential", action="store_true",
                    help="time all floor iterations first, then the steps (default: alternate them)")
    ap.add_argument("--in-process", action="store_true", help="measure every method in this process")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("extra", nargs="*", help="extra Hydra overrides for every method")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    if args.clock == "cpu" and args.device != "cpu":
        ap.error("--clock cpu measures host CPU time: use it with --device cpu only")
    if args.steps < 1 or args.warmup < 1:
        ap.error("--steps and --warmup must be >= 1")
    if args.crop is not None and len(args.crop) not in (1, 2):
        ap.error("--crop takes N or H W")
    if args.models is not None and args.model is not None:
        ap.error("--model and --models: give one of them")
    for model in args.models or [args.model]:
        if model is not None and model not in model_names():
            ap.error(f"--model {model}: no conf/model/{model}.yaml; available: {', '.join(model_names())}")
        if is_dpt(model) and args.crop is not None and any(c % 14 for c in args.crop):
            ap.error(f"--crop {' '.join(map(str, args.crop))}: {model} (patch 14) trains on multiples of 14, "
                     "e.g. 518 (UniMatch V2's VOC crop), 798 (Cityscapes), 56 (a CPU sanity run)")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    if args.child:
        print(json.dumps(run_one(args.child, args)), flush=True)
        return
    records = []
    for model in args.models or [args.model]:
        for method in args.methods:
            if args.in_process:
                records.append(run_one(method, argparse.Namespace(**{**vars(args), "model": model})))
                continue
            passthrough = [a for a in argv if a != "--in-process"]
            if args.models:  # the child measures one model (its --model, --models is ignored there)
                passthrough = ["--model", model, *drop_option(passthrough, "--models")]
            proc = subprocess.run(child_command(method, passthrough), stdout=subprocess.PIPE, text=True, check=True)
            records.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for rec in records:
        print(json.dumps(rec), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
