"""The official networks of AEL and ELN, layer for layer (issue 14; ael.md §2, eln.md §2).

Trunks come from timm (AEL: ``resnet101s``, whose deep stem has the official key layout) and
torchvision (ELN: ``resnet50`` / ``resnet101`` / ``resnet34``); the heads are written here. Every
network exposes the interface of :class:`~semiseg_lit.models.deeplab.SegmentationNet`
(``forward``, ``forward_all``, ``param_groups``, ``encoder``), so all methods run on them.

**AEL** (``model.arch=deeplabv3plus_ael``, SemiSeg-AEL ``resnet.py`` / ``decoder.py`` / ``base.py``):

* trunk: ResNet with the deep stem ``conv1 = [conv3x3(3,64,/2), BN, ReLU, conv3x3(64,64), BN, ReLU,
  conv3x3(64,128)]``, ``bn1`` over 128 channels, ``MaxPool2d(3, 2, 1, ceil_mode=True)``; output
  stride 8: layer3 3×3 dilations ``1, 2, 2, …``, layer4 multi-grid ``(2, 2, 4) × {2, 4, 4}`` =
  ``4, 8, 16``; stride-1 1×1 shortcuts;
* ``dec_deeplabv3_plus``: ASPP on layer4 (image pooling 1×1+BN+ReLU, 1×1, 3×3 at 12/24/36, 256 ch
  each) → ``head`` 3×3 1280→256 + BN + ReLU + Dropout2d(0.1); ``low_conv`` 1×1 256→256 (bias) + BN +
  ReLU on layer1; concat [low, head↑] → ``tail`` 2 × (3×3 conv (bias) + BN + ReLU + Dropout2d(0.1)) →
  ``final`` 1×1 256→C;
* aux FCN head on layer3 (``Aux_Module``): 3×3 1024→256 (bias) + BN + ReLU + Dropout2d(0.1) + 1×1;
* every upsampling is bilinear with ``align_corners=True``; logits come back at the input size.

Parameter counts with 19 classes: 64,987,622 = encoder 42,623,936 + decoder 19,998,739 + aux 2,364,947.

**ELN segmentation network** (``model.arch=deeplabv3plus_eln``, SSL_ELN ``deeplab.py`` /
``aspp.py`` / ``decoder.py`` / ``backbone/resnet.py``):

* trunk: torchvision ResNet-50/101 (7×7 stem), output stride 16, layer4 stride 1 with 3×3 dilations
  ``2, 4, 8`` (multi-grid ``(1, 2, 4) × 2``);
* ASPP on layer4: 1×1 and 3×3 at 6/12/18 (+BN+ReLU), image pooling 1×1 + ReLU (**no BN**) → 1×1
  1280→256 + BN + ReLU + Dropout(0.1); decoder: 1×1 256→48 + BN + ReLU on layer1, concat (304) →
  3×3 + BN + ReLU + Dropout(0.5) → 3×3 + BN + ReLU + Dropout(0.1) → 1×1 256→256 (bias) = ``x_``;
* classifier ``1×1 256→256, ReLU, 1×1 256→C`` and projector ``1×1 256→256, ReLU, 1×1 256→128`` on
  ``x_``, both at 1/4 resolution (native logits); ``logits`` = native logits upsampled to the input
  size (bilinear, align_corners=True), as the reference's ``CEloss`` does.

Counts: R50 / 19 classes 23,508,032 + 17,073,395 = 40,581,427; R101 / 21 classes 42,500,160 +
17,073,909 = 59,574,069. The auxiliary (error-simulation) decoders of the ELN method are fresh
copies of this head (:meth:`ELNSegNet.build_aux_decoder`, with the unused projector, eln.md §2.2).

**ELN error-localization network** (``method.eln.network=reference``, SSL_ELN ``ELN.py``): torchvision
ResNet-34 with layer4 at stride 1 and undilated (the reference BasicBlock ignores dilation), ``conv1``
replaced by a fresh 7×7 conv over 3+1+C channels, the same ASPP (rates 6/12/18, post-ASPP dropout
0.5) and decoder on layer4 / layer1 (64 ch), classifier ``1×1 256→256, ReLU, 1×1 256→1``; its native
output is at 1/4 of the input (the grid of the segmentation network's native logits). 26,904,993
parameters with 19 classes, 26,911,265 with 21.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semiseg_lit.models.deeplab import CheckpointMismatchError, SegOutput, read_weights_file
from semiseg_lit.models.eln_net import dropout_disabled
from semiseg_lit.ops.eln_targets import eln_inputs

__all__ = ["AEL_ENCODERS", "ELN_ENCODERS", "ELN_TRUNKS", "AELNet", "ELNHead", "ELNSegNet", "ReferenceELN",
           "ReferenceSegNet", "build_reference_net", "is_weights_file", "load_trunk_weights"]

AEL_ENCODERS = ("resnet50s", "resnet101s", "resnet152s")   # timm deep-stem ResNets (official layout)
ELN_ENCODERS = ("resnet50", "resnet101", "resnet152")      # torchvision Bottleneck ResNets
ELN_TRUNKS = ("resnet18", "resnet34")                      # torchvision BasicBlock ResNets (ELN trunk)
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")


def is_weights_file(weights: str | None) -> bool:
    """True when ``weights`` names a local file (a path or a weights-file suffix), not ``imagenet``/null."""
    return weights is not None and weights != "imagenet" and ("/" in weights or weights.endswith(_WEIGHT_SUFFIXES))


def _check_weights(weights: str | None, key: str) -> None:
    if weights is not None and weights != "imagenet" and not is_weights_file(weights):
        raise ValueError(f"{key}={weights!r}: expected null (random init), 'imagenet', or a path to a weights "
                         f"file ({' / '.join(_WEIGHT_SUFFIXES)})")


def _upsample(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize with ``align_corners=True`` (every resize of both reference codes). ``size`` is
    passed through unconverted, so a traced / exported graph keeps it dynamic."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def _set_dilations(blocks: nn.Sequential, dilations: Sequence[int]) -> None:
    """Give the 3×3 conv (``conv2``) of each bottleneck in ``blocks`` its dilation (padding = dilation)."""
    if len(blocks) != len(dilations):
        raise ValueError(f"{len(blocks)} blocks but {len(dilations)} dilations {list(dilations)}")
    for block, d in zip(blocks, dilations):
        block.conv2.dilation = (int(d), int(d))
        block.conv2.padding = (int(d), int(d))


def _head_init_(module: nn.Module) -> None:
    """The ELN code's ``_init_weight`` of ASPP / decoder: kaiming-normal (fan_in, ReLU gain) convs, BN 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------------- weights
