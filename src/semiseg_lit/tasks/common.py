"""Building blocks shared by the tasks: data module + method, loggers, callbacks, trainer."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint

from semiseg_lit.checkpointing import AtomicCheckpointIO
from semiseg_lit.console import drop_wandb_anonymous_setting, quiet_third_party
from semiseg_lit.data.datamodule import SemiSegDataModule, per_device_batch_size
from semiseg_lit.data.transforms import crop_hw
from semiseg_lit.errors import RunFolderError, UserError

log = logging.getLogger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    try:
        return Path(cfg.paths.output_dir)
    except Exception:  # noqa: BLE001 - outside a Hydra run (tests calling tasks directly)
        return Path.cwd()


def method_class(cfg: DictConfig) -> type:
    target = cfg.method._target_
    try:
        return get_class(target)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"method._target_={target!r} cannot be imported: {exc}") from exc


def build_datamodule(cfg: DictConfig) -> SemiSegDataModule:
    cls = method_class(cfg)
    return SemiSegDataModule(cfg.data, seed=int(cfg.seed), streams=tuple(cls.required_streams(cfg)),
                             virtual_ranks=cls.virtual_ranks(cfg),
                             sync_batchnorm=bool(cfg.trainer.sync_batchnorm), eval_mode=cfg.eval.mode,
                             unlabeled_options=cls.unlabeled_options(cfg))


def build_method(cfg: DictConfig, datamodule: SemiSegDataModule) -> pl.LightningModule:
    return method_class(cfg)(cfg, datamodule.class_info)


def check_method_options(cfg: DictConfig) -> None:
    """Trainer options the method cannot honour fail here, before any work."""
    acc = int(cfg.trainer.accumulate_grad_batches)
    if acc > 1 and not getattr(method_class(cfg), "supports_grad_accumulation", True):
        raise ValueError(
            f"trainer.accumulate_grad_batches={acc} is not supported by method={cfg.method.name}: its EMA teacher "
            "and banks would update once per micro-batch instead of once per optimizer step, which changes the "
            "method. Fit the batch with a smaller data.crop_size, trainer.precision=bf16-mixed, or more "
            "devices (trainer=ddp; batch sizes are global), and keep accumulate_grad_batches=1.")


def reference_override_warnings(cfg: DictConfig) -> list[str]:
    """What in this run breaks the official run a reference experiment reproduces (``cfg.reference``,
    set by the ``<ael|eln|supervised>_<cityscapes|voc>_*`` experiments): a global batch other than the
    official one (the learning rate per image, the per-GPU banks / OHEM groups and BN statistics change)
    or gradient accumulation. One message per key; empty for any other run."""
    ref = cfg.get("reference")
    if ref is None:
        return []
    name, msgs = cfg.get("name"), []
    expected = [("data.labeled_batch_size", cfg.data.labeled_batch_size, ref.labeled_batch_size)]
    if ref.get("unlabeled_batch_size") is not None:
        expected.append(("data.unlabeled_batch_size", cfg.data.unlabeled_batch_size, ref.unlabeled_batch_size))
    for key, value, official in expected:
        if int(value) != int(official):
            msgs.append(f"{key}={value} but the reference experiment {name} reproduces a global batch of "
                        f"{official} ({ref.source}); this run does not reproduce the official training. "
                        f"Drop the override (batch sizes are global: trainer=ddp or one large device both "
                        f"keep it), or accept a non-reference run.")
    acc = int(cfg.trainer.accumulate_grad_batches)
    if acc > 1:
        msgs.append(f"trainer.accumulate_grad_batches={acc} in the reference experiment {name}: the official "
                    f"run ({ref.source}) steps once per batch; accumulation changes the per-step statistics "
                    f"(BN, banks, OHEM). Use trainer.accumulate_grad_batches=1.")
    if bool(cfg.method.optim.get("scale_lr_with_batch", False)):
        msgs.append(f"method.optim.scale_lr_with_batch=true in the reference experiment {name}: the official run "
                    f"({ref.source}) uses method.optim.lr={cfg.method.optim.lr} as written; a rescaled rate is not "
                    f"the reference. Use method.optim.scale_lr_with_batch=false.")
    return msgs


def _world_size(trainer_cfg: DictConfig) -> int | None:
    """Processes of the run from ``trainer.devices`` x ``trainer.num_nodes`` (None when ``auto`` / -1)."""
    devices = trainer_cfg.devices
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        n = devices
    elif isinstance(devices, str) and devices.strip().isdigit() and int(devices) > 0:
        n = int(devices)
    elif OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        n = len(devices)
    elif isinstance(devices, str) and "," in devices:
        n = len([d for d in devices.split(",") if d.strip()])
    else:
        return None
    return n * max(1, int(trainer_cfg.num_nodes))


def check_run_options(cfg: DictConfig, stage: str) -> None:
    """Values the trainer / loaders would accept but that cannot work (or run forever) fail here, naming
    the key, before any data is read or a trainer is built."""
    t, d = cfg.trainer, cfg.data
    crop_hw(d.crop_size, "data.crop_size")
    if d.val_crop_size is not None:
        crop_hw(d.val_crop_size, "data.val_crop_size")
    if int(d.val_batch_size) < 1:
        raise UserError(f"data.val_batch_size={d.val_batch_size}: expected at least 1")
    if int(d.num_workers) < 0:
        raise UserError(f"data.num_workers={d.num_workers}: expected 0 (load in the main process) or more")
    if stage != "fit":
        return
    if str(cfg.model.get("arch")) == "dpt":  # ViT crops: whole patch grids
        from semiseg_lit.models.dpt import check_training_crop

        check_training_crop(cfg.model, crop_hw(d.crop_size, "data.crop_size"))
    if int(t.max_steps) <= 0:
        raise UserError(f"trainer.max_steps={t.max_steps}: expected a positive number of training steps "
                        "(0 would save an untrained model, -1 would train forever), e.g. trainer.max_steps=1000")
    for key in ("val_check_interval", "log_every_n_steps", "accumulate_grad_batches"):
        if int(t[key]) < 1:
            raise UserError(f"trainer.{key}={t[key]}: expected a positive integer")
    world = _world_size(t)
    cls = method_class(cfg)
    streams = set(cls.required_streams(cfg))
    keys = ["labeled"] + (["unlabeled"] if streams & {"unlabeled", "bank"} else [])
    for key in keys:
        total = int(d[f"{key}_batch_size"])
        if world is None:  # devices=auto: only the sign can be checked before the trainer exists
            if total < 1:
                raise UserError(f"data.{key}_batch_size={total}: expected a positive number of images per step")
            continue
        try:
            per_device_batch_size(key, total, world, cls.virtual_ranks(cfg), bool(t.sync_batchnorm),
                                  virtual_ranks_key=f"method.{cfg.method.name}.virtual_ranks")
        except ValueError as exc:
            raise UserError(f"{exc} (trainer.devices={t.devices}, trainer.num_nodes={t.num_nodes})") from None


# files of a finished or interrupted run (task=train) in its output folder
RUN_FILES = ("checkpoints/*.ckpt", "metrics.json", "csv/metrics*.csv", "config_resolved.yaml")


def existing_run_files(out: Path) -> list[Path]:
    """The files of an earlier run in ``out`` (sorted); Hydra's own ``.hydra/`` and log are not a run."""
    return sorted({p for pattern in RUN_FILES for p in out.glob(pattern) if p.is_file()})


