"""The conditional PatchGAN discriminator (pix2pix): one raw score per overlapping image patch.

Its score grid is what DS3-Net draws as the difficulty map (see :func:`ds3kit.losses.difficulty_map`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ds3kit.models.encoders import NORMS, make_norm
from ds3kit.utils.checks import check_ndim


class PatchDiscriminator(nn.Module):
    r"""PatchGAN: ``num_layers`` stride-2 4x4 convolutions, one stride-1, then a 1-channel 4x4 score convolution.

    Conditional use (pix2pix, DS3-Net): ``D(x, y)`` scores the pair ``cat(x, y)`` of inputs (T1, T2, FLAIR) and a
    real or synthesized T1ce. Unconditional use (CUT): build with ``in_channels=1`` and call ``D(y)``.

    Each score sees a receptive field of 70 x 70 pixels for ``num_layers=3`` (34 for 2, 142 for 4). Widths are
    ``base_channels * min(2**l, 8)``. Scores are raw (no sigmoid): read them with
    :func:`ds3kit.losses.realness`.

    Args:
        in_channels: channels of the (concatenated) input: 4 = 3 inputs + 1 T1ce.
        base_channels: width of the first convolution.
        num_layers: stride-2 convolutions; the score grid is about ``H / 2**num_layers``.
        norm: ``"instance"``, ``"batch"``, ``"group"`` or ``"none"`` (never on the first layer, as in pix2pix).

    Shape:
        - Input: ``x`` (B, C_x, H, W) and optional ``y`` (B, C_y, H, W) with C_x + C_y = in_channels
        - Output: (B, 1, h, w), h = floor(H / 2**num_layers) - 2 (for H divisible by 2**num_layers)

    Example:
        >>> discriminator = PatchDiscriminator(base_channels=8)
        >>> discriminator(torch.rand(2, 3, 64, 64), torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 1, 6, 6])
    """

    def __init__(
        self, in_channels: int = 4, base_channels: int = 32, num_layers: int = 3, norm: str = "instance"
    ) -> None:
        super().__init__()
        if in_channels < 1 or base_channels < 1 or num_layers < 1:
            raise ValueError(
                f"in_channels, base_channels and num_layers must be >= 1, got {in_channels}, {base_channels}, {num_layers}"
            )
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self._config = dict(in_channels=in_channels, base_channels=base_channels, num_layers=num_layers, norm=norm)
        self.in_channels = in_channels
        bias = norm == "none"
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        width = base_channels
        for layer in range(1, num_layers + 1):
            stride = 2 if layer < num_layers else 1
            next_width = base_channels * min(2**layer, 8)
            layers += [
                nn.Conv2d(width, next_width, 4, stride=stride, padding=1, bias=bias),
                make_norm(norm, next_width),
                nn.LeakyReLU(0.2, True),
            ]
            width = next_width
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        # num_layers halvings, then two 4x4 stride-1 convolutions that each remove a pixel: one score needs 3 * 2**n.
        self.min_size = 3 * 2**num_layers

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Raw patch scores of ``cat(x, y)`` (or of ``x`` alone when ``y`` is None): (B, 1, h, w)."""
        check_ndim(x, 4, "discriminator input x", "(B, C, H, W)")
        if y is not None:
            check_ndim(y, 4, "discriminator input y", "(B, C, H, W)")
            if x.shape[0] != y.shape[0] or x.shape[-2:] != y.shape[-2:]:
                raise ValueError(
                    "discriminator inputs x and y must share batch and spatial size, "
                    f"got {tuple(x.shape)} and {tuple(y.shape)}"
                )
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"discriminator expects {self.in_channels} input channels in total (cat(x, y)), got {x.shape[1]} "
                f"(shape {tuple(x.shape)})"
            )
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"discriminator input must be at least {self.min_size} pixels a side, got {tuple(x.shape[-2:])}"
            )
        return self.model(x)

    def config(self) -> dict[str, Any]:
        """The constructor's arguments (JSON-able): ``PatchDiscriminator(**d.config())`` rebuilds it."""
        return dict(self._config)


DISCRIMINATOR_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(base_channels=8, num_layers=2),
    "small": dict(base_channels=32, num_layers=3),
    "large": dict(base_channels=64, num_layers=3),  # pix2pix's 70 x 70 PatchGAN
}


def build_discriminator(preset: str = "small", **overrides: Any) -> PatchDiscriminator:
    """A :class:`PatchDiscriminator` from a named preset (``tiny``, ``small``, ``large``); keyword ``overrides`` win."""
    if preset not in DISCRIMINATOR_PRESETS:
        raise ValueError(f"discriminator preset must be one of {sorted(DISCRIMINATOR_PRESETS)}, got {preset!r}")
    return PatchDiscriminator(**{**DISCRIMINATOR_PRESETS[preset], **overrides})
