"""Error Localization Network (ELN, Kwon & Kwak, CVPR 2022), eln.md §2.3, on segmentation-models-pytorch.

Input ``cat([image, entropy(z_up), z_up])`` (3 + 1 + C channels, :func:`~semiseg_lit.ops.eln_targets.
eln_inputs`), output one logit per pixel; ``sigmoid`` = probability that the segmentation prediction at
that pixel is correct.

Architecture (reference → here):

* trunk: ResNet-34, output stride 16 → smp encoder ``encoder_name`` (default ``resnet34``) with
  ``encoder_output_stride=16`` (smp dilates the last stage instead of the reference's stride-1 layer4;
  the smp encoder also keeps torchvision's ``downsample`` shortcuts, so none of them stays random);
* first conv: the reference loads ImageNet weights and then *replaces* ``conv1`` by a freshly
  initialised 3+1+C-input conv (PyTorch default init). smp instead, for pretrained weights and
  ``in_channels > 3``, tiles the RGB filters cyclically over the new channels (channel i gets RGB
  filter ``i mod 3``) and scales all of them by ``3 / in_channels``; with ``encoder_weights=None`` it
  uses PyTorch's default init. ``first_conv_init="reset"`` (default) re-initialises the first conv
  with PyTorch's default init after loading (reference parity); ``"smp"`` keeps smp's tiled weights.
* ASPP rates 6/12/18 (+ 1×1 and image pooling), plain (not separable) convs, post-ASPP dropout 0.5
  → smp ``DeepLabV3PlusDecoder`` with ``decoder_atrous_rates=(6, 12, 18)``,
  ``decoder_aspp_separable=False``, ``decoder_aspp_dropout=aspp_dropout``. Differences: smp's decoder
  has a separable 3×3 conv after ASPP, one separable 3×3 fusion conv (reference: two plain 3×3 convs
  with dropout 0.5/0.1 and a final 1×1 256→256), and a BN in the pooling branch.
* head: 1×1 conv 256→256 → ReLU → 1×1 conv 256→1 (as in §2.3; PyTorch default init), on the decoder
  features at 1/4 resolution. The logit map is then upsampled (bilinear, align_corners=True) to the
  image size, so ``forward`` returns ``[B,1,H,W]`` at the input resolution.

Inputs of any size are zero-padded to a multiple of the encoder's output stride and cropped back.
In train mode with batch size 1 the BN of smp's ASPP pooling branch raises (one value per channel).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import segmentation_models_pytorch as smp
import torch.nn.functional as F
from torch import Tensor, nn

from semiseg_lit.errors import RunFailure
from semiseg_lit.models.deeplab import read_weights_file
from semiseg_lit.ops.eln_targets import eln_inputs

__all__ = ["ELNWeightsError", "ErrorLocalizationNet", "dropout_disabled", "find_first_conv",
           "load_matching_weights"]

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class ELNWeightsError(ValueError):
    """Encoder weights that cannot be read or do not fit the ELN trunk."""


def find_first_conv(module: nn.Module, in_channels: int) -> nn.Conv2d:
    """The first ``nn.Conv2d`` of ``module`` that takes ``in_channels`` inputs (the stem conv)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and m.in_channels == in_channels:
            return m
    raise ELNWeightsError(f"no Conv2d with in_channels={in_channels} found in {type(module).__name__}")


def load_matching_weights(encoder: nn.Module, path: str | Path) -> list[str]:
    """Load a local encoder state dict, skipping keys whose shapes differ (the widened stem conv).

    Returns the names of the skipped/missing keys. Raises :class:`ELNWeightsError` naming the file
    when it is missing, unreadable, or shares no key of matching shape with the encoder.
    """
    state = read_weights_file(path, missing_error=ELNWeightsError, read_error=ELNWeightsError)
    own = encoder.state_dict()
    usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not usable:
        raise ELNWeightsError(f"encoder weights {path} share no key of matching shape with the ELN trunk "
                              f"(file keys e.g. {list(state)[:3]}, expected e.g. {list(own)[:3]})")
    encoder.load_state_dict(usable, strict=False)
    return [k for k in own if k not in usable]