def check_run_folder(out: Path, ckpt_path: str | None, overwrite: bool) -> None:
    """Refuse a new run into a folder that holds an earlier run, unless it resumes that run
    (``ckpt_path`` is one of the folder's own checkpoints) or ``overwrite=true`` (then the earlier run's
    files are removed first, so nothing stale is mixed with the new run)."""
    found = existing_run_files(out)
    if not found:
        return
    own = (out / "checkpoints").resolve()
    if ckpt_path is not None and Path(ckpt_path).resolve().parent == own:
        return
    if overwrite:
        for p in found:
            p.unlink(missing_ok=True)
        log.warning("overwrite=true: removed the earlier run's files in %s (%s)", out,
                    ", ".join(str(p.relative_to(out)) for p in found))
        return
    listed = ", ".join(str(p.relative_to(out)) for p in found[:6]) + (" ..." if len(found) > 6 else "")
    what = "resume it" if ckpt_path is None else f"ckpt_path={ckpt_path} is not one of its checkpoints"
    raise RunFolderError(
        f"the output folder {out} already holds a run ({listed}); a new run would overwrite it. To continue "
        f"that run, give ckpt_path=last (or ckpt_path=auto){'' if ckpt_path is None else f' ({what})'}; to "
        "start a new one, choose another folder (hydra.run.dir=... or paths.output_dir=...); to replace it, "
        "add overwrite=true")


