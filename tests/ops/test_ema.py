import pytest
import torch
from torch import nn

from semiseg_lit.ops.ema import ema_decay, ema_update_


def test_warmup_decay_schedule():
    # d = min(1 - 1/(step+1), 0.99): 0, 0.5, 2/3, ..., capped at 0.99 from step 99
    assert ema_decay(0, 0.99) == 0.0
    assert ema_decay(1, 0.99) == 0.5
    assert ema_decay(2, 0.99) == pytest.approx(2 / 3)
    assert ema_decay(99, 0.99) == pytest.approx(0.99)
    assert ema_decay(5000, 0.99) == pytest.approx(0.99)
    assert ema_decay(0, 0.995, warmup=False) == 0.995


def _pair():
    torch.manual_seed(0)
    s = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    t = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    s[1].running_mean.fill_(1.0)
    s[1].num_batches_tracked.fill_(7)
    return t, s


def test_ema_update_hand_example():
    t, s = _pair()
    t0 = t[0].weight.clone()
    ema_update_(t, s, decay=0.75)
    # teacher = 0.75 * teacher + 0.25 * student
    assert torch.allclose(t[0].weight, 0.75 * t0 + 0.25 * s[0].weight)
    # buffers untouched by default (reference behaviour)
    assert torch.equal(t[1].running_mean, torch.zeros(2)) and int(t[1].num_batches_tracked) == 0


def test_decay_zero_copies_and_buffers_optional():
    t, s = _pair()
    ema_update_(t, s, decay=0.0, average_buffers=True)
    for a, b in zip(t.state_dict().values(), s.state_dict().values()):
        assert torch.equal(a, b)


def test_fused_update_equals_the_per_parameter_loop():
    """One ``_foreach_lerp_`` over all tensors == ``t ← d·t + (1-d)·s`` parameter by parameter."""
    from semiseg_lit.models.deeplab import SegmentationNet

    torch.manual_seed(1)
    s = SegmentationNet(num_classes=3, encoder="resnet18", decoder_channels=16)
    t = SegmentationNet(num_classes=3, encoder="resnet18", decoder_channels=16)
    ref = {k: v.clone() for k, v in t.state_dict().items()}
    d = 0.9
    ema_update_(t, s, decay=d)
    for (name, p_t), p_s in zip(t.named_parameters(), s.parameters()):
        assert torch.allclose(p_t, d * ref[name] + (1 - d) * p_s, atol=1e-6), name
    for name, buf in t.named_buffers():  # BN statistics are the teacher's own (reference)
        assert torch.equal(buf, ref[name]), name


def test_auto_ema_decay_follows_the_schedule_and_is_the_reference_for_long_ones():
    from semiseg_lit.ops.ema import ema_decay_for_schedule

    # T = clip(max_steps / 40, 1, 1 / (1 - reference)), d = 1 - 1/T
    assert ema_decay_for_schedule(400, 0.99) == pytest.approx(0.9)       # T = 10
    assert ema_decay_for_schedule(800, 0.99) == pytest.approx(0.95)      # T = 20
    assert ema_decay_for_schedule(2000, 0.99) == pytest.approx(0.98)     # T = 50
    assert ema_decay_for_schedule(20, 0.99) == 0.0                       # T clipped to 1: teacher = student
    # every reference schedule gets exactly the official cap: AEL 0.99 (T 100) from 4000 steps,
    # ELN 0.995 (T 200) from 8000, UniMatch V2 0.996 (T 250) from 10000
    for steps in (4000, 18600, 40000):
        assert ema_decay_for_schedule(steps, 0.99) == pytest.approx(0.99, abs=1e-12)
    assert ema_decay_for_schedule(8000, 0.995) == pytest.approx(0.995, abs=1e-12)
    assert ema_decay_for_schedule(4000, 0.995) == pytest.approx(0.99)    # T = 100 < 200
    assert ema_decay_for_schedule(10000, 0.996) == pytest.approx(0.996, abs=1e-12)


def test_resolve_ema_decay_accepts_auto_and_numbers_and_names_the_key_otherwise():
    from semiseg_lit.ops.ema import resolve_ema_decay

    assert resolve_ema_decay("auto", 400, "method.ael.ema_decay", 0.99) == pytest.approx(0.9)
    assert resolve_ema_decay(0.99, 400, "method.ael.ema_decay", 0.99) == 0.99
    assert resolve_ema_decay(0, 400, "method.ael.ema_decay", 0.99) == 0.0
    for bad in ("fast", 1.0, -0.1, True, None):
        with pytest.raises(ValueError, match=r"method\.eln\.ema_decay=.*0\.995 \(the reference\)"):
            resolve_ema_decay(bad, 400, "method.eln.ema_decay", 0.995)
    with pytest.raises(ValueError, match=r"method\.ael\.ema_decay=auto .*trainer\.max_steps=-1"):
        resolve_ema_decay("auto", -1, "method.ael.ema_decay", 0.99)