@contextmanager
def dropout_disabled(module: nn.Module) -> Iterator[None]:
    """Temporarily put every dropout layer of ``module`` in eval mode (BN modes unchanged).

    This is the reference's ``gt_mode=True`` ("clean mode", eln.md §2.1/§4.2).
    """
    layers = [m for m in module.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.training]
    for m in layers:
        m.train(False)
    try:
        yield
    finally:
        for m in layers:
            m.train(True)


class ErrorLocalizationNet(nn.Module):
    """ELN: DeepLabV3+ (smp) on ``[image, entropy, logits]`` → one correctness logit per pixel."""

    def __init__(self, num_classes: int, encoder_name: str = "resnet34",
                 encoder_weights: str | None = "imagenet", decoder_channels: int = 256,
                 aspp_dropout: float = 0.5, atrous_rates: tuple[int, int, int] = (6, 12, 18),
                 first_conv_init: str = "reset"):
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"num_classes: expected >= 2, got {num_classes}")
        if first_conv_init not in ("reset", "smp"):
            raise ValueError(f"first_conv_init: expected 'reset' or 'smp', got {first_conv_init!r}")
        self.num_classes = int(num_classes)
        self.in_channels = 3 + 1 + self.num_classes
        local_file = encoder_weights is not None and (
            "/" in encoder_weights
            or encoder_weights.endswith(_WEIGHT_SUFFIXES))
        try:
            net = smp.DeepLabV3Plus(
                encoder_name=encoder_name, encoder_weights=None if local_file else encoder_weights,
                encoder_output_stride=16, decoder_channels=decoder_channels,
                decoder_atrous_rates=tuple(atrous_rates), decoder_aspp_separable=False,
                decoder_aspp_dropout=aspp_dropout, in_channels=self.in_channels, classes=1)
        except KeyError as exc:
            raise ValueError(f"encoder_name={encoder_name!r} is not an smp encoder: {exc}") from exc
        except Exception as exc:
            if encoder_weights and not local_file:
                raise RunFailure(  # a RuntimeError: one message, no stack trace
                    f"could not load ELN encoder_weights={encoder_weights!r} for {encoder_name!r} ({exc}). "
                    "Offline, set method.eln.encoder_weights=null or a path to a local encoder state dict.") from exc
            raise
        self.encoder = net.encoder
        self.decoder = net.decoder
        self.head = nn.Sequential(nn.Conv2d(decoder_channels, decoder_channels, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(decoder_channels, 1, 1))
        if local_file:
            load_matching_weights(self.encoder, encoder_weights)
        if first_conv_init == "reset":
            find_first_conv(self.encoder, self.in_channels).reset_parameters()
        self.size_divisor = int(self.encoder.output_stride)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"backbone": trunk params, "head": ASPP/decoder/head params}`` (trainable only)."""
        backbone = [p for p in self.encoder.parameters() if p.requires_grad]
        ids = {id(p) for p in backbone}
        return {"backbone": backbone, "head": [p for p in self.parameters() if p.requires_grad and id(p) not in ids]}

    def forward_inputs(self, x: Tensor) -> Tensor:
        """Logits ``[B,1,H,W]`` from a prepared ``[B,3+1+C,H,W]`` input (see :func:`eln_inputs`)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ELN input: expected [B,{self.in_channels},H,W] (3 + 1 + {self.num_classes} "
                             f"classes), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        d = self.size_divisor
        x = F.pad(x, (0, (-w) % d, 0, (-h) % d))
        out = self.head(self.decoder(self.encoder(x)))            # [B,1,H'/4,W'/4]
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return out[..., :h, :w]

    def forward(self, images: Tensor, seg_logits: Tensor, clean: bool = False) -> Tensor:
        """ELN logits ``[B,1,H,W]`` at the image resolution for ``images`` ``[B,3,H,W]`` and
        segmentation logits ``[B,C,h,w]`` (any resolution; detached). ``clean=True`` switches the
        dropouts off without touching BN (the reference's ``gt_mode``)."""
        if seg_logits.dim() != 4 or seg_logits.shape[1] != self.num_classes:
            raise ValueError(f"seg_logits: expected [B,{self.num_classes},h,w], got {tuple(seg_logits.shape)}")
        x = eln_inputs(images, seg_logits)
        if not clean:
            return self.forward_inputs(x)
        with dropout_disabled(self):
            return self.forward_inputs(x)