def prepare_run(cfg: DictConfig, stage: str) -> tuple[Path, SemiSegDataModule, pl.LightningModule]:
    """Seed, create the output folder, resolve and check the data, build the method: everything
    that can fail on bad input happens here, before a trainer starts."""
    quiet_third_party()
    check_run_options(cfg, stage)
    check_method_options(cfg)
    if stage == "fit":
        for msg in reference_override_warnings(cfg):
            log.warning("NOT THE REFERENCE RUN: %s", msg)
    pl.seed_everything(int(cfg.seed), workers=True)
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup(stage)  # data.n_labeled and the other data keys are named by the data module's checks
    return out, datamodule, build_method(cfg, datamodule)


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[3]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
        return out.stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


def wandb_mode(requested: str) -> str:
    """``online`` only when asked for AND an API key is configured; otherwise offline (or disabled)."""
    if requested not in ("online", "offline", "disabled"):
        raise ValueError(f"logger.wandb.mode={requested!r}: expected online | offline | disabled")
    if requested == "online" and not (os.environ.get("WANDB_API_KEY") or Path.home().joinpath(".netrc").exists()):
        log.warning("logger.wandb.mode=online but no W&B API key is configured: logging offline "
                    "(sync later with `wandb sync <run dir>/wandb/offline-run-*`)")
        return "offline"
    return requested


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def swept_keys(argv: list[str], sweeper_params: Any = None) -> set[str]:
    """Keys a sweep varies: command-line sweep overrides (``a=1,2``, ``range(...)``, ``choice(...)``)
    and the sweeper's own ``params`` (Optuna)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = {_override_key(str(k)) for k in (sweeper_params or {})}
    candidates = [a for a in argv if "=" in a and not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(candidates)
    except Exception:  # noqa: BLE001 - an odd argument: name the job by its number
        return keys
    return keys | {o.key_or_group for o in parsed if o.is_sweep_override()}


def swept_overrides(job_overrides: list[str], keys: set[str]) -> list[str]:
    """The job's overrides of the swept ``keys``: ``-m a=1,2 b=3`` -> job 0 ``["a=1"]``."""
    return [o for o in job_overrides if _override_key(o) in keys]


