"""W&B dashboard panels: pure helpers, and tiny AEL / ELN trainings whose offline W&B run files are read back."""

from __future__ import annotations

import csv
import json
import re
import struct
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from semiseg_lit.callbacks.wandb_panels import (
    WandbPanels,
    error_map_strip,
    iou_table_rows,
    mask_entry,
    panel_indices,
    pseudo_label_stats,
    resize_for_panel,
)
from semiseg_lit.tasks import run_task
from tests.conftest import tiny_overrides

CLASSES = ["road", "sidewalk", "building", "vegetation", "sky", "car", "pole", "sign", "person", "bicycle"]


# ----------------------------------------------------------------------------------------- reading W&B files
def wandb_records(run_dir: Path, timeout: float = 60.0) -> list:
    """Every record of an offline run's ``run-*.wandb`` transaction log, as ``wandb_internal_pb2.Record``.

    ``wandb.finish()`` can return before the W&B service has written the end of the log, so this
    waits (up to ``timeout`` seconds) for the final ``exit`` record.
    """
    deadline = time.monotonic() + timeout
    while True:
        (log_file,) = run_dir.glob("run-*.wandb")
        records = parse_wandb_log(log_file.read_bytes())
        if (records and records[-1].WhichOneof("record_type") == "exit") or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def parse_wandb_log(data: bytes) -> list:
    """Records of a ``.wandb`` file: LevelDB's log format behind a 7-byte W&B header, i.e. 32 KiB
    blocks of chunks, each with a 7-byte header (crc32c, little-endian length, type 1 full / 2 first /
    3 middle / 4 last). A torn last chunk is dropped."""
    from wandb.proto import wandb_internal_pb2 as pb

    pos, block, pending, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        if pos + 7 + length > len(data):
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def history_keys(records: list) -> set[str]:
    keys = set()
    for r in records:
        if r.WhichOneof("record_type") == "history":
            keys |= {i.key or "/".join(i.nested_key) for i in r.history.item}
    return keys


def history_values(records: list, key: str) -> list:
    return [json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "history"
            for i in r.history.item if (i.key or "/".join(i.nested_key)) == key]


def run_record(records: list):
    return next(r.run for r in records if r.WhichOneof("record_type") == "run")


def only_offline_run(out: Path) -> Path:
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0]


def csv_columns(out: Path) -> list[str]:
    with open(out / "csv" / "metrics.csv") as f:
        return next(csv.reader(f))


# ----------------------------------------------------------------------------------------- pure helpers
def test_panel_indices_are_fixed_distinct_and_evenly_spaced():
    assert panel_indices(12, 4) == [0, 4, 7, 11]
    assert panel_indices(12, 4) == panel_indices(12, 4)
    assert panel_indices(3, 8) == [0, 1, 2]
    assert panel_indices(5, 1) == [0]
    assert panel_indices(0, 4) == [] and panel_indices(9, 0) == []
    with pytest.raises(ValueError, match="n_val=-1"):
        panel_indices(-1, 2)


def test_iou_table_rows_name_classes_and_groups():
    rows = iou_table_rows(["a", "b", "c"], [0.5, 0.25, 0.0], head=[0], tail=[2])
    assert rows == [["a", 0.5, "head"], ["b", 0.25, ""], ["c", 0.0, "tail"]]
    with pytest.raises(ValueError, match="2 class names but 3"):
        iou_table_rows(["a", "b"], [0.1, 0.2, 0.3])


def test_mask_entry_is_uint8_with_class_labels():
    entry = mask_entry(torch.tensor([[0, 1], [255, 2]]), {0: "a", 1: "b", 2: "c", 255: "ignore"})
    assert entry["mask_data"].dtype == np.uint8 and entry["mask_data"].tolist() == [[0, 1], [255, 2]]
    assert entry["class_labels"][255] == "ignore"
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        mask_entry(torch.zeros(1, 2, 2), {})
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        mask_entry(torch.tensor([[300]]), {})


def test_resize_for_panel_keeps_labels_and_aspect():
    img = torch.zeros(3, 100, 50, dtype=torch.uint8)
    mask = torch.zeros(100, 50, dtype=torch.long)
    mask[50:] = 7
    small, masks = resize_for_panel(img, {"gt": mask}, max_side=20)
    assert small.shape == (3, 20, 10) and small.dtype == torch.uint8
    assert masks["gt"].shape == (20, 10) and set(masks["gt"].unique().tolist()) == {0, 7}
    same, same_masks = resize_for_panel(img, {"gt": mask}, max_side=512)
    assert same is img and same_masks["gt"] is mask


