"""Image-quality metrics for synthesis: SSIM, PSNR, MSE over whole images or inside a region (brain, tumour).

Each takes ``(pred, target, *, data_range=1.0, mask=None, reduction="mean")`` on (B, C, H, W) or (B, C, D, H, W)
tensors. ``mask`` (bool or {0, 1}, shape (B, 1 or C, *spatial)) restricts the average to a region.
"""

from __future__ import annotations

import math

import kornia.metrics
import torch
from torch import Tensor

from ds3kit.utils.checks import check_ndim, check_same_shape

#: Wang et al.'s Gaussian SSIM: window 11, sigma 1.5 (kornia's), K1 0.01, K2 0.03.
SSIM_WINDOW = 11
_REDUCTIONS = ("mean", "none")


def _check(pred: Tensor, target: Tensor, data_range: float, mask: Tensor | None, reduction: str) -> Tensor | None:
    check_ndim(pred, (4, 5), "pred", "(B, C, H, W) or (B, C, D, H, W)")
    check_same_shape(pred, target, "pred", "target")
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if mask is None:
        return None
    if mask.dim() != pred.dim() or mask.shape[0] != pred.shape[0] or mask.shape[2:] != pred.shape[2:] or mask.shape[1] not in (1, pred.shape[1]):
        raise ValueError(
            f"mask must be (B, 1 or C, *spatial) matching pred {tuple(pred.shape)}, got shape {tuple(mask.shape)}"
        )
    return mask.to(torch.bool).expand_as(pred)


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    # A sample whose region is empty has no value (NaN); the batch mean is over the samples that have one.
    if reduction == "none":
        return per_sample
    return per_sample.nanmean() if per_sample.isnan().any() else per_sample.mean()


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    flat = values.flatten(1)
    if mask is None:
        return flat.mean(1)
    weights = mask.flatten(1).to(values.dtype)
    count = weights.sum(1)
    return torch.where(count > 0, (flat * weights).sum(1) / count.clamp_min(1), torch.full_like(count, math.nan))


def mse(pred: Tensor, target: Tensor, *, data_range: float = 1.0, mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
    r"""Mean squared error :math:`\frac{1}{|\Omega|}\sum_{\Omega}(p - t)^2` over the image or the masked region.

    ``data_range`` is accepted for a uniform signature; MSE is in the images' own units.

    Example:
        >>> mse(torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4))
        tensor(1.)
    """
    mask = _check(pred, target, data_range, mask, reduction)
    return _reduce(_masked_mean((pred - target).pow(2), mask), reduction)


def psnr(pred: Tensor, target: Tensor, *, data_range: float = 1.0, mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
    r"""Peak signal-to-noise ratio :math:`10 \log_{10}(R^2 / \mathrm{MSE})` in dB, per sample, then the batch mean.

    A perfect prediction gives ``inf``.

    Example:
        >>> psnr(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.1))
        tensor(20.)
    """
    mask = _check(pred, target, data_range, mask, reduction)
    error = _masked_mean((pred - target).pow(2), mask)
    return _reduce(10.0 * torch.log10(data_range**2 / error), reduction)


def ssim_map(pred: Tensor, target: Tensor, *, data_range: float = 1.0) -> Tensor:
    """The local SSIM map on the 'valid' region: each spatial side shrinks by ``SSIM_WINDOW - 1``, the border that
    scikit-image crops before averaging. (B, C, *spatial) -> (B, C, *(spatial - 10))."""
    check_ndim(pred, (4, 5), "pred", "(B, C, H, W) or (B, C, D, H, W)")
    if min(pred.shape[2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs every spatial side >= {SSIM_WINDOW}, got shape {tuple(pred.shape)}")
    function = kornia.metrics.ssim if pred.dim() == 4 else kornia.metrics.ssim3d
    return function(pred, target, SSIM_WINDOW, max_val=data_range, padding="valid")


def ssim(pred: Tensor, target: Tensor, *, data_range: float = 1.0, mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
    r"""Wang et al.'s Gaussian SSIM (window 11, sigma 1.5, K1 = 0.01, K2 = 0.03), 2-D or 3-D.

    The SSIM map is computed on the whole image and averaged over the voxels at least 5 from the border (as
    scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` does)
    that lie in ``mask``; agrees with scikit-image within 1e-3 (tests). Differentiable.

    Example:
        >>> x = torch.rand(2, 1, 32, 32)
        >>> float(ssim(x, x))
        1.0
    """
    mask = _check(pred, target, data_range, mask, reduction)
    values = ssim_map(pred, target, data_range=data_range)
    border = (SSIM_WINDOW - 1) // 2
    if mask is not None:
        crop = (slice(None), slice(None)) + tuple(slice(border, size - border) for size in mask.shape[2:])
        mask = mask[crop]
    return _reduce(_masked_mean(values, mask), reduction)


def region_metrics(
    pred: Tensor,
    target: Tensor,
    *,
    brain_mask: Tensor | None = None,
    tumour_mask: Tensor | None = None,
    data_range: float = 1.0,
) -> dict[str, float]:
    """SSIM, PSNR and MSE over the whole image, and prefixed ``brain_`` / ``tumour_`` inside each given, non-empty mask.

    Example:
        >>> x = torch.rand(1, 1, 16, 16, 16)
        >>> sorted(region_metrics(x, x.clone(), brain_mask=x > 0.5))
        ['brain_mse', 'brain_psnr', 'brain_ssim', 'mse', 'psnr', 'ssim']
    """
    results: dict[str, float] = {}
    for prefix, mask in (("", None), ("brain_", brain_mask), ("tumour_", tumour_mask)):
        if prefix and (mask is None or not bool(mask.any())):
            continue
        for name, metric in (("ssim", ssim), ("psnr", psnr), ("mse", mse)):
            results[prefix + name] = float(metric(pred, target, data_range=data_range, mask=mask))
    return results