def _key_list(keys: Sequence[str], limit: int = 12) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}]"


def load_trunk_weights(trunk: nn.Module, path: str | Path, stem: str, what: str) -> None:
    """Load an ImageNet trunk file strictly into ``trunk`` (keys in the official layout).

    ``stem`` is ``"deep"`` (AEL: ``conv1.0/.3/.6`` 3×3 convs, ``bn1`` 128 ch) or ``"7x7"``
    (torchvision / ELN: ``conv1.weight`` 7×7). A file with the other stem is refused with a message
    saying so; otherwise every trunk key must be in the file with its shape (``num_batches_tracked``,
    absent from old files, and the ImageNet classifier ``fc.*`` are tolerated), and the message lists
    the missing / unexpected / mis-shaped keys. Raises :class:`CheckpointMismatchError`.
    """
    state = read_weights_file(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatchError(f"model.encoder_weights={str(path)!r}: expected a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    conv1 = state.get("conv1.weight")
    if stem == "deep" and (conv1 is not None and conv1.dim() == 4 and conv1.shape[-1] == 7):
        raise CheckpointMismatchError(
            f"model.encoder_weights={str(path)!r} is a 7x7-stem ResNet (torchvision layout: conv1.weight "
            f"{list(conv1.shape)}, bn1 {list(state['bn1.weight'].shape) if 'bn1.weight' in state else '?'}); "
            f"the {what} has the deep stem 64-64-128 (conv1.0/.3/.6 3x3 convs, bn1 over 128 channels) of the "
            "official resnet101.pth. Use that file (README 'Reference networks'), or model=deeplabv3plus_eln / "
            "model=deeplabv3plus for a torchvision ResNet.")
    if stem == "deep" and any(k.startswith("stem.") for k in state):
        raise CheckpointMismatchError(
            f"model.encoder_weights={str(path)!r} has 'stem.*' keys (mmcv/mmseg ResNetV1c, a 32-32-64 stem); "
            f"the {what} needs the official deep-stem 64-64-128 layout (conv1.0/.3/.6, bn1 128 channels).")
    if stem == "7x7" and "conv1.0.weight" in state:
        raise CheckpointMismatchError(
            f"model.encoder_weights={str(path)!r} is a deep-stem ResNet (conv1.0/.3/.6); the {what} has the "
            "torchvision 7x7 stem (conv1.weight [64, 3, 7, 7]). Use the torchvision ImageNet file "
            "(e.g. resnet50-19c8e357.pth / resnet101-5d3b4d8f.pth), or model=deeplabv3plus_ael for a deep stem.")
    own = trunk.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own and not k.startswith("fc.")]
    shape_bad = [f"{k} {list(state[k].shape)} (expected {list(own[k].shape)})" for k in own
                 if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape_bad:
        raise CheckpointMismatchError(
            f"model.encoder_weights={str(path)!r} does not match the {what}: {len(missing)} missing keys "
            f"{_key_list(missing)}; {len(unexpected)} unexpected keys {_key_list(unexpected)}; "
            f"{len(shape_bad)} shape mismatches {_key_list(shape_bad, 5)}. Expected the official key layout "
            f"(e.g. {_key_list(list(own), 6)}); see README 'Reference networks'.")
    trunk.load_state_dict({k: state.get(k, v) for k, v in own.items()}, strict=True)


def _torchvision_resnet(name: str, weights: str | None, **kwargs) -> nn.Module:
    """``torchvision.models.<name>`` with the ImageNet v1 weights for ``weights="imagenet"`` (the files
    the reference codes download), random init otherwise."""
    import torchvision

    builder = getattr(torchvision.models, name)
    try:
        return builder(weights="IMAGENET1K_V1" if weights == "imagenet" else None, **kwargs)
    except Exception as exc:
        if weights == "imagenet":
            raise RuntimeError(
                f"could not load the torchvision ImageNet weights of {name} ({exc}). Without a network, put "
                f"the file into the torch hub cache ($TORCH_HOME/hub/checkpoints) or pass its path as "
                "encoder_weights=/path/<file>.pth (README 'Reference networks').") from exc
        raise


# ----------------------------------------------------------------------------------------- base
class ReferenceSegNet(nn.Module):
    """Common interface of the reference segmentation networks (same as ``SegmentationNet``).

    Subclasses set ``encoder`` (the trunk, official key layout) and implement :meth:`forward_all`.
    They work on any input size without padding (``size_divisor = 1``).
    """

    size_divisor = 1
    encoder: nn.Module
    num_classes: int

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """{"backbone": trunk params, "head": everything else} (trainable only)."""
        backbone = [p for p in self.encoder.parameters() if p.requires_grad]
        ids = {id(p) for p in backbone}
        return {"backbone": backbone, "head": [p for p in self.parameters() if p.requires_grad and id(p) not in ids]}

    @staticmethod
    def quarter_size(n: int) -> int:
        """Side of the native 1/4 grid for an input side ``n``: ``ceil(n / 4)`` (7×7/2 stem + max-pool)."""
        return -(-int(n) // 4)

    def forward_all(self, x: Tensor, aux: bool = False, proj: bool = False,
                    keep_features: bool = False) -> SegOutput:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, C, H, W] at the input resolution (the evaluation / export interface)."""
        return self.forward_all(x).logits


# ----------------------------------------------------------------------------------------- AEL
class AELASPP(nn.Module):
    """SemiSeg-AEL ``base.ASPP``: image pooling (1×1+BN+ReLU), 1×1, three dilated 3×3 (+BN+ReLU); 5·C out."""

    def __init__(self, in_channels: int, channels: int, rates: Sequence[int]):
        super().__init__()

        def branch(k: int, d: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(in_channels, channels, k, padding=d if k == 3 else 0, dilation=d, bias=False),
                    nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]

        if len(rates) != 3:
            raise ValueError(f"model.atrous_rates={list(rates)}: the AEL ASPP has three dilated branches")
        self.conv1 = nn.Sequential(nn.AdaptiveAvgPool2d(1), *branch(1))
        self.conv2 = nn.Sequential(*branch(1))
        self.conv3 = nn.Sequential(*branch(3, int(rates[0])))
        self.conv4 = nn.Sequential(*branch(3, int(rates[1])))
        self.conv5 = nn.Sequential(*branch(3, int(rates[2])))
        self.out_channels = 5 * channels

    def forward(self, x: Tensor) -> Tensor:
        pooled = _upsample(self.conv1(x), x.shape[-2:])
        return torch.cat([pooled, self.conv2(x), self.conv3(x), self.conv4(x), self.conv5(x)], dim=1)


class AELDecoder(nn.Module):
    """SemiSeg-AEL ``dec_deeplabv3_plus`` without ``final``: decoder features [B,256,H/4,W/4]."""

    def __init__(self, in_channels: int, low_channels: int, channels: int, rates: Sequence[int], dropout: float):
        super().__init__()
        self.aspp = AELASPP(in_channels, channels, rates)
        self.head = nn.Sequential(nn.Conv2d(self.aspp.out_channels, 256, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(256), nn.ReLU(inplace=True), nn.Dropout2d(dropout))
        self.low_conv = nn.Sequential(nn.Conv2d(low_channels, 256, 1), nn.BatchNorm2d(256), nn.ReLU(inplace=True))
        self.tail = nn.Sequential(
            nn.Conv2d(512, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(inplace=True), nn.Dropout2d(dropout),
            nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(inplace=True), nn.Dropout2d(dropout))

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        low = self.low_conv(low)
        high = _upsample(self.head(self.aspp(high)), low.shape[-2:])
        return self.tail(torch.cat([low, high], dim=1))


class AELAuxDecoder(nn.Module):
    """An AEL decoder + ``final`` classifier used as an auxiliary decoder: logits at ``size`` from
    DETACHED ``[layer1, layer2, layer3, layer4]`` features."""

    def __init__(self, decoder: AELDecoder, final: nn.Conv2d):
        super().__init__()
        self.decoder, self.final = decoder, final

    def forward(self, features: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        return _upsample(self.final(self.decoder(features[0].detach(), features[-1].detach())), size)


class AELNet(ReferenceSegNet):
    """DeepLabV3+ of the official AEL code (module docstring): deep-stem ResNet at OS 8, aux head on layer3.

    ``encoder_weights``: None (random init: timm's, i.e. kaiming fan-out and zero-init last BN, as the
    official ``zero_init_residual``), ``"imagenet"`` (timm's pretrained weights of ``encoder``: not the
    official file) or a path to a deep-stem file in the official layout (``resnet101.pth``).
    """

    def __init__(self, num_classes: int, encoder: str = "resnet101s", encoder_weights: str | None = None,
                 decoder_channels: int = 256, atrous_rates: Sequence[int] = (12, 24, 36),
                 dropout: float = 0.1, aux_head: bool = True, aux_channels: int = 256,
                 projection_dim: int | None = None):
        super().__init__()
        if encoder not in AEL_ENCODERS:
            raise ValueError(f"model.encoder={encoder!r}: model.arch=deeplabv3plus_ael needs a deep-stem ResNet "
                             f"{' | '.join(AEL_ENCODERS)} (timm names; the official code uses resnet101s)")
        import timm

        _check_weights(encoder_weights, "model.encoder_weights")
        local = is_weights_file(encoder_weights)
        try:
            trunk = timm.create_model(encoder, pretrained=encoder_weights == "imagenet", num_classes=0,
                                      global_pool="", output_stride=8)
        except Exception as exc:
            if encoder_weights == "imagenet":
                raise RuntimeError(
                    f"could not load timm's ImageNet weights of {encoder} ({exc}). Offline, pass the official "
                    "deep-stem file: model.encoder_weights=/path/resnet101.pth (README 'Reference networks').") from exc
            raise
        del trunk.fc, trunk.global_pool
        # official: max-pool with ceil_mode; layer3 dilations 1, 2, 2, ... (timm's OS8 already);
        # layer4 multi-grid (2, 2, 4) on the dilations (2, 4, 4) -> 4, 8, 16
        trunk.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
        _set_dilations(trunk.layer4, (4, 8, 16))
        self.encoder = trunk
        if local:
            load_trunk_weights(trunk, encoder_weights, stem="deep", what=f"AEL {encoder} trunk")
        self.num_classes = int(num_classes)
        channels = [trunk.layer1[-1].conv3.out_channels, trunk.layer2[-1].conv3.out_channels,
                    trunk.layer3[-1].conv3.out_channels, trunk.layer4[-1].conv3.out_channels]
        self.decoder = AELDecoder(channels[3], channels[0], decoder_channels, atrous_rates, dropout)
        self.final = nn.Conv2d(256, num_classes, 1)
        self.aux_head = nn.Sequential(
            nn.Conv2d(channels[2], aux_channels, 3, padding=1), nn.BatchNorm2d(aux_channels), nn.ReLU(inplace=True),
            nn.Dropout2d(dropout), nn.Conv2d(aux_channels, num_classes, 1)) if aux_head else None
        self.projection_head = nn.Sequential(
            nn.Conv2d(256, 256, 1), nn.ReLU(inplace=True), nn.Conv2d(256, int(projection_dim), 1)
        ) if projection_dim else None

    @staticmethod
    def quarter_size(n: int) -> int:
        """Side of the native 1/4 grid: stem conv ``m = floor((n-1)/2) + 1``, then the ceil-mode max-pool
        ``ceil((m-1)/2) + 1``; that is ``ceil(n/4)`` for ``n ≡ 1, 2 (mod 4)`` (769 → 385 → 193) and one more
        for ``n ≡ 0, 3 (mod 4)`` (771 → 386 → 194, 512 → 256 → 129)."""
        m = (int(n) - 1) // 2 + 1
        return -(-(m - 1) // 2) + 1

    def build_aux_decoder(self) -> AELAuxDecoder:
        """A freshly initialised decoder + classifier of this architecture (for the ELN method's
        error-simulation decoders, eln.md §2.2)."""
        d = self.decoder
        return AELAuxDecoder(AELDecoder(d.aspp.conv2[0].in_channels, d.low_conv[0].in_channels,
                                        d.aspp.conv2[0].out_channels,
                                        [d.aspp.conv3[0].dilation[0], d.aspp.conv4[0].dilation[0],
                                         d.aspp.conv5[0].dilation[0]], d.head[3].p),
                             nn.Conv2d(256, self.num_classes, 1))

    def stages(self, x: Tensor) -> list[Tensor]:
        """[layer1 (1/4), layer2, layer3, layer4 (1/8)] of the trunk."""
        t = self.encoder
        x = t.maxpool(t.act1(t.bn1(t.conv1(x))))
        x1 = t.layer1(x)
        x2 = t.layer2(x1)
        x3 = t.layer3(x2)
        return [x1, x2, x3, t.layer4(x3)]

    def forward_all(self, x: Tensor, aux: bool = False, proj: bool = False,
                    keep_features: bool = False) -> SegOutput:
        size = x.shape[-2:]
        features = self.stages(x)
        dec = self.decoder(features[0], features[3])
        native = self.final(dec)
        out = SegOutput(logits=_upsample(native, size))
        if aux and self.aux_head is not None:
            out.aux = _upsample(self.aux_head(features[2]), size)
        if proj and self.projection_head is not None:
            out.proj = self.projection_head(dec)
        if keep_features:
            out.features, out.decoder_features, out.native_logits = features, dec, native
        return out


# ----------------------------------------------------------------------------------------- ELN
class ELNASPP(nn.Module):
    """SSL_ELN ``ASPP`` (module names as there): 1×1 + three dilated 3×3 (+BN+ReLU), image pooling
    1×1 + ReLU without BN, concat → 1×1 → BN → ReLU → Dropout(``dropout``; off in clean mode)."""

    def __init__(self, in_channels: int, rates: Sequence[int], dropout: float, channels: int = 256):
        super().__init__()
        if len(rates) != 3:
            raise ValueError(f"atrous_rates={list(rates)}: the ELN ASPP has three dilated branches")

        def branch(k: int, d: int = 1) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(in_channels, channels, k, padding=d if k == 3 else 0, dilation=d, bias=False),
                nn.BatchNorm2d(channels), nn.ReLU(inplace=True))

        self.aspp1 = branch(1)
        self.aspp2, self.aspp3, self.aspp4 = (branch(3, int(r)) for r in rates)
        self.global_avg_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, channels, 1, bias=False),
                                             nn.ReLU(inplace=True))
        self.conv1 = nn.Conv2d(5 * channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        _head_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x)]
        branches.append(_upsample(self.global_avg_pool(x), x.shape[-2:]))
        return self.dropout(self.relu(self.bn1(self.conv1(torch.cat(branches, dim=1)))))


class ELNDecoder(nn.Module):
    """SSL_ELN ``Decoder``: low-level 1×1 →48 + BN + ReLU; concat with the upsampled ASPP output;
    3×3 + BN + ReLU, Dropout(0.5); 3×3 + BN + ReLU, Dropout(0.1); 1×1 256→256 (bias)."""

    def __init__(self, low_channels: int, channels: int = 256):
        super().__init__()
        self.conv1 = nn.Conv2d(low_channels, 48, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(48)
        self.relu = nn.ReLU(inplace=True)
        self.last_conv1 = nn.Sequential(nn.Conv2d(channels + 48, 256, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(256), nn.ReLU(inplace=True))
        self.last_conv2 = nn.Sequential(nn.Conv2d(256, 256, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(256), nn.ReLU(inplace=True))
        self.last_conv3 = nn.Conv2d(256, 256, 1)
        self.drop_out1 = nn.Dropout(0.5)
        self.drop_out2 = nn.Dropout(0.1)
        _head_init_(self)

    def forward(self, x: Tensor, low: Tensor) -> Tensor:
        low = self.relu(self.bn1(self.conv1(low)))
        x = torch.cat([_upsample(x, low.shape[-2:]), low], dim=1)
        x = self.drop_out2(self.last_conv2(self.drop_out1(self.last_conv1(x))))
        return self.last_conv3(x)


def _two_layer_1x1(channels: int, out_channels: int) -> nn.Sequential:
    """``1×1 C→C, ReLU, 1×1 C→out`` (the ELN code's ``classifier`` / ``projector``; PyTorch default init)."""
    return nn.Sequential(nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True), nn.Conv2d(channels, out_channels, 1))


class ELNHead(nn.Module):
    """SSL_ELN ``deeplab.Decoder``: ASPP + decoder + classifier (``cls``) + projector (``proj``).

    The segmentation network's head, and (freshly initialised) each auxiliary decoder of the ELN
    method (eln.md §2.2, which keeps the unused projector, as the reference does).
    """

    def __init__(self, num_classes: int, in_channels: int = 2048, low_channels: int = 256,
                 atrous_rates: Sequence[int] = (6, 12, 18), aspp_dropout: float = 0.1,
                 projection_dim: int | None = 128):
        super().__init__()
        self.aspp = ELNASPP(in_channels, atrous_rates, aspp_dropout)
        self.decoder = ELNDecoder(low_channels)
        self.cls = _two_layer_1x1(256, num_classes)
        self.proj = _two_layer_1x1(256, int(projection_dim)) if projection_dim else None

    def decode(self, high: Tensor, low: Tensor) -> Tensor:
        """The 256-d feature ``x_`` at the resolution of ``low`` (1/4)."""
        return self.decoder(self.aspp(high), low)

    def forward(self, features: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        """Auxiliary-decoder use: logits at ``size`` from DETACHED ``[layer1, layer4]`` features."""
        low, high = features[0].detach(), features[-1].detach()
        return _upsample(self.cls(self.decode(high, low)), size)


def _torchvision_trunk(name: str, encoder_weights: str | None, what: str, key: str,
                       replace_stride_with_dilation: Sequence[bool] = (False, False, False)) -> nn.Module:
    _check_weights(encoder_weights, key)
    local = is_weights_file(encoder_weights)
    trunk = _torchvision_resnet(name, None if local else encoder_weights,
                                replace_stride_with_dilation=list(replace_stride_with_dilation))
    del trunk.fc, trunk.avgpool
    if local:
        load_trunk_weights(trunk, encoder_weights, stem="7x7", what=what)
    return trunk


def _torchvision_stages(t: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(layer1, layer4) of a torchvision ResNet trunk."""
    x1 = t.layer1(t.maxpool(t.relu(t.bn1(t.conv1(x)))))
    return x1, t.layer4(t.layer3(t.layer2(x1)))


class ELNSegNet(ReferenceSegNet):
    """DeepLabV3+ of the official ELN code (module docstring): torchvision ResNet at OS 16, multi-grid 2/4/8."""

    def __init__(self, num_classes: int, encoder: str = "resnet50", encoder_weights: str | None = None,
                 atrous_rates: Sequence[int] = (6, 12, 18), aspp_dropout: float = 0.1,
                 projection_dim: int | None = 128):
        super().__init__()
        if encoder not in ELN_ENCODERS:
            raise ValueError(f"model.encoder={encoder!r}: model.arch=deeplabv3plus_eln needs a torchvision "
                             f"Bottleneck ResNet {' | '.join(ELN_ENCODERS)} (reference: resnet50 Cityscapes, "
                             "resnet101 VOC)")
        trunk = _torchvision_trunk(encoder, encoder_weights, f"ELN {encoder} trunk", "model.encoder_weights",
                                   (False, False, True))
        _set_dilations(trunk.layer4, (2, 4, 8))    # multi-grid (1, 2, 4) x 2
        self.encoder = trunk
        self.num_classes = int(num_classes)
        self.atrous_rates, self.aspp_dropout = tuple(int(r) for r in atrous_rates), float(aspp_dropout)
        self.head = ELNHead(num_classes, trunk.layer4[-1].conv3.out_channels, trunk.layer1[-1].conv3.out_channels,
                            self.atrous_rates, self.aspp_dropout, projection_dim)
        self.projection_head = self.head.proj

    def build_aux_decoder(self) -> ELNHead:
        """A freshly initialised head of the same architecture (an ELN auxiliary decoder, eln.md §2.2)."""
        proj = self.head.proj[-1].out_channels if self.head.proj is not None else None
        return ELNHead(self.num_classes, self.head.aspp.aspp1[0].in_channels, self.head.decoder.conv1.in_channels,
                       self.atrous_rates, self.aspp_dropout, proj)

    def forward_all(self, x: Tensor, aux: bool = False, proj: bool = False,
                    keep_features: bool = False) -> SegOutput:
        x1, x4 = _torchvision_stages(self.encoder, x)
        dec = self.head.decode(x4, x1)
        native = self.head.cls(dec)
        out = SegOutput(logits=_upsample(native, x.shape[-2:]))
        if proj and self.head.proj is not None:
            out.proj = self.head.proj(dec)
        if keep_features:
            out.features, out.decoder_features, out.native_logits = [x1, x4], dec, native
        return out


# ----------------------------------------------------------------------------------------- ELN (error net)
def _reset_shortcuts_(trunk: nn.Module) -> int:
    """Re-initialise every projection shortcut (``downsample``) of a torchvision trunk as the ELN code's
    ResNet does (conv ~ N(0, sqrt(2 / (k·k·out))), BN 1/0, fresh running statistics): the reference's
    ``shortcut`` keys do not match the ImageNet file, so they stay random (eln.md §2.3)."""
    n = 0
    for m in trunk.modules():
        if getattr(m, "downsample", None) is not None:
            conv, bn = m.downsample[0], m.downsample[1]
            fan = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
            with torch.no_grad():
                conv.weight.normal_(0.0, math.sqrt(2.0 / fan))
            bn.reset_parameters()
            n += 1
    return n


class ReferenceELN(nn.Module):
    """The official ELN (module docstring): ResNet-34 trunk, OS 16 with an undilated stride-1 layer4.

    ``forward(images, seg_logits, clean=False, native=False)``: input ``[image, entropy, logits↑]``
    (:func:`~semiseg_lit.ops.eln_targets.eln_inputs`); output one logit per pixel, at 1/4 of the image
    (``native=True``, the reference's output, on the grid of the segmentation network's native logits)
    or upsampled to the image (bilinear, align_corners=True). ``clean`` turns the dropouts off (gt_mode).
    ``random_shortcuts`` re-initialises the projection shortcuts after loading (the reference's quirk).
    """

    native_stride = 4

    def __init__(self, num_classes: int, encoder: str = "resnet34", encoder_weights: str | None = "imagenet",
                 aspp_dropout: float = 0.5, atrous_rates: Sequence[int] = (6, 12, 18),
                 random_shortcuts: bool = False):
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"num_classes: expected >= 2, got {num_classes}")
        if encoder not in ELN_TRUNKS:
            raise ValueError(f"method.eln.encoder={encoder!r}: method.eln.network=reference needs a torchvision "
                             f"BasicBlock ResNet {' | '.join(ELN_TRUNKS)} (reference: resnet34)")
        self.num_classes = int(num_classes)
        self.in_channels = 3 + 1 + self.num_classes
        trunk = _torchvision_trunk(encoder, encoder_weights, f"ELN {encoder} trunk", "method.eln.encoder_weights")
        # layer4 at stride 1 and undilated (the reference BasicBlock ignores its dilation argument)
        trunk.layer4[0].conv1.stride = (1, 1)
        trunk.layer4[0].downsample[0].stride = (1, 1)
        if random_shortcuts:
            _reset_shortcuts_(trunk)
        # the stem conv is replaced after loading: fresh 7x7/2 over 3+1+C channels, PyTorch default init
        trunk.conv1 = nn.Conv2d(self.in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.encoder = trunk
        self.aspp = ELNASPP(trunk.layer4[-1].conv2.out_channels, atrous_rates, aspp_dropout)
        self.decoder = ELNDecoder(trunk.layer1[-1].conv2.out_channels)
        self.classifier = _two_layer_1x1(256, 1)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"backbone": trunk params (stem conv included), "head": ASPP/decoder/classifier}``."""
        backbone = [p for p in self.encoder.parameters() if p.requires_grad]
        ids = {id(p) for p in backbone}
        return {"backbone": backbone, "head": [p for p in self.parameters() if p.requires_grad and id(p) not in ids]}

    def forward_inputs(self, x: Tensor, native: bool = False) -> Tensor:
        """Logits from a prepared ``[B,3+1+C,H,W]`` input: ``[B,1,ceil(H/4),ceil(W/4)]`` (``native``)
        or ``[B,1,H,W]``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ELN input: expected [B,{self.in_channels},H,W] (3 + 1 + {self.num_classes} "
                             f"classes), got {tuple(x.shape)}")
        low, high = _torchvision_stages(self.encoder, x)
        out = self.classifier(self.decoder(self.aspp(high), low))
        return out if native else _upsample(out, x.shape[-2:])

    def forward(self, images: Tensor, seg_logits: Tensor, clean: bool = False, native: bool = False) -> Tensor:
        if seg_logits.dim() != 4 or seg_logits.shape[1] != self.num_classes:
            raise ValueError(f"seg_logits: expected [B,{self.num_classes},h,w], got {tuple(seg_logits.shape)}")
        x = eln_inputs(images, seg_logits)
        if not clean:
            return self.forward_inputs(x, native)
        with dropout_disabled(self):
            return self.forward_inputs(x, native)


# ----------------------------------------------------------------------------------------- factory
def build_reference_net(model_cfg, num_classes: int) -> ReferenceSegNet:
    """``model.arch``: ``deeplabv3plus_ael`` → :class:`AELNet`, ``deeplabv3plus_eln`` → :class:`ELNSegNet`."""
    m = model_cfg
    arch = str(m.arch)
    if bool(m.get("aspp_separable", False)):
        raise ValueError(f"model.aspp_separable=true: model.arch={arch} has plain (not separable) ASPP convs")
    if arch == "deeplabv3plus_ael":
        if int(m.output_stride) != 8:
            raise ValueError(f"model.output_stride={m.output_stride}: model.arch=deeplabv3plus_ael is the official "
                             "output-stride-8 network (layer3 dilation 2, layer4 4/8/16)")
        return AELNet(num_classes, encoder=str(m.encoder), encoder_weights=m.encoder_weights,
                      decoder_channels=int(m.decoder_channels), atrous_rates=tuple(m.atrous_rates),
                      dropout=float(m.aspp_dropout), aux_head=bool(m.aux_head), aux_channels=int(m.aux_channels),
                      projection_dim=int(m.projection_dim) if m.projection_dim else None)
    if arch == "deeplabv3plus_eln":
        if int(m.output_stride) != 16:
            raise ValueError(f"model.output_stride={m.output_stride}: model.arch=deeplabv3plus_eln is the official "
                             "output-stride-16 network (layer4 dilations 2/4/8)")
        if int(m.decoder_channels) != 256:
            raise ValueError(f"model.decoder_channels={m.decoder_channels}: model.arch=deeplabv3plus_eln has "
                             "256-channel heads")
        if bool(m.aux_head):
            raise ValueError("model.aux_head=true: model.arch=deeplabv3plus_eln has no auxiliary FCN head "
                             "(the official ELN network has none)")
        return ELNSegNet(num_classes, encoder=str(m.encoder), encoder_weights=m.encoder_weights,
                         atrous_rates=tuple(m.atrous_rates), aspp_dropout=float(m.aspp_dropout),
                         projection_dim=int(m.projection_dim) if m.projection_dim else None)
    raise ValueError(f"model.arch={arch!r}: expected deeplabv3plus | deeplabv3plus_ael | deeplabv3plus_eln | dpt")


def iter_3x3_convs(module: nn.Module) -> Iterator[tuple[str, nn.Conv2d]]:
    """(name, conv) of every 3×3 conv of ``module`` (tests / diagnostics)."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
            yield name, m
