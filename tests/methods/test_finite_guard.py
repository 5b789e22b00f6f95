"""FiniteGuard: the first non-finite step is latched on the device and reported with its terms."""

from __future__ import annotations

import math

import pytest
import torch

from semiseg_lit.methods.finite_guard import FiniteGuard


def _t(x: float) -> torch.Tensor:
    return torch.tensor(x)


def test_nothing_latched_no_error():
    guard = FiniteGuard()
    guard.check()  # never tracked
    for step in range(3):
        guard.track(_t(1.0 + step), {"sup": _t(1.0), "unsup": _t(float(step))}, step)
    guard.check()


def test_first_bad_step_value_and_terms_are_reported():
    guard = FiniteGuard()
    guard.track(_t(2.0), {"sup": _t(1.0), "unsup": _t(1.0)}, 0)
    guard.track(_t(math.nan), {"sup": _t(1.0), "unsup": _t(math.nan)}, 1)  # the first bad step
    guard.track(_t(math.inf), {"sup": _t(math.inf), "unsup": _t(1.0)}, 2)  # later: not reported
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 1: nan \(terms: \['unsup'\]\)") as err:
        guard.check()
    assert "last good checkpoint is kept" in str(err.value)


def test_total_only_when_every_term_is_finite():
    guard = FiniteGuard()
    guard.track(_t(math.inf), {"sup": _t(1e38), "aux": _t(1e38)}, 7)  # the sum overflowed
    with pytest.raises(FloatingPointError, match=r"step 7: inf \(terms: total only\)"):
        guard.check()


def test_gathered_ranks_report_the_earliest_bad_step():
    """Rank 0 clean, rank 1 bad at step 4: the gathered check raises on every rank, naming step 4."""
    clean, bad = FiniteGuard(), FiniteGuard()
    for step in range(6):
        clean.track(_t(1.0), {"sup": _t(1.0)}, step)
        bad.track(_t(math.nan if step >= 4 else 1.0), {"sup": _t(math.nan if step >= 4 else 1.0)}, step)
    packed = {}

    def gather_from(guard):  # what all_gather returns: [world, ...]
        def gather(local):
            packed[id(guard)] = local
            other = bad if guard is clean else clean
            other_local = torch.cat([other._step.float().reshape(1), other._value.reshape(1), other._terms.float()])
            return torch.stack([local, other_local] if guard is clean else [other_local, local])
        return gather

    for guard in (clean, bad):
        with pytest.raises(FloatingPointError, match=r"step 4: nan \(terms: \['sup'\]\)"):
            guard.check(gather_from(guard))
    clean.check()  # locally clean


def test_track_does_not_sync(monkeypatch):
    """track() never reads a tensor on the host (no .item()/bool()/tolist())."""
    guard = FiniteGuard()

    def fail(*a, **k):
        raise AssertionError("host sync in track()")

    monkeypatch.setattr(torch.Tensor, "item", fail)
    monkeypatch.setattr(torch.Tensor, "tolist", fail)
    monkeypatch.setattr(torch.Tensor, "__bool__", fail)
    guard.track(_t(math.nan), {"sup": _t(math.nan)}, 3)
    monkeypatch.undo()
    with pytest.raises(FloatingPointError, match="step 3"):
        guard.check()