def test_error_map_strip_shows_probability_and_true_errors():
    img = torch.full((3, 2, 2), 10, dtype=torch.uint8)
    p_err = torch.tensor([[0.0, 1.0], [0.5, 0.0]])
    pred, gt = torch.tensor([[1, 2], [3, 4]]), torch.tensor([[1, 0], [255, 4]])
    strip = error_map_strip(img, p_err, pred, gt, ignore_index=255, gap=1)
    assert strip.shape == (2, 2 * 3 + 2, 3) and strip.dtype == np.uint8
    assert strip[:, 2, 0].tolist() == [255, 255]                      # white gap
    assert strip[:, 3:5, 0].tolist() == [[0, 255], [128, 0]]         # P(error) as grey levels
    assert strip[:, 6:8, 0].tolist() == [[0, 255], [128, 0]]         # wrong = white, ignore = grey


def test_pseudo_label_stats_hand_computed():
    pl = torch.tensor([[[1, 255], [2, 2]]])
    gt = torch.tensor([[[1, 0], [3, 255]]])
    stats = pseudo_label_stats(pl, gt, None, ignore_index=255)
    assert float(stats["kept_frac"]) == pytest.approx(0.75)
    # kept with known truth: (0,0) right, (1,0) wrong -> 1/2
    assert float(stats["pl_acc_kept"]) == pytest.approx(0.5)
    pasted = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])  # (1,0) came from the bank image: truth unknown
    assert float(pseudo_label_stats(pl, gt, pasted)["pl_acc_kept"]) == pytest.approx(1.0)
    assert set(pseudo_label_stats(pl, None, None)) == {"kept_frac"}
    with pytest.raises(ValueError, match="differ"):
        pseudo_label_stats(pl, gt[..., :1], None)


def test_every_n_val_counts_validations_from_the_step():
    cb = WandbPanels(every_n_val=2)

    def trainer(step, fn="fit"):
        return SimpleNamespace(state=SimpleNamespace(fn=fn), val_check_batch=100, global_step=step)

    assert [cb.is_panel_validation(trainer(s)) for s in (100, 200, 300, 400)] == [True, False, True, False]
    assert cb.is_panel_validation(trainer(200, fn="validate"))  # the final evaluation is always logged
    assert WandbPanels(every_n_val=1).is_panel_validation(trainer(200))


def test_callback_rejects_bad_settings():
    with pytest.raises(ValueError, match="callbacks.wandb_panels.every_n_val=0"):
        WandbPanels(every_n_val=0)
    with pytest.raises(ValueError, match="n_images=-1"):
        WandbPanels(n_images=-1)


# ----------------------------------------------------------------------------------------- end to end
def panel_overrides(synth_root: Path, out: Path) -> list[str]:
    return [*tiny_overrides(synth_root, out), "logger.wandb.enabled=true", "trainer.log_every_n_steps=1",
            "callbacks.wandb_panels.n_images=2", "callbacks.wandb_panels.train_every_n_steps=1",
            "callbacks.wandb_panels.n_train_images=2"]


def check_common_panels(out: Path, records: list, masks: set[str]) -> None:
    """IoU table (+ bar chart), the fixed image panel with its masks, numbers also in the CSV."""
    media = only_offline_run(out) / "files" / "media"
    tables = sorted((media / "table" / "val").glob("iou_table_*.table.json"))
    assert tables, "no per-class IoU table"
    table = json.loads(tables[-1].read_text())
    assert table["columns"] == ["class", "iou", "group"]
    assert [row[0] for row in table["data"]] == CLASSES
    assert {row[2] for row in table["data"]} == {"head", "tail"}
    config = {u.key: u.value_json for u in run_record(records).config.update}
    assert re.fullmatch(r'"[0-9a-f]{40}"', config["git_commit"])  # the config and commit of the run
    assert json.loads(config["method"])["name"] in ("supervised", "ael", "eln")
    assert "config" not in config and "class_names" not in config  # no second copy from save_hyperparameters
    visualize = [json.loads(u.value_json) for r in records if r.WhichOneof("record_type") == "config"
                 for u in r.config.update if (u.key or ".".join(u.nested_key)) == "_wandb.visualize.val/iou_bar"]
    assert visualize and visualize[0]["panel_config"]["panelDefId"] == "wandb/bar/v0"
    # fixed panel: the same 2 validation images at each validation, with the masks asked for
    panel = history_values(records, "panel/val/captions")
    assert len(panel) >= 2 and all(c == panel[0] for c in panel) and len(panel[0]) == 2
    all_masks = history_values(records, "panel/val/all_masks")[-1]
    assert all(set(m) == masks for m in all_masks)
    assert len(list((media / "images" / "mask" / "panel").glob("val_*.mask.png"))) >= 2 * len(masks)
    keys = history_keys(records)
    assert {"val/head_miou", "val/tail_miou", *(f"val_iou/{c}" for c in CLASSES)} <= keys
    columns = csv_columns(out)
    assert {"val/head_miou", "val/tail_miou", *(f"val_iou/{c}" for c in CLASSES)} <= set(columns)
    numeric = {k for k in keys if k.startswith(("train/", "val/", "val_iou/", "val_eln/", "bank/", "lr-"))
               and not k.startswith(("val/iou_table", "val/iou_bar"))}
    assert numeric <= set(columns), numeric - set(columns)  # every W&B number is in the CSV too


