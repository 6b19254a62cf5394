"""Modality encoders: one per input modality, each mapping a 1-channel slice to a pyramid of feature maps.

Two kinds, chosen by a string so configs stay JSON-able:

- ``"builtin"``: conv-norm-act blocks; level 0 at full resolution, every further level halves the size with a
  stride-2 convolution and doubles the channels (``base_channels * 2**level``).
- ``"timm:<model_name>"``: a small built-in full-resolution stem (so the decoder and PatchNCE always get a
  full-resolution map) next to ``timm.create_model(model_name, pretrained=False, features_only=True, in_chans=1)``,
  whose first ``num_levels - 1`` feature levels follow it. Never downloads weights.

Every encoder exposes ``channels`` (per level) and ``reductions`` (input size / feature size, per level), the only
facts the generator's decoder needs.
"""

from __future__ import annotations

from torch import Tensor, nn

NORMS = ("instance", "batch", "group", "none")
TIMM_PREFIX = "timm:"


def make_norm(norm: str, channels: int) -> nn.Module:
    """A normalisation layer by name: ``instance`` (pix2pix: no affine, no running stats), ``batch``,
    ``group`` (8 groups or fewer, dividing ``channels``) or ``none``."""
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def conv_block(
    in_channels: int, out_channels: int, *, norm: str, stride: int = 1, kernel_size: int = 3, activation: str = "leaky"
) -> nn.Sequential:
    """``Conv2d -> norm -> activation`` with 'same' padding (so stride 2 gives ceil(H / 2))."""
    # A bias right before a normalisation that subtracts the mean is wasted parameters.
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=norm == "none"
    )
    act: nn.Module = nn.LeakyReLU(0.2, inplace=True) if activation == "leaky" else nn.ReLU(inplace=True)
    return nn.Sequential(conv, make_norm(norm, out_channels), act)


class BuiltinEncoder(nn.Module):
    """Conv-norm-act encoder of one modality.

    Level ``l`` has ``base_channels * 2**l`` channels at ``1 / 2**l`` of the input size: two 3x3 blocks per
    level, the first of levels ``l >= 1`` with stride 2.

    Shape:
        - Input: (B, 1, H, W)
        - Output: list of ``num_levels`` tensors (B, channels[l], ceil(H / 2**l), ceil(W / 2**l))
    """

    def __init__(self, *, base_channels: int = 16, num_levels: int = 3, norm: str = "instance", in_channels: int = 1):
        super().__init__()
        check_encoder_size("builtin", base_channels=base_channels, num_levels=num_levels)
        self.channels = [base_channels * 2**level for level in range(num_levels)]
        self.reductions = [2**level for level in range(num_levels)]
        blocks = []
        previous = in_channels
        for level, channels in enumerate(self.channels):
            stride = 1 if level == 0 else 2
            blocks.append(
                nn.Sequential(
                    conv_block(previous, channels, norm=norm, stride=stride),
                    conv_block(channels, channels, norm=norm),
                )
            )
            previous = channels
        self.levels = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features


class TimmEncoder(nn.Module):
    """A timm ``features_only`` backbone of one modality, preceded (in the feature list) by a full-resolution stem.

    The stem and the backbone both read the raw slice; the stem's output is level 0 (reduction 1), the backbone's
    feature levels ``0 .. num_levels - 2`` follow with timm's own channels and reductions
    (``feature_info.channels()`` / ``feature_info.reduction()``). Normalisation inside the backbone is timm's.

    Shape:
        - Input: (B, 1, H, W), H and W divisible by ``max(reductions)``
        - Output: list of ``num_levels`` tensors (B, channels[l], H / reductions[l], W / reductions[l])
    """

    def __init__(self, model_name: str, *, base_channels: int = 16, num_levels: int = 3, norm: str = "instance"):
        super().__init__()
        try:
            import timm
        except ImportError as error:  # timm is a dependency, but a stripped environment should say what is missing
            raise ImportError(f"encoder 'timm:{model_name}' needs the timm package: {error}") from None
        check_encoder_size(TIMM_PREFIX + model_name, base_channels=base_channels, num_levels=num_levels)
        if not timm.is_model(model_name):
            raise ValueError(f"unknown timm model {model_name!r} (see timm.list_models())")
        try:
            self.backbone = timm.create_model(
                model_name, pretrained=False, features_only=True, in_chans=1, out_indices=tuple(range(num_levels - 1))
            )
        except IndexError:
            raise ValueError(
                f"timm model {model_name!r} has fewer than {num_levels - 1} feature levels, which num_levels={num_levels} "
                "asks for after the full-resolution stem"
            ) from None
        self.stem = nn.Sequential(
            conv_block(1, base_channels, norm=norm),
            conv_block(base_channels, base_channels, norm=norm),
        )
        self.channels = [base_channels, *self.backbone.feature_info.channels()]
        self.reductions = [1, *self.backbone.feature_info.reduction()]

    def forward(self, x: Tensor) -> list[Tensor]:
        return [self.stem(x), *self.backbone(x)]


def check_encoder_size(encoder: str, *, base_channels: int | None = None, num_levels: int | None = None) -> None:
    """Refuse a width or depth the ``encoder`` spec cannot be built with (None: not checked); what the encoders and
    the recipes' ``--base-channels`` / ``--num-levels`` both check."""
    if num_levels is not None:
        if encoder.startswith(TIMM_PREFIX) and num_levels < 2:
            raise ValueError(
                f"a timm encoder needs num_levels >= 2 (full-resolution stem + timm levels), got {num_levels}"
            )
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    if base_channels is not None and base_channels < 1:
        raise ValueError(f"base_channels must be >= 1, got {base_channels}")


def build_encoder(encoder: str, *, base_channels: int, num_levels: int, norm: str) -> BuiltinEncoder | TimmEncoder:
    """One modality encoder from its spec: ``"builtin"`` or ``"timm:<model_name>"``."""
    if encoder == "builtin":
        return BuiltinEncoder(base_channels=base_channels, num_levels=num_levels, norm=norm)
    if encoder.startswith(TIMM_PREFIX) and len(encoder) > len(TIMM_PREFIX):
        return TimmEncoder(encoder[len(TIMM_PREFIX) :], base_channels=base_channels, num_levels=num_levels, norm=norm)
    raise ValueError(f"encoder must be 'builtin' or 'timm:<model name>' (e.g. 'timm:resnet18'), got {encoder!r}")
