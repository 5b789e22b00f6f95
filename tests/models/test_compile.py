"""trainer.compile / trainer.channels_last (models/compile.py, SegMethod.apply_speed_options)."""

from __future__ import annotations

import warnings

import pytest
import torch

from semiseg_lit.models.compile import compile_networks, compile_problem, compile_targets, to_channels_last
from semiseg_lit.models.deeplab import SegmentationNet


def tiny_net() -> SegmentationNet:
    torch.manual_seed(0)
    return SegmentationNet(num_classes=3, encoder="resnet18", decoder_channels=16, aux_head=True, aux_channels=8)


def test_targets_are_every_encoder_and_decoder_once():
    net = tiny_net()
    targets = compile_targets(net)
    assert targets == [net.encoder, net.decoder]
    holder = torch.nn.ModuleDict({"student": net, "teacher": tiny_net(), "alias": net})
    assert len(compile_targets(holder)) == 4  # the aliased student is not compiled twice


def test_channels_last_converts_weights_and_keeps_outputs():
    net = tiny_net().eval()
    x = torch.randn(1, 3, 64, 64)
    ref = net(x)
    to_channels_last(net)
    conv = net.encoder.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert torch.allclose(net(x), ref, atol=1e-4)


def test_compiled_network_matches_eager_and_keeps_state_dict_names():
    if compile_problem(torch.device("cpu"), "aot_eager") is not None:
        pytest.skip("torch.compile unavailable here")
    net = tiny_net().eval()
    keys = list(net.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = net.forward_all(x, aux=True)
        assert compile_networks(net, backend="aot_eager") == 2
        out = net.forward_all(x, aux=True)
    assert list(net.state_dict()) == keys  # no _orig_mod. prefix: checkpoints are unchanged
    assert torch.allclose(out.logits, ref.logits, atol=1e-4) and torch.allclose(out.aux, ref.aux, atol=1e-4)


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                           torch.nn.ReLU())
        self.decoder = torch.nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.decoder(self.encoder(x))


@pytest.mark.slow
def test_inductor_compiled_step_matches_eager():
    """Generated kernels (inductor, C++ on CPU) on a small network: forward and gradients as eager."""
    problem = compile_problem(torch.device("cpu"))
    if problem is not None:
        pytest.skip(f"torch.compile unavailable here: {problem}")
    torch.manual_seed(0)
    eager, compiled = _Tiny(), _Tiny()
    compiled.load_state_dict(eager.state_dict())
    assert compile_networks(compiled) == 2
    x = torch.randn(2, 3, 16, 16)
    for net in (eager, compiled):
        net(x).square().mean().backward()
    assert torch.allclose(compiled(x), eager(x), atol=1e-5)
    assert torch.allclose(compiled.encoder[0].weight.grad, eager.encoder[0].weight.grad, atol=1e-5)


def test_compile_problem_reports_a_failing_compiler(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    assert compile_problem(torch.device("cpu")) == "RuntimeError: no C++ compiler found"


def _fit(compose_cfg, synth_root, tmp_path, method: str, extra: list[str]):
    import pytorch_lightning as pl

    from semiseg_lit.tasks.common import build_trainer, prepare_run
    from tests.conftest import tiny_overrides

    cfg = compose_cfg([f"+experiment={method}_synthscapes", *tiny_overrides(synth_root, tmp_path),
                       "trainer.max_steps=1", "trainer.val_check_interval=1", "trainer.limit_val_batches=0",
                       "logger.csv.enabled=false", *extra])
    out, dm, model = prepare_run(cfg, "fit")
    trainer = build_trainer(cfg, out, [], [])
    assert isinstance(trainer, pl.Trainer)
    trainer.fit(model, datamodule=dm)
    return model


def test_compile_falls_back_with_one_warning(compose_cfg, synth_root, tmp_path, monkeypatch):
    import semiseg_lit.models.compile as mc

    monkeypatch.setattr(mc, "compile_problem", lambda device, backend: "RuntimeError: no C++ compiler found")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _fit(compose_cfg, synth_root, tmp_path, "supervised",
                     ["trainer.compile=true", "trainer.channels_last=true"])
    msgs = [str(w.message) for w in caught if "trainer.compile=true" in str(w.message)]
    assert len(msgs) == 1 and "no C++ compiler found" in msgs[0] and "without compilation" in msgs[0]
    assert not getattr(model, "_compiled", False)
    assert model.student.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["supervised", "ael", "eln"])
def test_every_method_trains_compiled(compose_cfg, synth_root, tmp_path, method):
    """Every network of every method runs through TorchDynamo + AOTAutograd (``aot_eager``: the graph
    capture and the traced backward of inductor without its code generation, which takes minutes on
    2 CPU cores; inductor itself is checked above on one network and on CUDA by gpu_check.py)."""
    if compile_problem(torch.device("cpu"), "aot_eager") is not None:
        pytest.skip("torch.compile unavailable here")
    extra = ["trainer.compile=true", "trainer.compile_backend=aot_eager"]
    if method == "eln":  # every ELN network in the step: stage 3 from step 0
        extra += ["method.eln.pretrain_steps=0", "method.eln.eln_steps=0", "method.eln.encoder=resnet18",
                  "method.eln.encoder_weights=null", "method.eln.decoder_channels=16"]
    model = _fit(compose_cfg, synth_root, tmp_path, method, extra)
    assert model._compiled
    compiled = [m for m in compile_targets(model) if getattr(m, "_compiled_call_impl", None) is not None]
    assert len(compiled) == len(compile_targets(model)) >= 2
