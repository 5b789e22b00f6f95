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
    cb.bank = torch.tensor([0.1, 0.2, 0.3, 0.4])
    fresh = ConfidenceBank(4, init="zeros")
    fresh.load_state_dict(cb.state_dict())
    assert torch.equal(fresh.bank, cb.bank)
    with pytest.raises(ValueError, match="5 classes"):
        ConfidenceBank(4).load_state_dict({"bank": torch.zeros(5)})


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="bank_absent"):
        ConfidenceBank(3, absent="forget")
    with pytest.raises(ValueError, match="bank_init"):
        ConfidenceBank(3, init="gaussian")
