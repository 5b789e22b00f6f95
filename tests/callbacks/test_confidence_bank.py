import pytest
import torch

from semiseg_lit.callbacks.confidence_bank import ConfidenceBank, class_confidence_sums


def test_class_confidence_sums_hand_example():
    # 1 image, 2x2 pixels, 3 classes; labels [[0, 0], [1, 255]]
    probs = torch.tensor([[[[0.8, 0.6], [0.1, 0.3]],
                           [[0.1, 0.2], [0.7, 0.3]],
                           [[0.1, 0.2], [0.2, 0.4]]]])
    target = torch.tensor([[[0, 0], [1, 255]]])
    sums, counts = class_confidence_sums(probs, target, 3)
    # class 0: p0 at its two pixels 0.8 + 0.6 = 1.4 (count 2); class 1: 0.7 (count 1); class 2: absent
    assert torch.allclose(sums, torch.tensor([1.4, 0.7, 0.0]))
    assert torch.equal(counts, torch.tensor([2.0, 1.0, 0.0]))


def test_update_is_the_reference_ema_with_absent_classes_pulled_to_zero():
    cb = ConfidenceBank(3, momentum=0.9, init="ones")
    probs = torch.tensor([[[[0.8]], [[0.1]], [[0.1]]]])
    bank = cb.update(probs, torch.tensor([[[0]]]))
    # class 0: 0.9*1 + 0.1*0.8 = 0.98 ; classes 1, 2 absent -> 0.9*1 + 0.1*0 = 0.9
    assert torch.allclose(bank, torch.tensor([0.98, 0.9, 0.9]))
    keep = ConfidenceBank(3, momentum=0.9, init="ones", absent="keep")
    assert torch.allclose(keep.update(probs, torch.tensor([[[0]]])), torch.tensor([0.98, 1.0, 1.0]))


def test_state_roundtrip_and_shape_check():
    cb = ConfidenceBank(4, init="random", seed=3)
    again = ConfidenceBank(4, init="random", seed=3)
    assert torch.equal(cb.bank, again.bank)  # identical initial bank on every rank
    cb.bank = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    fresh = ConfidenceBank(4, init="zeros")
    fresh.load_state_dict(cb.state_dict())
    assert torch.equal(fresh.bank, cb.bank)
    with pytest.raises(ValueError, match=r"shape \(5,\).*4 classes"):
        ConfidenceBank(4).load_state_dict({"bank": torch.zeros(5)})


def test_old_single_bank_checkpoint_loads_into_every_group():
    old = {"bank": torch.tensor([0.1, 0.2, 0.3])}  # written before virtual ranks: one [C] bank
    one = ConfidenceBank(3, init="zeros")
    one.load_state_dict(old)
    assert torch.equal(one.bank, torch.tensor([[0.1, 0.2, 0.3]]))
    four = ConfidenceBank(3, init="zeros", groups=4)
    four.load_state_dict(old)
    assert torch.equal(four.bank, torch.tensor([[0.1, 0.2, 0.3]] * 4))


def test_one_device_checkpoint_of_all_virtual_ranks_resumes_on_more_devices():
    # a one-device run emulating 4 GPUs saves rows 0..3; on 2 devices rank 1 (virtual ranks 2, 3) takes rows 2, 3
    saved = ConfidenceBank(2, init="zeros", groups=4)
    saved.bank = torch.arange(8.0).view(4, 2)
    rank1 = ConfidenceBank(2, init="zeros", groups=2)
    rank1.first_virtual_rank = 2
    rank1.load_state_dict(saved.state_dict())
    assert torch.equal(rank1.bank, torch.tensor([[4.0, 5.0], [6.0, 7.0]]))
    # rows this process needs that the checkpoint does not hold, in another layout: named key
    three = ConfidenceBank(2, init="zeros", groups=3)
    three.first_virtual_rank = 3
    with pytest.raises(ValueError, match="method.ael.virtual_ranks"):
        three.load_state_dict(saved.state_dict())


def test_grouped_update_is_one_bank_per_emulated_gpu_hand_example():
    # 2 images of 1x2 pixels, 2 classes, 2 groups (one image each): image 0 labels [0, 0], image 1 [1, 255]
    probs = torch.tensor([[[[0.8, 0.6]], [[0.2, 0.4]]],
                          [[[0.3, 0.5]], [[0.7, 0.5]]]])
    target = torch.tensor([[[0, 0]], [[1, 255]]])
    per_gpu = ConfidenceBank(2, momentum=0.5, init="zeros", sync=False, groups=2)
    bank = per_gpu.update(probs, target)
    # group 0: conf = [(0.8+0.6)/2, absent 0] = [0.7, 0]; group 1: [absent 0, 0.7]; bank = 0.5·0 + 0.5·conf
    assert torch.allclose(bank, torch.tensor([[0.35, 0.0], [0.0, 0.35]]))
    # sync: every emulated GPU holds the statistic of all of them: [0.7, 0.7] -> 0.35 in every row
    shared = ConfidenceBank(2, momentum=0.5, init="zeros", sync=True, groups=2)
    assert torch.allclose(shared.update(probs, target), torch.tensor([[0.35, 0.35], [0.35, 0.35]]))
    # the logged curve is the mean over the rows
    logged = {}
    module = type("M", (), {"log_dict": lambda self, d, **k: logged.update(d)})()
    trainer = type("T", (), {"global_step": 0})()
    per_gpu.class_names = ["a", "b"]
    per_gpu.on_train_batch_end(trainer, module, None, None, 0)
    assert torch.allclose(torch.stack([logged["bank/a"], logged["bank/b"]]), torch.tensor([0.175, 0.175]))
    # next to it, the measured statistic: class a only in group 0 (0.7), b only in group 1 (0.7)
    assert torch.allclose(torch.stack([logged["bank/a_measured"], logged["bank/b_measured"]]),
                          torch.tensor([0.7, 0.7]))
    # a class absent from the whole batch is NaN (a gap), not 0
    absent = ConfidenceBank(3, momentum=0.5, init="zeros", sync=False, groups=2)
    absent.update(torch.cat([probs, torch.zeros(2, 1, 1, 2)], 1), target)
    assert torch.allclose(absent.measured[:2], torch.tensor([0.7, 0.7])) and torch.isnan(absent.measured[2])


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="bank_absent"):
        ConfidenceBank(3, absent="forget")
    with pytest.raises(ValueError, match="bank_init"):
        ConfidenceBank(3, init="gaussian")
