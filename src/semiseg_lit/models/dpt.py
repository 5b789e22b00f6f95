"""DINOv2 (any timm ViT) + DPT segmentation network, on segmentation-models-pytorch's DPT modules (issue 18).

:class:`DPTSegNet` has the interface of :class:`~semiseg_lit.models.deeplab.SegmentationNet`
(``forward``, ``forward_all`` → :class:`SegOutput`, ``param_groups``, ``encoder``, ``size_divisor``,
``num_classes``, ``decode``/``classify``), so supervised, AEL and ELN run on it unchanged.

**Network** (``model.arch=dpt``; UniMatch V2's DPT, ``model/semseg/dpt.py`` of LiheYoung/UniMatch-V2):

* encoder: a timm ViT (``model.encoder``, e.g. ``tu-vit_small_patch14_dinov2``) built with
  ``dynamic_img_size=True`` (the position embeddings are resampled bicubically to every input's patch
  grid, so 518, 798 or non-square inputs all work). Four blocks are tapped (``model.encoder_output_indices``;
  default uniform = ``[2, 5, 8, 11]`` for 12 blocks, UniMatch V2's small/base taps), each normalised by the
  ViT's final norm (``model.dpt_norm_features``; DINOv2 ``get_intermediate_layers(norm=True)``, as UniMatch
  V2), as maps ``[B, D, p, q]`` on the patch grid (``p = H / patch``);
* decoder: smp's ``DPTDecoder`` modules — readout (``model.dpt_readout``: ``ignore`` = UniMatch V2, ``cat`` /
  ``add`` use the class token), reassemble (1×1 conv to ``model.dpt_intermediate_channels``; resampling
  ×4 / ×2 / ×1 / ×½ by transposed conv / identity / stride-2 conv, i.e. UniMatch V2's ``resize_layers``;
  3×3 conv to ``model.decoder_channels``), four fusion blocks;
* head: smp's ``DPTSegmentationHead`` convs (3×3 conv + BN + ReLU + Dropout(0.1) + 1×1 conv) on the
  decoder output ``z`` at ``8p × 8q`` (≈ 4/7 of the input for patch 14), then bilinear
  (``align_corners=True``, as UniMatch V2) to the padded input size and cropped.

**Patch geometry.** Inputs are zero-padded bottom/right to a multiple of the patch size (``size_divisor =
patch``, 14 for DINOv2) and the outputs cropped back. smp's DPT itself assumes stride-16 ViTs: with
patch 14 its reassemble factors ``14/4 = 3.5``, ... become kernel-3 transposed convs and its fusion blocks
upsample by a fixed ×2, so ``smp.DPT("tu-vit_small_patch14_dinov2")`` fails on every input. Here the
reassemble blocks are built for stride 16 (×4, ×2, ×1, ×½ of the patch grid) and the fusion resizes each
stage to the size of the next (``size=``, as UniMatch V2's ``FeatureFusionBlock``), so odd patch grids
(518 = 37 × 14) work.

**What the methods read** (:class:`SegOutput`):

* ``logits`` and ``aux`` at the input resolution; ``aux`` is an FCN head (3×3 conv + BN + ReLU +
  Dropout2d(0.1) + 1×1) on the THIRD tapped block (``features[-2]``, block 8 of 12 for ViT-S/B: the
  counterpart of ResNet ``layer3``), at 1/patch resolution, upsampled bilinearly;
* ``proj`` (ELN projection head, 1×1 → ReLU → 1×1), ``decoder_features`` and ``native_logits`` on the
  1/4 grid ``[ceil(H/4), ceil(W/4)]`` of the input: ``z`` and the head's logits resampled from
  ``8p × 8q`` with the pixel-area geometry (``z`` cell ``j`` covers input pixels ``[j·patch/8,
  (j+1)·patch/8)``; a 1/4 cell ``i`` covers ``[4i, 4i+4)``; bilinear with the scale ``patch/32``,
  edge cells replicated, :func:`quarter_grid_resample`);
* ``features``: the tapped encoder maps as the decoder saw them (after ``feature_transform``).

ViT parameters the taps never reach (blocks after the last tap, the final norm with
``dpt_norm_features=false``) are frozen, so every trainable parameter gets a gradient (DDP without
``find_unused_parameters``).

``forward_all(..., feature_transform=f)``: ``f(list_of_4_maps) -> list_of_4_maps`` is applied to the
encoder features ``[B, D, p, q]`` before the decoder (UniMatch V2's complementary channel dropout); the
class tokens used by ``dpt_readout=cat|add`` are not transformed.

**Encoder weights** (``model.encoder_weights``): ``imagenet`` = timm's default pretrained weights of the
encoder (for the DINOv2 ViTs the official LVD-142M DINOv2 weights, timm tag ``lvd142m``); another
word = a timm pretrained tag (``vit_base_patch14_dinov2.<tag>``); ``null`` = random init; a path = a
local file, loaded strictly in the official DINOv2 layout (``dinov2_vits14_pretrain.pth``: ``cls_token``,
``pos_embed`` [1, 1370, D], ``mask_token``, ``patch_embed.proj.*``, ``blocks.N.*``, ``norm.*``; register
and SwiGLU variants converted) or the timm layout (:func:`load_vit_weights`).

**Freezing** (``model.freeze_encoder=true``, UniMatch V2's ``lock_backbone``): encoder parameters get
``requires_grad=False`` (so no optimizer group), the encoder stays in eval mode (its dropout / drop-path
off: a frozen encoder is a fixed function) and runs without autograd (no activation memory).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.decoders.dpt.decoder import DPTDecoder, DPTSegmentationHead
from torch import Tensor, nn

from semiseg_lit.errors import RunFailure
from semiseg_lit.models.deeplab import (
    CheckpointMismatchError,
    FCNHead,
    ProjectionHead,
    SegOutput,
    pad_to_multiple,
    read_weights_file,
)

__all__ = ["DPTSegNet", "FeatureTransform", "PatchDPTDecoder", "ViTEncoder", "build_dpt_net", "dinov2_to_timm",
           "load_vit_weights", "quarter_grid_resample", "vit_patch_size"]

FeatureTransform = Callable[[list[Tensor]], Sequence[Tensor]]
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar", ".safetensors")
READOUTS = ("ignore", "cat", "add")


def _timm_name(encoder: str) -> str:
    return encoder[3:] if encoder.startswith("tu-") else encoder


def vit_patch_size(encoder: str, encoder_kwargs: dict | None = None) -> int | None:
    """The patch size of a timm ViT name (``..._patch14_...`` → 14) or of ``encoder_kwargs.patch_size``;
    ``None`` when neither says (the network then reads it from the built model)."""
    if encoder_kwargs and encoder_kwargs.get("patch_size") is not None:
        return int(encoder_kwargs["patch_size"])
    m = re.search(r"patch(\d+)", _timm_name(str(encoder)))
    return int(m.group(1)) if m else None


def _is_weights_file(weights: str) -> bool:
    return "/" in weights or "\\" in weights or weights.endswith(_WEIGHT_SUFFIXES)


# ----------------------------------------------------------------------------------------- weights
def dinov2_to_timm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official DINOv2 key layout → timm's ``VisionTransformer`` (identity for a timm file).

    ``mask_token`` (masked-image-modelling only) is dropped; with registers (``register_tokens``) the timm
    model has no position embedding for prefix tokens: ``reg_token = register_tokens``,
    ``cls_token += pos_embed[:, 0]``, ``pos_embed = pos_embed[:, 1:]``; SwiGLU ``mlp.w12`` / ``mlp.w3`` →
    ``mlp.fc1`` / ``mlp.fc2``. A ``module.`` / ``backbone.`` prefix on every key is stripped.
    """
    for prefix in ("module.", "backbone."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    out = {k: v for k, v in state.items() if k != "mask_token"}
    if "register_tokens" in out:
        out["reg_token"] = out.pop("register_tokens")
        out["cls_token"] = out["cls_token"] + out["pos_embed"][:, :1]
        out["pos_embed"] = out["pos_embed"][:, 1:]
    return {re.sub(r"\.mlp\.w12\.", ".mlp.fc1.", re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", k)): v for k, v in out.items()}


def load_vit_weights(vit: nn.Module, path: str | Path) -> None:
    """Load a local ViT weights file (official DINOv2 or timm layout, :func:`dinov2_to_timm`) strictly.

    Every key of ``vit`` must be in the file with its shape; keys the ViT does not have are refused
    (a classifier ``head.*`` is tolerated). Raises :class:`CheckpointMismatchError` naming the file.
    """
    state = read_weights_file(path)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointMismatchError(f"model.encoder_weights={str(path)!r}: expected a state dict of tensors")
    state = dinov2_to_timm(state)
    own = vit.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and not k.startswith("head.")]
    shape_bad = [f"{k} {list(state[k].shape)} (expected {list(own[k].shape)})" for k in own
                 if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape_bad:
        hint = ""
        if any(k.startswith("pos_embed") for k in shape_bad):
            hint = (" The position embedding has another number of tokens: build the ViT for the file's "
                    "image size (model.encoder_kwargs.img_size, 518 for DINOv2; inputs of any size still work).")
        raise CheckpointMismatchError(
            f"model.encoder_weights={str(path)!r} does not match the ViT encoder: {len(missing)} missing keys "
            f"{missing[:6]}, {len(unexpected)} unexpected keys {unexpected[:6]}, {len(shape_bad)} shape "
            f"mismatches {shape_bad[:3]}. Expected the official DINOv2 layout (dinov2_vit*14_pretrain.pth) or "
            f"timm's, for model.encoder and model.encoder_kwargs as configured.{hint}")
    vit.load_state_dict({k: state[k] for k in own}, strict=True)


# ----------------------------------------------------------------------------------------- modules
class ViTEncoder(nn.Module):
    """A timm ViT giving ``len(output_indices)`` intermediate maps ``[B, D, H/patch, W/patch]`` (and the
    class tokens). Like smp's ``TimmViTEncoder``, but ``encoder_kwargs`` reach ``timm.create_model``
    unfiltered (smp's own ``depth`` argument would clash with the ViT's ``depth``), the inputs may have any
    multiple of the patch size (``dynamic_img_size=True``), and the taps can be normalised."""

    def __init__(self, name: str, weights: str | None = None, encoder_kwargs: dict | None = None,
                 output_indices: Sequence[int] | None = None, norm_features: bool = True, in_channels: int = 3):
        super().__init__()
        import timm

        kwargs = dict(encoder_kwargs or {})
        if kwargs.get("dynamic_img_size") is False:
            raise ValueError("model.encoder_kwargs.dynamic_img_size=false: the DPT network needs position "
                             "embeddings for any patch grid (518 crops, sliding windows, whole images)")
        kwargs.update(dynamic_img_size=True, num_classes=0, in_chans=in_channels)
        name = _timm_name(name)
        local = weights is not None and _is_weights_file(weights)
        pretrained = weights is not None and not local
        model_name = name if weights in (None, "imagenet") or local else f"{name}.{weights}"
        if not timm.is_model(name):
            raise ValueError(f"model.encoder={name!r} is not a timm model (e.g. tu-vit_small_patch14_dinov2, "
                             "tu-vit_base_patch14_dinov2; see timm.list_models('vit_*'))")
        if pretrained and weights != "imagenet" and model_name not in timm.list_pretrained(f"{name}.*"):
            tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{name}.*") if "." in n]
            raise ValueError(f"model.encoder_weights={weights!r}: neither 'imagenet', null, a path to a weights "
                             f"file, nor a timm pretrained tag of {name} (tags: {tags})")
        try:
            self.model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
        except TypeError as exc:
            raise ValueError(f"model.encoder_kwargs={dict(encoder_kwargs or {})}: not accepted by timm's "
                             f"{name} ({exc}); model.arch=dpt needs a timm ViT as model.encoder (e.g. tu-vit_small_patch14_dinov2)") from exc
        except Exception as exc:
            if pretrained:
                raise RunFailure(  # one message, no stack trace
                    f"could not load model.encoder_weights={weights!r} for {name!r} ({type(exc).__name__}: {exc}). "
                    "Without a network, download the official file (e.g. dinov2_vits14_pretrain.pth from "
                    "dl.fbaipublicfiles.com/dinov2) elsewhere and set model.encoder_weights=/path/to/it, or "
                    "model.encoder_weights=null for a random init.") from exc
            raise
        if not hasattr(self.model, "forward_intermediates") or not hasattr(self.model, "patch_embed"):
            raise ValueError(f"model.encoder={name!r}: the DPT network needs a timm ViT (forward_intermediates, "
                             "patch_embed)")
        if local:
            load_vit_weights(self.model, weights)
        n_blocks = len(self.model.blocks)
        if output_indices is None:  # uniform: [2, 5, 8, 11] for 12 blocks (smp / UniMatch V2 small, base)
            output_indices = [int(n_blocks / 4 * k) - 1 for k in range(1, 5)]
        output_indices = [int(i) for i in output_indices]
        if len(output_indices) != 4 or any(not 0 <= i < n_blocks for i in output_indices) \
                or sorted(set(output_indices)) != output_indices:
            raise ValueError(f"model.encoder_output_indices={output_indices}: expected 4 increasing block "
                             f"indices in [0, {n_blocks}) (or null for uniform taps)")
        self.output_indices = output_indices
        self.norm_features = bool(norm_features)
        # what the taps never reach gets no gradient: frozen, so DDP without find_unused_parameters works
        unused = [*self.model.blocks[max(output_indices) + 1:].parameters()]
        if not self.norm_features:
            unused += [*self.model.norm.parameters()]
        for p in unused:
            p.requires_grad_(False)
        patch = self.model.patch_embed.patch_size
        if patch[0] != patch[1]:
            raise ValueError(f"model.encoder={name!r}: non-square patches {tuple(patch)} are not supported")
        self.patch_size = int(patch[0])
        self.embed_dim = int(self.model.embed_dim)
        self.out_channels = [self.embed_dim] * 4
        self.has_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0)) > 0

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor | None]]:
        """``(maps, class_tokens)``: 4 maps ``[B, D, H/patch, W/patch]`` and, per map, the prefix tokens
        ``[B, n_prefix, D]`` (``None`` without). ``H``, ``W`` must be multiples of the patch size."""
        out = self.model.forward_intermediates(x, indices=self.output_indices, norm=self.norm_features,
                                               intermediates_only=True, stop_early=True,
                                               return_prefix_tokens=self.has_prefix_tokens)
        if self.has_prefix_tokens:
            return [o[0] for o in out], [o[1] for o in out]
        return list(out), [None] * len(out)


