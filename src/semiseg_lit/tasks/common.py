"""Building blocks shared by the tasks: data module + method, loggers, callbacks, trainer."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, RichProgressBar

from semiseg_lit.checkpointing import AtomicCheckpointIO
from semiseg_lit.data.datamodule import SemiSegDataModule

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
    return SemiSegDataModule(cfg.data, seed=int(cfg.seed), streams=tuple(cls.required_streams(cfg)))


def build_method(cfg: DictConfig, datamodule: SemiSegDataModule) -> pl.LightningModule:
    return method_class(cfg)(cfg, datamodule.class_info)


def prepare_run(cfg: DictConfig, stage: str) -> tuple[Path, SemiSegDataModule, pl.LightningModule]:
    """Seed, create the output folder, resolve and check the data, build the method: everything
    that can fail on bad input happens here, before a trainer starts."""
    pl.seed_everything(int(cfg.seed), workers=True)
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup(stage)
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
            loggers.append(WandbLogger(
                name=f"{cfg.name}_seed{cfg.seed}", save_dir=str(out), project=lcfg.wandb.project,
                entity=lcfg.wandb.entity, group=lcfg.wandb.group, tags=list(lcfg.wandb.tags) or None,
                log_model=lcfg.wandb.log_model, offline=(mode == "offline"), config=config))
    return loggers


def build_callbacks(cfg: DictConfig, out: Path, has_logger: bool) -> list[Callback]:
    ccfg = cfg.callbacks
    callbacks: list[Callback] = [
        ModelCheckpoint(dirpath=str(out / "checkpoints"), filename="best", monitor=ccfg.checkpoint.monitor,
                        mode=ccfg.checkpoint.mode, save_top_k=1, save_last=ccfg.checkpoint.save_last,
                        auto_insert_metric_name=False),
    ]
    if ccfg.lr_monitor and has_logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if ccfg.rich_progress and cfg.trainer.enable_progress_bar:
        callbacks.append(RichProgressBar(leave=True))
    return callbacks


def build_trainer(cfg: DictConfig, out: Path, callbacks: list[Callback], loggers: list) -> pl.Trainer:
    t = cfg.trainer
    kwargs: dict[str, Any] = dict(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
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