def hydra_job() -> dict[str, Any] | None:
    """``{"multirun", "sweep_id", "experiment", "overrides", "num"}`` of the running Hydra job
    (``overrides`` = the swept ones, comma-joined); None outside a Hydra app."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None
        hc = HydraConfig.get()
        experiment = hc.runtime.choices.get("experiment")
        if hc.mode != RunMode.MULTIRUN:
            return {"multirun": False, "sweep_id": "", "experiment": experiment, "overrides": "", "num": 0}
        keys = swept_keys(sys.argv[1:], hc.sweeper.get("params"))
        swept = swept_overrides([str(o) for o in hc.overrides.task], keys)
        return {"multirun": True, "sweep_id": Path(str(hc.sweep.dir)).name, "experiment": experiment,
                "overrides": ",".join(swept), "num": int(hc.job.num)}
    except Exception:  # noqa: BLE001 - a partial Hydra config (compose API) has no job node
        return None


def wandb_identity(name: str, seed: int, task: str, wcfg: Any, job: dict[str, Any] | None
                   ) -> dict[str, str | None]:
    """W&B ``name`` / ``group`` / ``job_type`` of a run (``logger.wandb.run_name/group/job_type`` win):
    single run -> ``<name>_seed<seed>``, no group; multirun job -> named by its swept overrides
    (``job<num>`` without any), grouped as ``<experiment or name>_<sweep id>``; job_type = the task."""
    multirun = bool(job and job["multirun"])
    auto_name = (job["overrides"] or f"job{job['num']}") if multirun else f"{name}_seed{seed}"
    auto_group = f"{job.get('experiment') or name}_{job['sweep_id']}" if multirun else None
    return {"name": (wcfg.get("run_name") or auto_name)[:128], "group": wcfg.get("group") or auto_group,
            "job_type": (wcfg.get("job_type") or task)[:64]}


def build_loggers(cfg: DictConfig, out: Path) -> list:
    loggers: list = []
    lcfg = cfg.logger
    if lcfg.csv.enabled:
        from pytorch_lightning.loggers import CSVLogger

        loggers.append(CSVLogger(save_dir=str(out), name="csv", version=""))
    if lcfg.wandb.enabled:
        mode = wandb_mode(lcfg.wandb.mode)
        if mode != "disabled":
            from pytorch_lightning.loggers import WandbLogger

            config = OmegaConf.to_container(cfg, resolve=True)
            config["git_commit"] = git_commit()
            ident = wandb_identity(str(cfg.name), int(cfg.seed), str(cfg.task), lcfg.wandb, hydra_job())
            loggers.append(WandbLogger(
                name=ident["name"], save_dir=str(out), project=lcfg.wandb.project,
                entity=lcfg.wandb.entity, group=ident["group"], job_type=ident["job_type"],
                tags=list(lcfg.wandb.tags) or None,
                log_model=lcfg.wandb.log_model, offline=(mode == "offline"), config=config))
            drop_wandb_anonymous_setting(loggers[-1])
    return loggers


def build_callbacks(cfg: DictConfig, out: Path, has_logger: bool) -> list[Callback]:
    ccfg = cfg.callbacks
    callbacks: list[Callback] = [
        ModelCheckpoint(dirpath=str(out / "checkpoints"), filename="best", monitor=ccfg.checkpoint.monitor,
                        mode=ccfg.checkpoint.mode, save_top_k=1, save_last=ccfg.checkpoint.save_last,
                        auto_insert_metric_name=False,
                        # last.ckpt / best.ckpt are replaced in place (atomically), never versioned as
                        # last-v1.ckpt: after a resume last.ckpt stays the newest state, best.ckpt the best
                        enable_version_counter=False),
    ]
    from semiseg_lit.callbacks.progress import ParameterSummary

    callbacks.append(ParameterSummary())
    # DDP: identical BN statistics on every rank at validation / the end of training (no-op on 1 process)
    from semiseg_lit.callbacks.buffer_sync import SyncBatchNormStatistics

    callbacks.append(SyncBatchNormStatistics())
    if ccfg.lr_monitor and has_logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if ccfg.rich_progress and cfg.trainer.enable_progress_bar:
        from semiseg_lit.callbacks.progress import TrainingProgressBar

        callbacks.append(TrainingProgressBar(leave=True))
    panels = ccfg.get("wandb_panels")
    if panels is not None and panels.enabled and has_logger:
        # images/tables go to W&B (when its logger is on), the pseudo-label scalars to every logger
        from semiseg_lit.callbacks.wandb_panels import WandbPanels

        callbacks.append(WandbPanels(n_images=panels.n_images, every_n_val=panels.every_n_val,
                                     max_side=panels.max_side, train_every_n_steps=panels.train_every_n_steps,
                                     n_train_images=panels.n_train_images))
    # SIGTERM / SIGUSR1 -> checkpoints/last.ckpt and a clean exit (callbacks/preemption.py)
    from semiseg_lit.callbacks.preemption import Preemption

    callbacks.append(Preemption(out / "checkpoints" / "last.ckpt"))
    return callbacks


def resolve_strategy(cfg: DictConfig) -> str:
    """``trainer.strategy``; ``ddp`` becomes ``ddp_find_unused_parameters_true`` for a method class that sets
    ``ddp_find_unused_parameters = True`` (modules idle in some steps, e.g. ELN's before its stage 3)."""
    strategy = str(cfg.trainer.strategy)
    if strategy == "ddp" and getattr(method_class(cfg), "ddp_find_unused_parameters", False):
        return "ddp_find_unused_parameters_true"
    return strategy


def build_trainer(cfg: DictConfig, out: Path, callbacks: list[Callback], loggers: list) -> pl.Trainer:
    t = cfg.trainer
    kwargs: dict[str, Any] = dict(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=resolve_strategy(cfg),
        precision=t.precision, max_steps=t.max_steps, log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=t.gradient_clip_val, accumulate_grad_batches=t.accumulate_grad_batches,
        deterministic=t.deterministic, benchmark=t.benchmark, sync_batchnorm=t.sync_batchnorm,
        enable_progress_bar=t.enable_progress_bar, num_sanity_val_steps=t.num_sanity_val_steps,
        fast_dev_run=t.fast_dev_run, default_root_dir=str(out), callbacks=callbacks,
        logger=loggers if loggers else False, plugins=[AtomicCheckpointIO()],
        # the training streams are infinite and shard themselves across ranks
        use_distributed_sampler=False, max_epochs=-1, check_val_every_n_epoch=None,
        val_check_interval=max(1, min(int(t.val_check_interval), int(t.max_steps))),
    )
    if t.limit_val_batches is not None:
        kwargs["limit_val_batches"] = t.limit_val_batches
    return pl.Trainer(**kwargs)
