import itertools
from types import SimpleNamespace

import pytest
import torch

from semiseg_lit.callbacks.cutmix_bank import CutMixBank
from semiseg_lit.data.samplers import CutMixBankSampler


def _end_step(cb, step, conf):
    module = SimpleNamespace(confidence_bank=SimpleNamespace(bank=conf))
    cb.on_train_batch_end(SimpleNamespace(global_step=step + 1), module, None, None, 0)


def test_update_marks_classes_present_in_the_teacher_prediction():
    cb = CutMixBank(num_classes=3, num_images=5, area_thresh=0.25)
    pred = torch.tensor([[[0, 0], [0, 2]], [[1, 1], [1, 1]]])  # image 3: classes 0 (3/4) and 2 (1/4); image 1: class 1
    cb.update(torch.tensor([3, 1]), pred)
    assert cb.bank[:, 3].tolist() == [True, False, True] and cb.bank[:, 1].tolist() == [False, True, False]
    cb.update(torch.tensor([3]), torch.ones(1, 2, 2, dtype=torch.long))  # image 3 seen again: only class 1
    assert cb.bank[:, 3].tolist() == [False, True, False]


def test_snapshots_lag_behind_and_missing_ones_are_reported():
    cb = CutMixBank(num_classes=2, num_images=3, lag=2)
    conf0, _ = cb.snapshot_for(1)  # before step lag: initial state
    assert torch.equal(conf0, cb.initial_conf)
    for step in range(4):
        cb.bank[:, step % 3] = True
        _end_step(cb, step, torch.full((2,), float(step)))
    conf, bank = cb.snapshot_for(4)  # the state after step 2
    assert conf.tolist() == [2.0, 2.0] and bank[:, :3].any(0).tolist() == [True, True, True]
    with pytest.raises(RuntimeError, match="cutmix_bank_lag"):
        cb.snapshot_for(9)  # step 7 has not happened


def test_state_roundtrip_restores_the_snapshots():
    cb = CutMixBank(num_classes=2, num_images=3, lag=2)
    cb.bank[1, 2] = True
    _end_step(cb, 0, torch.tensor([0.5, 0.25]))
    fresh = CutMixBank(num_classes=2, num_images=3, lag=2)
    fresh.load_state_dict(cb.state_dict())
    assert torch.equal(fresh.bank, cb.bank)
    assert torch.equal(fresh.snapshot_for(2)[0], torch.tensor([0.5, 0.25]))
    with pytest.raises(ValueError, match="partition"):
        CutMixBank(num_classes=2, num_images=4).load_state_dict(cb.state_dict())


def test_bank_sampler_draws_images_that_show_the_drawn_class():
    cb = CutMixBank(num_classes=3, num_images=6, lag=1)
    cb.bank[0, [1, 4]] = True
    cb.bank[2, 5] = True
    _end_step(cb, 0, torch.tensor([0.0, 1.0, 1.0]))  # class 0 least confident: drawn most often
    sampler = CutMixBankSampler(lambda: cb, batch_size=4, seed=0, start=4)  # step 1 reads step 0's state
    draws = list(itertools.islice(iter(sampler), 4))
    for index, _, cls in draws:
        if cls == 0:
            assert index in (1, 4)
        elif cls == 2:
            assert index == 5
    assert draws == list(itertools.islice(iter(CutMixBankSampler(lambda: cb, 4, seed=0, start=4)), 4))
