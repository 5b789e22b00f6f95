"""Rich progress bar: step-based description, loss, lr and the ELN stage."""

from types import SimpleNamespace

import torch

from semiseg_lit.callbacks.progress import TrainingProgressBar, progress_items


def test_progress_items_format():
    assert progress_items(1.23456, 0.01, 3) == {"loss": "1.2346", "lr": "1.00e-02", "stage": "3"}
    assert progress_items(None, None, None) == {}


def fake_trainer(step: int = 5):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.02)
    return SimpleNamespace(loggers=[], progress_bar_metrics={"val/miou": torch.tensor(0.5)},
                           callback_metrics={"train/loss": torch.tensor(2.0)}, optimizers=[opt], global_step=step)


def test_bar_shows_loss_lr_and_stage_of_staged_methods():
    bar = TrainingProgressBar()
    staged = SimpleNamespace(stage=lambda step: 1 if step < 10 else 2)
    items = bar.get_metrics(fake_trainer(12), staged)
    assert items["loss"] == "2.0000" and items["lr"] == "2.00e-02" and items["stage"] == "2"
    assert items["val/miou"] == 0.5 and "v_num" not in items
    plain = bar.get_metrics(fake_trainer(), SimpleNamespace())
    assert "stage" not in plain


def test_bar_is_described_by_steps_not_epochs():
    assert TrainingProgressBar()._get_train_description(0).strip() == "Training"
