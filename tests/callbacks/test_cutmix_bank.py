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
    assert conf.tolist() == [[2.0, 2.0]] and bank[:, :3].any(0).tolist() == [True, True, True]
    with pytest.raises(RuntimeError, match="cutmix_bank_lag"):
        cb.snapshot_for(9)  # step 7 has not happened


def test_state_roundtrip_restores_the_snapshots():
    cb = CutMixBank(num_classes=2, num_images=3, lag=2)
    cb.bank[1, 2] = True
    _end_step(cb, 0, torch.tensor([0.5, 0.25]))
    fresh = CutMixBank(num_classes=2, num_images=3, lag=2)
    fresh.load_state_dict(cb.state_dict())
    assert torch.equal(fresh.bank, cb.bank)
    assert torch.equal(fresh.snapshot_for(2)[0], torch.tensor([[0.5, 0.25]]))
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


def test_old_checkpoint_without_groups_loads():
    cb = CutMixBank(num_classes=2, num_images=3, lag=2)
    _end_step(cb, 0, torch.tensor([0.5, 0.25]))
    state = cb.state_dict()
    old = {**state, "snap_conf": state["snap_conf"][:, 0], "initial_conf": state["initial_conf"][0]}
    del old["first_virtual_rank"]  # written before virtual ranks: conf rows [C]
    two = CutMixBank(num_classes=2, num_images=3, lag=2, groups=2)
    two.load_state_dict(old)
    assert torch.equal(two.snapshot_for(2)[0], torch.tensor([[0.5, 0.25], [0.5, 0.25]]))
    assert two.initial_conf.shape == (2, 2)


def test_bank_sampler_draws_each_emulated_gpu_from_its_own_confidence_row():
    # 2 groups of 2 items; group 0's row makes class 0 certain-ish, group 1's row class 1 (softmax(1 - conf))
    cb = CutMixBank(num_classes=2, num_images=4, lag=1, groups=2)
    cb.bank[0, [0, 1]] = True
    cb.bank[1, [2, 3]] = True
    _end_step(cb, 0, torch.tensor([[-30.0, 1.0], [1.0, -30.0]]))
    device = list(itertools.islice(iter(CutMixBankSampler(lambda: cb, 4, seed=0, start=4, groups=2)), 4))
    assert [cls for _, _, cls in device] == [0, 0, 1, 1]
    assert {i for i, _, _ in device[:2]} <= {0, 1} and {i for i, _, _ in device[2:]} <= {2, 3}

    # the same draws as 2 devices of one group each, reading their own row (virtual ranks 0 and 1)
    class Row:
        def __init__(self, g):
            self.g = g

        def snapshot_for(self, step):
            conf, bank = cb.snapshot_for(step)
            return conf[self.g:self.g + 1], bank

    ranks = [list(itertools.islice(iter(CutMixBankSampler(lambda r=r: Row(r), 2, seed=0, rank=r, world_size=2,
                                                          start=2)), 2)) for r in (0, 1)]
    assert device == ranks[0] + ranks[1]