@pytest.mark.slow
def test_supervised_run_has_config_commit_table_and_panel(compose_cfg, synth_root, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run_task(compose_cfg(["+experiment=supervised_synthscapes", *panel_overrides(synth_root, tmp_path)]))
    records = wandb_records(only_offline_run(tmp_path))
    check_common_panels(tmp_path, records, {"ground_truth", "prediction"})  # no teacher, no pseudo labels
    assert run_record(records).display_name == "supervised_synthscapes_seed0"


@pytest.mark.slow
def test_default_experiment_ael_run_has_table_panel_bank_curves_and_mixed_batch(compose_cfg, synth_root, tmp_path,
                                                                                monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run_task(compose_cfg(panel_overrides(synth_root, tmp_path)))  # no +experiment: the default one, AEL
    records = wandb_records(only_offline_run(tmp_path))
    assert run_record(records).display_name == "ael_synthscapes_seed0"
    check_common_panels(tmp_path, records, {"ground_truth", "prediction", "pseudo_label"})
    keys, columns = history_keys(records), set(csv_columns(tmp_path))
    bank = {f"bank/{c}" for c in CLASSES}
    assert bank <= keys and bank <= columns  # confidence-bank curves per class, W&B and CSV
    assert {"train/kept_frac", "train/pl_acc_kept"} <= keys & columns
    # training batch after Copy-Paste (ground truth) and CutMix (pseudo labels + pasted region)
    assert history_values(records, "train_batch/labeled/count")[0] == 2
    assert {m for ms in history_values(records, "train_batch/mixed/all_masks")[0] for m in ms} == {
        "pseudo_label", "pasted"}
    media = only_offline_run(tmp_path) / "files" / "media" / "images"
    assert list((media / "train_batch").glob("mixed_*.png")) and list((media / "train_batch").glob("labeled_*.png"))


@pytest.mark.slow
def test_eln_run_has_error_maps_and_pseudo_label_panel(compose_cfg, synth_root, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    # stage 2 at step 0, stage 3 (teacher + ELN pseudo labels) at step 1
    run_task(compose_cfg(["+experiment=eln_synthscapes", *panel_overrides(synth_root, tmp_path),
                          "method.eln.pretrain_steps=0", "method.eln.eln_steps=1", "method.eln.decoder_channels=32",
                          "trainer.limit_val_batches=1"]))
    records = wandb_records(only_offline_run(tmp_path))
    check_common_panels(tmp_path, records, {"ground_truth", "prediction", "pseudo_label"})
    media = only_offline_run(tmp_path) / "files" / "media" / "images"
    strips = list((media / "panel").glob("eln_error_maps_*.png"))
    assert len(strips) >= 2
    from PIL import Image

    width, height = Image.open(strips[0]).size
    assert width == 3 * height + 4  # image | P(error) | true errors
    error_masks = history_values(records, "panel/eln_errors/all_masks")[-1]
    assert all(set(m) == {"predicted_error", "true_error"} for m in error_masks)
    keys = history_keys(records)
    assert {"val_eln/auroc", "train/kept_frac", "train/stage"} <= keys & set(csv_columns(tmp_path))
    assert not any(k.startswith("train_batch/") for k in keys)  # ELN exposes no mixed batch