class PatchDPTDecoder(DPTDecoder):
    """smp's ``DPTDecoder`` for any patch size: reassemble ×4 / ×2 / ×1 / ×½ of the patch grid (smp's
    stride-16 factors, UniMatch V2's ``resize_layers``) and fusion that resizes each stage to the next
    stage's size (UniMatch V2's ``size=``) instead of smp's fixed ×2, so odd patch grids work. Output:
    ``[B, fusion_channels, 8p, 8q]`` for a ``p × q`` patch grid."""

    def __init__(self, embed_dim: int, has_prefix_tokens: bool, readout: str,
                 intermediate_channels: Sequence[int], fusion_channels: int):
        if readout not in READOUTS:
            raise ValueError(f"model.dpt_readout={readout!r}: expected {' | '.join(READOUTS)}")
        if len(intermediate_channels) != 4:
            raise ValueError(f"model.dpt_intermediate_channels={list(intermediate_channels)}: expected 4 widths")
        super().__init__(encoder_out_channels=[embed_dim] * 4, encoder_output_strides=[16] * 4,
                         encoder_has_prefix_tokens=has_prefix_tokens, readout=readout,
                         intermediate_channels=[int(c) for c in intermediate_channels],
                         fusion_channels=int(fusion_channels))

    def forward(self, features: list[Tensor], prefix_tokens: Sequence[Tensor | None] | None = None) -> Tensor:
        if prefix_tokens is None:
            prefix_tokens = [None] * len(features)
        stages = [self.reassemble_blocks[i](self.projection_blocks[i](f, t))
                  for i, (f, t) in enumerate(zip(features, prefix_tokens))][::-1]   # deepest first
        fused: Tensor | None = None
        for k, (block, feature) in enumerate(zip(self.fusion_blocks, stages)):
            x = block.residual_conv_block1(feature)
            if fused is not None:
                x = x + fused
            x = block.residual_conv_block2(x)
            size = stages[k + 1].shape[-2:] if k + 1 < len(stages) else (2 * x.shape[-2], 2 * x.shape[-1])
            fused = block.project(F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True))
        return fused


