"""Speed options of the networks: ``torch.compile`` and the ``channels_last`` memory format.

``trainer.compile=true`` compiles, in place (``nn.Module.compile``), the encoder and the decoder of every
network a method holds (student, teacher, ELN's error-localisation network, aux decoders): the modules
where all the arithmetic is. Compiling the submodules rather than the method keeps every method's own
Python (banks, masks, mixing, losses) as it is, works with every method, and leaves parameter names and
checkpoints unchanged (no ``_orig_mod.`` prefix). Where ``torch.compile`` cannot run here (no Triton / C++
compiler for inductor, an unsupported Python), :func:`compile_problem` finds out once on a tiny function and
training continues uncompiled with one warning.

``trainer.channels_last=true`` converts the 4-D parameters and buffers to the NHWC memory format; the first
convolution then writes NHWC activations and every later one follows (cuDNN picks the format from the input
or the weight), which is what tensor cores prefer for mixed precision.
"""

from __future__ import annotations

import torch
from torch import nn


def compile_targets(root: nn.Module) -> list[nn.Module]:
    """The ``encoder`` and ``decoder`` submodules of every network under ``root`` (each once)."""
    seen: set[int] = set()
    targets: list[nn.Module] = []
    for module in root.modules():
        for name in ("encoder", "decoder"):
            child = getattr(module, name, None)
            if isinstance(child, nn.Module) and id(child) not in seen:
                seen.add(id(child))
                targets.append(child)
    return targets


def compile_problem(device: torch.device, backend: str = "inductor") -> str | None:
    """``None`` if ``torch.compile`` with ``backend`` compiles and runs a tiny function on ``device``, else
    the reason, in one line."""
    try:
        fn = torch.compile(lambda x: torch.relu(x * 2.0 + 1.0), dynamic=False, backend=backend)
        out = fn(torch.linspace(-1.0, 1.0, 8, device=device))
        expected = torch.relu(torch.linspace(-1.0, 1.0, 8, device=device) * 2.0 + 1.0)
        if not torch.allclose(out, expected):
            return "the compiled probe function returned a wrong result"
    except Exception as exc:  # noqa: BLE001 - any failure means: do not compile here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"{type(exc).__name__}: {first[:300]}"
    return None


def compile_networks(root: nn.Module, mode: str | None = None, backend: str = "inductor") -> int:
    """Compile every target of :func:`compile_targets` in place; returns how many were compiled.
    ``backend``: inductor (generated kernels) or e.g. ``aot_eager`` (graph capture only, for tests)."""
    targets = compile_targets(root)
    for module in targets:
        module.compile(mode=mode, backend=backend)
    return len(targets)


def to_channels_last(root: nn.Module) -> nn.Module:
    """4-D parameters and buffers of ``root`` in the channels-last (NHWC) memory format, in place."""
    return root.to(memory_format=torch.channels_last)
