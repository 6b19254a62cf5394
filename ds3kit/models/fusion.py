"""The generator's inference copy: the same function, restructured to run faster (as timm's reparameterize_model).

:func:`for_inference` (exported as ``ds3kit.models.for_inference``) deep-copies a :class:`Generator` and

- groups its builtin modality encoders into one encoder of grouped convolutions (:class:`GroupedEncoders`),
- splits each decoder level's first convolution so that it never concatenates (:class:`SplitDecoderLevel`),
- turns instance norms into group norms with one channel per group (the same normalisation).

Training never sees these modules; ``ds3kit.inference.synthesize_volume`` runs the copy (docs/models.md).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ds3kit.models.encoders import BuiltinEncoder
from ds3kit.models.generator import DecoderLevel, Generator

__all__ = ["GroupedEncoders", "SplitDecoderLevel", "for_inference"]


def for_inference(generator: Generator) -> Generator:
    """A copy for synthesis: eval mode, no gradients, builtin encoders grouped into one module.

    Instance norms become group norms with one channel per group, the same function, which PyTorch's CPU
    kernels compute faster on small maps (docs/benchmarks.md, "Instance norm as group norm"), and each decoder level
    sums two convolutions instead of convolving a concatenation (:class:`SplitDecoderLevel`). The copy computes the
    same function (to float rounding) faster, most on the CPU (docs/benchmarks.md). It shares nothing with ``generator``: train or load
    ``generator`` and call this again. Timm encoders are left as they are.
    """
    clone = copy.deepcopy(generator)
    grouped = GroupedEncoders.from_encoders(clone.encoders)
    if grouped is not None:
        clone.encoders = grouped
    clone.decoder = nn.ModuleList(
        SplitDecoderLevel.from_level(level) if isinstance(level, DecoderLevel) else level for level in clone.decoder
    )
    for module in list(clone.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.InstanceNorm2d and not child.track_running_stats:
                setattr(module, name, _instance_as_group_norm(child))
    return clone.eval().requires_grad_(False)


class SplitDecoderLevel(nn.Module):
    """A :class:`DecoderLevel` that never concatenates: ``conv(cat(x, skip)) = conv_x(x) + conv_skip(skip)``.

    The first merge convolution's weights are split along their input channels, so the upsampled map and the skip
    go through their own convolution and the results are summed: the same function without the copy that ``cat``
    makes of both maps (an interleaving copy in channels_last). Built by :meth:`from_level` for inference copies.
    """

    def __init__(self, narrow: nn.Module, conv_x: nn.Conv2d, conv_skip: nn.Conv2d, after: nn.Module, rest: nn.Module):
        super().__init__()
        self.narrow, self.conv_x, self.conv_skip, self.after, self.rest = narrow, conv_x, conv_skip, after, rest

    @classmethod
    def from_level(cls, level: DecoderLevel) -> SplitDecoderLevel:
        first = level.merge[0]
        conv = first[0]
        width = level.narrow[0].out_channels
        parts = []
        for channels, bias in ((width, False), (conv.in_channels - width, conv.bias is not None)):
            part = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, padding=conv.padding, bias=bias)
            parts.append(part.to(conv.weight.device, conv.weight.dtype))
        with torch.no_grad():
            parts[0].weight.copy_(conv.weight[:, :width])
            parts[1].weight.copy_(conv.weight[:, width:])
            if conv.bias is not None:
                parts[1].bias.copy_(conv.bias)
        return cls(
            level.narrow, parts[0], parts[1], nn.Sequential(*list(first)[1:]), nn.Sequential(*list(level.merge)[1:])
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(self.narrow(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.rest(self.after(self.conv_x(x).add_(self.conv_skip(skip))))


class GroupedEncoders(nn.Module):
    """Builtin modality encoders run as one encoder of grouped convolutions (``groups = modalities``).

    Level ``l`` of the result is exactly ``cat_m E_m(x_m)^l``: each group sees one modality's channels and carries
    that encoder's weights, and instance, batch and group norms act per channel (group norm per group of
    channels), so nothing mixes across modalities. One wide grouped convolution replaces three narrow ones and
    the per-level ``cat`` disappears, which is what an inference pass gains (docs/benchmarks.md). Build it with
    :meth:`from_encoders`; it copies the weights, so later changes to the source encoders do not reach it.

    Shape:
        - Input: (B, M, H, W)
        - Output: list of ``num_levels`` tensors (B, M * channels[l], ceil(H / 2**l), ceil(W / 2**l))
    """

    def __init__(self, levels: nn.ModuleList, modalities: int, channels: list[int], reductions: list[int]) -> None:
        super().__init__()
        self.levels = levels
        self.modalities = modalities
        self.channels = channels
        self.reductions = reductions

    def __len__(self) -> int:
        return self.modalities

    @classmethod
    def from_encoders(cls, encoders: nn.ModuleList) -> GroupedEncoders | None:
        """The grouped equivalent of ``encoders`` (same structure, builtin), or None when they cannot be grouped."""
        if not isinstance(encoders, nn.ModuleList) or len(encoders) < 2:  # e.g. already grouped
            return None
        if not all(type(e) is BuiltinEncoder for e in encoders):
            return None
        try:
            levels = _group_modules([encoder.levels for encoder in encoders], modalities=len(encoders))
        except _NotGroupable:
            return None
        return cls(levels, len(encoders), list(encoders[0].channels), list(encoders[0].reductions))

    forward = BuiltinEncoder.forward  # the same loop over levels, each a grouped conv-norm-act stack


def _instance_as_group_norm(norm: nn.InstanceNorm2d) -> nn.GroupNorm:
    """The same normalisation (statistics per sample and channel, biased variance) as a GroupNorm."""
    group = nn.GroupNorm(norm.num_features, norm.num_features, eps=norm.eps, affine=norm.affine)
    if norm.affine:
        group = group.to(norm.weight.device, norm.weight.dtype)
        with torch.no_grad():
            group.weight.copy_(norm.weight)
            group.bias.copy_(norm.bias)
    return group


class _NotGroupable(Exception):
    pass


def _group_modules(modules: list[nn.Module], *, modalities: int) -> nn.Module:
    """One module doing on M stacked channel groups what ``modules[m]`` does on group m."""
    first = modules[0]
    if any(type(m) is not type(first) for m in modules):
        raise _NotGroupable
    if isinstance(first, nn.Conv2d):
        if first.groups != 1 or first.padding_mode != "zeros":
            raise _NotGroupable
        conv = nn.Conv2d(
            first.in_channels * modalities,
            first.out_channels * modalities,
            first.kernel_size,
            stride=first.stride,
            padding=first.padding,
            dilation=first.dilation,
            groups=modalities,
            bias=first.bias is not None,
        ).to(first.weight.device, first.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(torch.cat([m.weight for m in modules]))
            if conv.bias is not None:
                conv.bias.copy_(torch.cat([m.bias for m in modules]))
        return conv
    if isinstance(first, (nn.InstanceNorm2d, nn.BatchNorm2d, nn.GroupNorm)):
        grouped = copy.deepcopy(first)
        if isinstance(first, nn.GroupNorm):
            grouped.num_groups = first.num_groups * modalities
            grouped.num_channels = first.num_channels * modalities
        else:
            grouped.num_features = first.num_features * modalities
        for name, tensor in [*first.named_parameters(recurse=False), *first.named_buffers(recurse=False)]:
            if tensor is None or tensor.dim() == 0:  # num_batches_tracked
                continue
            stacked = torch.cat([getattr(m, name).detach() for m in modules])
            if isinstance(tensor, nn.Parameter):
                setattr(grouped, name, nn.Parameter(stacked, requires_grad=tensor.requires_grad))
            else:
                setattr(grouped, name, stacked)
        return grouped
    if isinstance(first, (nn.LeakyReLU, nn.ReLU, nn.Identity)):
        return copy.deepcopy(first)
    if isinstance(first, (nn.Sequential, nn.ModuleList)):
        children = [list(m.children()) for m in modules]
        if len({len(c) for c in children}) != 1:
            raise _NotGroupable
        grouped_children = [_group_modules(list(group), modalities=modalities) for group in zip(*children)]
        return type(first)(grouped_children) if isinstance(first, nn.ModuleList) else nn.Sequential(*grouped_children)
    raise _NotGroupable