def quarter_grid_resample(z: Tensor, patch: int, height: int, width: int) -> Tensor:
    """Resample the DPT output ``z`` ``[B, C, 8p, 8q]`` of a ``14p × 14q`` (``patch``) input to the 1/4 grid
    ``[B, C, ceil(height/4), ceil(width/4)]`` of the (unpadded) ``height × width`` input.

    Pixel-area geometry: ``z`` cell ``j`` covers input pixels ``[j·s, (j+1)·s)``, ``s = patch/8``; a 1/4 cell
    ``i`` covers ``[4i, 4i+4)``, so its centre ``4i + 2`` is at ``z`` coordinate ``(4i+2)/s - ½``: bilinear
    with scale factor ``s/4 = patch/32`` (``align_corners=False``; ``recompute_scale_factor=False`` keeps the
    exact scale). ``z`` is edge-replicated by two cells first so that the last (partial) cell exists.
    """
    qh, qw = -(-int(height) // 4), -(-int(width) // 4)
    z = F.pad(z, (0, 2, 0, 2), mode="replicate")
    out = F.interpolate(z, scale_factor=patch / 32.0, mode="bilinear", align_corners=False,
                        recompute_scale_factor=False)
    return out[..., :qh, :qw]


class DPTAuxDecoder(nn.Module):
    """A fresh DPT decoder + head on DETACHED encoder maps: an ELN error-simulation decoder (eln.md §2.2)
    of this architecture. Readout ``ignore`` (the maps only: ``SegOutput.features`` carries no tokens)."""

    def __init__(self, embed_dim: int, patch: int, num_classes: int, intermediate_channels: Sequence[int],
                 fusion_channels: int):
        super().__init__()
        self.patch = int(patch)
        self.decoder = PatchDPTDecoder(embed_dim, False, "ignore", intermediate_channels, fusion_channels)
        self.head = DPTSegmentationHead(fusion_channels, num_classes, kernel_size=3, upsampling=1).head

    def forward(self, features: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        """Logits ``[B, C, size]`` (the unpadded input size)."""
        z = self.head(self.decoder([f.detach() for f in features]))
        p, q = features[0].shape[-2:]
        z = F.interpolate(z, size=(p * self.patch, q * self.patch), mode="bilinear", align_corners=True)
        return z[..., : int(size[0]), : int(size[1])]


class DPTSegNet(nn.Module):
    """ViT + DPT with optional aux FCN head and projection head (see the module docstring)."""

    def __init__(self, num_classes: int, encoder: str = "tu-vit_small_patch14_dinov2",
                 encoder_weights: str | None = None, encoder_kwargs: dict | None = None,
                 encoder_output_indices: Sequence[int] | None = None, norm_features: bool = True,
                 readout: str = "ignore", intermediate_channels: Sequence[int] = (48, 96, 192, 384),
                 decoder_channels: int = 64, aux_head: bool = False, aux_channels: int = 256,
                 projection_dim: int | None = None, freeze_encoder: bool = False, in_channels: int = 3):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"model.dpt_readout={readout!r}: expected {' | '.join(READOUTS)}")
        self.encoder = ViTEncoder(encoder, encoder_weights, encoder_kwargs, encoder_output_indices,
                                  norm_features, in_channels)
        dim = self.encoder.embed_dim
        self.readout = readout
        self.intermediate_channels = tuple(int(c) for c in intermediate_channels)
        self.decoder_channels = int(decoder_channels)
        self.decoder = PatchDPTDecoder(dim, self.encoder.has_prefix_tokens, readout, self.intermediate_channels,
                                       self.decoder_channels)
        # smp's DPT head convs (3x3 + BN + ReLU + Dropout(0.1) + 1x1); the resize to the input is ours
        self.segmentation_head = DPTSegmentationHead(self.decoder_channels, num_classes, kernel_size=3,
                                                     upsampling=1).head
        self.num_classes = int(num_classes)
        self.aux_head = FCNHead(dim, int(aux_channels), num_classes) if aux_head else None
        self.projection_head = ProjectionHead(self.decoder_channels, int(projection_dim)) if projection_dim else None
        self.size_divisor = self.encoder.patch_size   # inputs are padded to a multiple of the patch size
        self.freeze_encoder = bool(freeze_encoder)
        if self.freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> DPTSegNet:
        """As ``nn.Module.train``; a frozen encoder stays in eval mode."""
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    # ------------------------------------------------------------------ helpers
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """{"backbone": trainable ViT params (none when frozen), "head": everything else trainable}."""
        backbone = [p for p in self.encoder.parameters() if p.requires_grad]
        ids = {id(p) for p in self.encoder.parameters()}
        head = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return {"backbone": backbone, "head": head}

    def encode(self, x: Tensor) -> tuple[list[Tensor], list[Tensor | None]]:
        """Encoder maps and class tokens of a padded input (no autograd when the encoder is frozen)."""
        if self.freeze_encoder:
            with torch.no_grad():
                return self.encoder(x)
        return self.encoder(x)

    def decode(self, features: list[Tensor], prefix_tokens: Sequence[Tensor | None] | None = None) -> Tensor:
        """DPT decoder output ``[B, decoder_channels, 8p, 8q]``."""
        return self.decoder(features, prefix_tokens)

    def classify(self, decoder_features: Tensor) -> Tensor:
        """Head logits on the decoder's ``8p × 8q`` grid (not resized)."""
        return self.segmentation_head(decoder_features)

    def build_aux_decoder(self) -> DPTAuxDecoder:
        """A freshly initialised decoder + head of this architecture (ELN error simulation, eln.md §2.2)."""
        return DPTAuxDecoder(self.encoder.embed_dim, self.size_divisor, self.num_classes,
                             self.intermediate_channels, self.decoder_channels)

    # ------------------------------------------------------------------ forward
    def forward_all(self, x: Tensor, aux: bool = False, proj: bool = False, keep_features: bool = False,
                    feature_transform: FeatureTransform | None = None) -> SegOutput:
        """All outputs (module docstring). ``feature_transform``: applied to the list of the 4 encoder maps
        ``[B, D, p, q]`` before the decoder (e.g. UniMatch V2's complementary channel dropout)."""
        x, h, w = pad_to_multiple(x, self.size_divisor)
        features, prefix = self.encode(x)
        if feature_transform is not None:
            features = list(feature_transform(list(features)))
        z = self.decode(features, prefix)
        native = self.classify(z)
        padded = tuple(x.shape[-2:])
        logits = F.interpolate(native, size=padded, mode="bilinear", align_corners=True)[..., :h, :w]
        out = SegOutput(logits=logits)
        if aux and self.aux_head is not None:
            a = self.aux_head(features[-2])
            out.aux = F.interpolate(a, size=padded, mode="bilinear", align_corners=True)[..., :h, :w]
        if proj or keep_features:
            zq = quarter_grid_resample(z, self.size_divisor, h, w)
            if proj and self.projection_head is not None:
                out.proj = self.projection_head(zq)
            if keep_features:
                out.features, out.decoder_features = features, zq
                out.native_logits = quarter_grid_resample(native, self.size_divisor, h, w)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, C, H, W] at the input resolution (the evaluation / export interface)."""
        return self.forward_all(x).logits


def build_dpt_net(model_cfg: Any, num_classes: int) -> DPTSegNet:
    """:class:`DPTSegNet` from the ``model`` config node (``model.arch=dpt``)."""
    m = model_cfg
    if m.get("output_stride") not in (None, 16):
        raise ValueError(f"model.output_stride={m.output_stride}: model.arch=dpt has no output stride (the ViT "
                         "works at 1/patch); leave it at 16")
    kwargs = m.get("encoder_kwargs") or {}
    if not hasattr(kwargs, "items"):
        raise ValueError(f"model.encoder_kwargs={kwargs!r}: expected a mapping of timm.create_model arguments, "
                         "e.g. model.encoder_kwargs='{embed_dim: 48, depth: 4, num_heads: 2}', or null")
    from omegaconf import OmegaConf

    kwargs = OmegaConf.to_container(kwargs, resolve=True) if OmegaConf.is_config(kwargs) else dict(kwargs)
    indices = m.get("encoder_output_indices")
    return DPTSegNet(
        num_classes, encoder=str(m.encoder), encoder_weights=m.encoder_weights, encoder_kwargs=kwargs,
        encoder_output_indices=list(indices) if indices is not None else None,
        norm_features=bool(m.get("dpt_norm_features", True)), readout=str(m.get("dpt_readout", "ignore")),
        intermediate_channels=tuple(m.get("dpt_intermediate_channels", (48, 96, 192, 384))),
        decoder_channels=int(m.decoder_channels), aux_head=bool(m.aux_head), aux_channels=int(m.aux_channels),
        projection_dim=int(m.projection_dim) if m.projection_dim else None,
        freeze_encoder=bool(m.get("freeze_encoder", False)))


def check_dpt_only_keys(model_cfg: Any) -> None:
    """The ViT options (``freeze_encoder``, ``encoder_kwargs``, ``encoder_output_indices``) belong to
    ``model.arch=dpt``; set for another network they would be ignored, so they are refused."""
    m = model_cfg
    set_keys = [k for k, unset in (("freeze_encoder", False), ("encoder_kwargs", None),
                                   ("encoder_output_indices", None)) if m.get(k, unset) not in (unset, {})]
    if set_keys:
        raise ValueError(f"model.{', model.'.join(set_keys)}: only model.arch=dpt (model=dpt_dinov2_s / _b) has "
                         f"them; model.arch={m.arch} would ignore them. Remove them or use a DPT model config.")


def check_training_crop(model_cfg: Any, crop: Sequence[int], key: str = "data.crop_size") -> None:
    """Training crops of a ViT must be whole patch grids: a side that is not a multiple of the patch size
    would be zero-padded inside the network on every step, i.e. trained on black strips (UniMatch V2 crops:
    518 = 37·14 VOC / ADE20K, 798 = 57·14 Cityscapes). Raises ``UserError`` naming ``key`` and the nearest
    valid sizes. Evaluation inputs of any size are fine (padded to the patch size, cropped back)."""
    from semiseg_lit.errors import UserError

    patch = vit_patch_size(str(model_cfg.encoder), model_cfg.get("encoder_kwargs") or {})
    if not patch:
        return
    bad = [int(c) for c in crop if int(c) % patch]
    if bad:
        near = sorted({max(patch, (c // patch) * patch) for c in bad} | {(c // patch + 1) * patch for c in bad})
        raise UserError(f"{key}={list(crop)}: model.arch=dpt with {model_cfg.encoder} (patch {patch}) trains on "
                        f"crops whose sides are multiples of {patch}, e.g. {near} (UniMatch V2: 518 VOC, 798 "
                        f"Cityscapes); {bad} would put zero padding into every training crop")
