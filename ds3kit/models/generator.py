"""The DS3-Net generator: modality-specific encoders, concatenation, a fusion block with a bypass, a U-Net decoder.

::

    T1    -> E_1 -> [f_1^0, ..., f_1^{L-1}] \
    T2    -> E_2 -> [f_2^0, ..., f_2^{L-1}]  }-> f^l = cat_m f_m^l -> z = f^{L-1} + F(f^{L-1}) -> decoder(z, f^{L-2..0})
    FLAIR -> E_3 -> [f_3^0, ..., f_3^{L-1}] /                                                  -> sigmoid -> T1ce

The same module is the teacher G^T and the student G^S. :meth:`Generator.encode` gives the feature pyramid
``[f^0, ..., f^{L-1}, z]`` that PatchNCE and feature distillation read.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ds3kit.models.calibration import IntensityCalibration
from ds3kit.models.encoders import NORMS, build_encoder, conv_block, make_norm
from ds3kit.utils.checks import check_ndim


class FusionBlock(nn.Module):
    r"""Fuses the concatenated bottleneck features; a bypass (identity) path runs around it.

    .. math::
        z = f + W_{up}\,\phi(\mathrm{conv}_{3\times3}^{n}(\phi(W_{down} f)))

    ``W_down`` (1x1) mixes the modalities and narrows to ``hidden`` channels so the 3x3 convolutions stay cheap at
    large widths (a ResNet bottleneck); ``num_blocks = 0`` leaves plain concatenation.

    Shape:
        - Input / output: (B, C, h, w)
    """

    def __init__(self, channels: int, hidden: int, num_blocks: int, *, norm: str) -> None:
        super().__init__()
        if num_blocks < 0:
            raise ValueError(f"fusion_blocks must be >= 0, got {num_blocks}")
        self.body: nn.Module | None = None
        if num_blocks == 0:
            return
        layers: list[nn.Module] = [conv_block(channels, hidden, norm=norm, kernel_size=1)]
        layers += [conv_block(hidden, hidden, norm=norm) for _ in range(num_blocks)]
        # No activation after the last projection: the residual sum must be able to move features both ways.
        layers += [nn.Conv2d(hidden, channels, 1, bias=norm == "none"), make_norm(norm, channels)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x if self.body is None else x + self.body(x)


class DecoderLevel(nn.Module):
    """Narrow (1x1), upsample to the skip's size (bilinear), concatenate the skip, two 3x3 conv blocks."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, *, norm: str) -> None:
        super().__init__()
        self.narrow = conv_block(in_channels, out_channels, norm=norm, kernel_size=1, activation="relu")
        self.merge = nn.Sequential(
            conv_block(out_channels + skip_channels, out_channels, norm=norm, activation="relu"),
            conv_block(out_channels, out_channels, norm=norm, activation="relu"),
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        # Interpolating to the skip's exact size (not a fixed x2) lets timm encoders with any reduction steps
        # (x1, x2, x4 between levels) share this decoder.
        x = F.interpolate(self.narrow(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.merge(torch.cat([x, skip], dim=1))


class Generator(nn.Module):
    r"""Three modality-specific encoders, per-level concatenation, a fusion block with a bypass, a U-Net decoder.

    Each input channel (T1, T2, FLAIR) goes through its own encoder (``"builtin"`` conv blocks or
    ``"timm:<model_name>"``, see :mod:`ds3kit.models.encoders`). Level ``l`` features of all encoders are
    concatenated, :math:`f^l = \mathrm{cat}_m f^l_m`; the deepest level is fused, :math:`z = f^{L-1} + F(f^{L-1})`;
    the decoder upsamples ``z`` level by level, concatenating :math:`f^l` as skips, and a 1x1 convolution gives the
    correction added to a learned mix of the inputs (``output="residual"``, the default) or, through a sigmoid, the
    T1ce itself (``output="sigmoid"``); T1ce in [0, 1] either way.

    Any slice size works: inputs whose size is not a multiple of the encoder's largest reduction ``r`` (or smaller
    than ``2 r``) are padded (reflect; replicate when too small to reflect) at the bottom / right and the output is
    cropped back.

    Args:
        in_modalities: number of input channels, one encoder each.
        out_channels: synthesized channels (1: T1ce).
        base_channels: builtin encoder width at full resolution (doubles per level); timm: the stem's width.
        num_levels: encoder feature levels including the full-resolution one (builtin: resolutions
            1, 1/2, ..., 1/2**(num_levels-1); timm: the stem then the first ``num_levels - 1`` timm levels).
        fusion_blocks: 3x3 convolutions inside the fusion block (0: concatenation only).
        encoder: ``"builtin"`` or ``"timm:<model_name>"`` (built with ``pretrained=False``).
        norm: ``"instance"``, ``"batch"``, ``"group"`` or ``"none"`` (builtin blocks, stem, fusion, decoder).
        output: ``"residual"``: T1ce = clip(W x + b + head(decoder), 0, 1), a learned 1x1 mix of the inputs that
            starts as "copy T1" plus a correction that starts at zero (the clip passes gradients straight through);
            ``"sigmoid"``: T1ce = sigmoid(head(decoder)). The instance norms discard each map's absolute
            intensity, which the residual path carries around them (docs/models.md, docs/method.md).

    Attributes:
        feature_channels: channels of each map :meth:`encode` returns: ``[C^0, ..., C^{L-1}, C^{L-1}]`` with
            :math:`C^l = \sum_m C^l_m` (the last entry is the fused bottleneck).
        feature_reductions: input size / map size of each of those maps.

    Shape:
        - Input: (B, in_modalities, H, W)
        - Output: (B, out_channels, H, W), values in [0, 1]
        - Features: list of ``num_levels + 1`` tensors (B, feature_channels[k], ceil(H / r_k), ceil(W / r_k))

    Example:
        >>> generator = Generator(base_channels=4)
        >>> generator(torch.rand(2, 3, 37, 45)).shape
        torch.Size([2, 1, 37, 45])
    """

    def __init__(
        self,
        *,
        in_modalities: int = 3,
        out_channels: int = 1,
        base_channels: int = 16,
        num_levels: int = 3,
        fusion_blocks: int = 2,
        encoder: str = "builtin",
        norm: str = "instance",
        output: str = "residual",
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if in_modalities < 1 or out_channels < 1:
            raise ValueError(f"in_modalities and out_channels must be >= 1, got {in_modalities} and {out_channels}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self._config = dict(
            in_modalities=in_modalities,
            out_channels=out_channels,
            base_channels=base_channels,
            num_levels=num_levels,
            fusion_blocks=fusion_blocks,
            encoder=encoder,
            norm=norm,
            output=output,
        )
        self.output = output
        self.encoders = nn.ModuleList(
            build_encoder(encoder, base_channels=base_channels, num_levels=num_levels, norm=norm)
            for _ in range(in_modalities)
        )
        per_modality = self.encoders[0].channels
        reductions = self.encoders[0].reductions
        skip_channels = [in_modalities * channels for channels in per_modality]
        self.size_multiple = max(reductions)
        self.fusion = FusionBlock(skip_channels[-1], per_modality[-1], fusion_blocks, norm=norm)

        self.decoder = nn.ModuleList()
        previous = skip_channels[-1]
        for level in reversed(range(num_levels - 1)):
            width = 2 * per_modality[level]
            self.decoder.append(DecoderLevel(previous, skip_channels[level], width, norm=norm))
            previous = width
        self.head = nn.Conv2d(previous, out_channels, kernel_size=1)
        self.input_mix: nn.Conv2d | None = None
        if output == "residual":
            # Start as "copy T1": the learned per-voxel mix of the inputs carries absolute intensity, which the
            # instance norms of the network discard; the network adds a correction that starts at zero.
            self.input_mix = nn.Conv2d(in_modalities, out_channels, kernel_size=1)
            with torch.no_grad():
                self.input_mix.weight.zero_()
                self.input_mix.weight[:, 0] = 1.0
                self.input_mix.bias.zero_()
                self.head.weight.zero_()
                self.head.bias.zero_()

        self.feature_channels: list[int] = [*skip_channels, skip_channels[-1]]
        self.feature_reductions: list[int] = [*reductions, reductions[-1]]
        # Fitted after training on the validation subjects, applied to the finished synthesis only
        # (ds3kit.inference.synthesize_volume), never in forward: training does not see it (docs/models.md).
        self.calibration = IntensityCalibration()

    # -- public API -------------------------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """Synthesize: (B, in_modalities, H, W) in [0, 1] -> (B, out_channels, H, W) in [0, 1]."""
        return self.forward_with_features(x)[0]

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The prediction and the encoder features of ``x`` (see :meth:`encode`), from one encoder pass."""
        self._check_input(x, allow_single_channel=False)
        height, width = x.shape[-2:]
        levels = self._encode_padded(self._pad(x))
        fused = self.fusion(levels[-1])
        decoded = fused
        for decoder_level, skip in zip(self.decoder, reversed(levels[:-1])):
            decoded = decoder_level(decoded, skip)
        prediction = self._output(self.head(decoded)[..., :height, :width], x)
        return prediction, self._crop_features([*levels, fused], height, width)

    def encode(self, x: Tensor) -> list[Tensor]:
        """Encoder features ``[f^0, ..., f^{L-1}, z]`` (per-level concatenation over modalities, then the fused map).

        ``x`` is (B, in_modalities, H, W), or (B, 1, H, W), which is fed to every modality encoder: how PatchNCE
        passes the synthesized T1ce through the encoders (docs/models.md). Level ``k`` is cropped to
        ``ceil(H / r_k) x ceil(W / r_k)`` so that it lines up with the unpadded input.
        """
        self._check_input(x, allow_single_channel=True)
        if x.shape[1] == 1 and len(self.encoders) > 1:
            x = x.expand(-1, len(self.encoders), -1, -1)
        height, width = x.shape[-2:]
        levels = self._encode_padded(self._pad(x))
        return self._crop_features([*levels, self.fusion(levels[-1])], height, width)

    def _output(self, head: Tensor, x: Tensor) -> Tensor:
        if self.input_mix is None:
            return torch.sigmoid(head)
        unclipped = self.input_mix(x) + head
        # Clip to [0, 1] in the forward pass but let gradients through (straight-through): a voxel predicted
        # above 1 whose target is 0.9 must still be pulled down.
        return unclipped + (unclipped.clamp(0.0, 1.0) - unclipped).detach()

    def config(self) -> dict[str, Any]:
        """The constructor's keyword arguments (JSON-able): ``Generator(**g.config())`` rebuilds the architecture."""
        return dict(self._config)

    # -- internals --------------------------------------------------------------------------------------------------

    def _check_input(self, x: Tensor, *, allow_single_channel: bool) -> None:
        check_ndim(x, 4, "generator input", "(B, C, H, W)")
        expected = len(self.encoders)
        if x.shape[1] != expected and not (allow_single_channel and x.shape[1] == 1):
            also = " or 1 (broadcast to every encoder)" if allow_single_channel else ""
            raise ValueError(
                f"generator input must have {expected}{also} channels (one per modality), got shape {tuple(x.shape)}"
            )

    def _pad(self, x: Tensor) -> Tensor:
        multiple = self.size_multiple
        # At least two bottleneck cells a side: instance norm needs more than one spatial element.
        pad_h = max(-x.shape[-2] % multiple, 2 * multiple - x.shape[-2])
        pad_w = max(-x.shape[-1] % multiple, 2 * multiple - x.shape[-1])
        if pad_h == 0 and pad_w == 0:
            return x
        # Reflect keeps image statistics at the border; it needs the pad to be smaller than the side.
        mode = "reflect" if pad_h < x.shape[-2] and pad_w < x.shape[-1] else "replicate"
        return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)

    def _encode_padded(self, x: Tensor) -> list[Tensor]:
        if not isinstance(self.encoders, nn.ModuleList):  # one module for every modality (fusion.GroupedEncoders)
            return self.encoders(x)
        per_modality = [encoder(x[:, m : m + 1]) for m, encoder in enumerate(self.encoders)]
        return [torch.cat(level, dim=1) for level in zip(*per_modality)]

    def _crop_features(self, features: list[Tensor], height: int, width: int) -> list[Tensor]:
        return [
            feature[..., : -(-height // reduction), : -(-width // reduction)]
            for feature, reduction in zip(features, self.feature_reductions)
        ]


OUTPUTS = ("sigmoid", "residual")

# Presets: "tiny" is the CI smoke size, "small" trains on a 2-core CPU, "large" is for a GPU.
GENERATOR_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(base_channels=4, num_levels=3, fusion_blocks=1),
    "small": dict(base_channels=16, num_levels=3, fusion_blocks=2),
    "large": dict(base_channels=64, num_levels=4, fusion_blocks=2),
}


def build_generator(preset: str = "small", **overrides: Any) -> Generator:
    """A :class:`Generator` from a named preset (``tiny``, ``small``, ``large``); keyword ``overrides`` win.

    Example:
        >>> build_generator("tiny", encoder="builtin").config()["base_channels"]
        4
    """
    if preset not in GENERATOR_PRESETS:
        raise ValueError(f"generator preset must be one of {sorted(GENERATOR_PRESETS)}, got {preset!r}")
    return Generator(**{**GENERATOR_PRESETS[preset], **overrides})
