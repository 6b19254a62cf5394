r"""Image-quality metrics for synthesis: SSIM, PSNR and MSE over the whole image or inside a region (brain, tumour).

Every metric takes ``(pred, target, *, data_range=1.0, mask=None, reduction="mean")`` on (B, C, H, W) slices or
(B, C, D, H, W) volumes and returns one value per sample (``reduction="none"``, shape (B,)) or their mean.

Conventions (see ``docs/metrics.md``):

* **Per sample, then the batch.** Each sample's value is computed over all its channels and voxels (in the region);
  the batch mean averages those per-sample values.
* **Regions.** ``mask`` is bool or {0, 1}, shape (B, 1 or C, *spatial). MSE and PSNR use only the voxels inside it.
  SSIM's local map is computed on the whole image (the window sees the neighbourhood of a region voxel, outside
  voxels included) and then averaged over the region voxels that lie at least 5 voxels (the window's radius) from
  the image border, the same border that scikit-image crops before averaging. So an all-ones mask gives exactly the
  unmasked SSIM.
* **Empty regions.** A sample whose region is empty (no voxel in the mask, or for SSIM none inside the border crop)
  has no value: NaN under ``reduction="none"``, and the batch mean is the mean over the samples that have one (NaN
  only when none has). NaN or Inf in ``pred`` or ``target`` is rejected up front, so a NaN result always means an
  empty region, never a broken prediction.
"""

from __future__ import annotations

import math

import kornia.metrics
import torch
from torch import Tensor

from ds3kit.utils.checks import check_finite, check_ndim, check_same_shape

__all__ = ["SSIM_WINDOW", "mse", "psnr", "region_metrics", "ssim", "ssim_map"]

#: Wang et al.'s Gaussian SSIM window: 11 taps of a Gaussian with sigma 1.5 (scikit-image's truncate=3.5 radius 5).
SSIM_WINDOW = 11
#: Voxels at the image border that the SSIM average leaves out, as scikit-image does: ``(SSIM_WINDOW - 1) // 2``.
SSIM_BORDER = (SSIM_WINDOW - 1) // 2
_REDUCTIONS = ("mean", "none")
_LAYOUT = "(B, C, H, W) or (B, C, D, H, W)"


def _validate(pred: Tensor, target: Tensor, data_range: float, mask: Tensor | None, reduction: str) -> Tensor | None:
    """Check the arguments shared by every metric; return the mask as bool, expanded to ``pred``'s shape."""
    check_ndim(pred, (4, 5), "pred", _LAYOUT)
    check_ndim(target, (4, 5), "target", _LAYOUT)
    check_same_shape(pred, target, "pred", "target")
    if pred.numel() == 0:
        raise ValueError(f"pred and target must not be empty, got shape {tuple(pred.shape)}")
    if (
        isinstance(data_range, bool)
        or not isinstance(data_range, (int, float))
        or not math.isfinite(data_range)
        or data_range <= 0
    ):
        raise ValueError(f"data_range must be > 0 and finite, got {data_range!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    check_finite(pred, "pred")
    check_finite(target, "target")
    return None if mask is None else _validate_mask(pred, mask)


def _validate_mask(pred: Tensor, mask: Tensor) -> Tensor:
    """Check a region mask against ``pred``; return it as bool, expanded to ``pred``'s shape."""
    if not isinstance(mask, Tensor):
        raise ValueError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if (
        mask.dim() != pred.dim()
        or mask.shape[0] != pred.shape[0]
        or mask.shape[2:] != pred.shape[2:]
        or mask.shape[1] not in (1, pred.shape[1])
    ):
        raise ValueError(
            f"mask must be (B, 1 or C, *spatial) = ({pred.shape[0]}, 1 or {pred.shape[1]}, "
            f"{', '.join(str(s) for s in pred.shape[2:])}) to match pred, got shape {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must be bool or hold only 0 and 1, got other values")
        mask = mask != 0
    return mask.to(pred.device).expand_as(pred)


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    # A sample with an empty region is NaN; the batch mean is over the samples that have a value.
    if reduction == "none":
        return per_sample
    return per_sample.nanmean()


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Per-sample mean of ``values`` (B, ...) over ``mask`` (same shape, bool); NaN where a sample's mask is empty."""
    flat = values.flatten(1)
    if mask is None:
        return flat.mean(1)
    weights = mask.flatten(1).to(values.dtype)
    count = weights.sum(1)
    total = (flat * weights).sum(1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))


def mse(
    pred: Tensor, target: Tensor, *, data_range: float = 1.0, mask: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    r"""Mean squared error per sample, over the whole image or the voxels of a region.

    .. math::

        \mathrm{MSE}(p, t) = \frac{1}{|\Omega|} \sum_{v \in \Omega} (p_v - t_v)^2

    with :math:`\Omega` all voxels of all channels of the sample, or those inside ``mask``.

    Args:
        pred: prediction.
        target: reference, same shape as ``pred``.
        data_range: accepted (and validated) for a signature shared with :func:`psnr` and :func:`ssim`; MSE is in
            the images' own units and does not use it.
        mask: bool or {0, 1}; None for the whole image. A sample with an empty mask gets NaN.
        reduction: ``"mean"`` (mean over the samples that have a value) or ``"none"``.

    Shape:
        - pred, target: :math:`(B, C, H, W)` or :math:`(B, C, D, H, W)`.
        - mask: :math:`(B, 1, *)` or :math:`(B, C, *)` with the spatial size of ``pred``.
        - output: scalar, or :math:`(B,)` with ``reduction="none"``.

    Example:
        >>> mse(torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4))
        tensor(1.)
    """
    region = _validate(pred, target, data_range, mask, reduction)
    return _reduce(_masked_mean((pred - target).pow(2), region), reduction)


def psnr(
    pred: Tensor, target: Tensor, *, data_range: float = 1.0, mask: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    r"""Peak signal-to-noise ratio in dB per sample, over the whole image or the voxels of a region.

    .. math::

        \mathrm{PSNR}(p, t) = 10 \log_{10} \frac{R^2}{\mathrm{MSE}(p, t)}

    with :math:`R` = ``data_range`` and the MSE of :func:`mse` (per sample, before the batch mean, as
    scikit-image's ``peak_signal_noise_ratio`` does per image). A perfect prediction gives ``inf``.

    Args:
        pred: prediction.
        target: reference, same shape as ``pred``.
        data_range: :math:`R`, the span of the intensity scale (1.0 for images in [0, 1]); > 0.
        mask: bool or {0, 1}; None for the whole image. A sample with an empty mask gets NaN.
        reduction: ``"mean"`` (mean over the samples that have a value) or ``"none"``.

    Shape:
        - pred, target: :math:`(B, C, H, W)` or :math:`(B, C, D, H, W)`.
        - mask: :math:`(B, 1, *)` or :math:`(B, C, *)` with the spatial size of ``pred``.
        - output: scalar, or :math:`(B,)` with ``reduction="none"``.

    Example:
        >>> psnr(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.1))
        tensor(20.)
    """
    region = _validate(pred, target, data_range, mask, reduction)
    error = _masked_mean((pred - target).pow(2), region)
    return _reduce(10.0 * torch.log10(float(data_range) ** 2 / error), reduction)


def ssim_map(pred: Tensor, target: Tensor, *, data_range: float = 1.0) -> Tensor:
    r"""The local SSIM map on the voxels at least :data:`SSIM_BORDER` (5) from the border.

    2-D: kornia's Gaussian SSIM (:func:`kornia.metrics.ssim`, window 11, sigma 1.5, :math:`K_1 = 0.01`,
    :math:`K_2 = 0.03`) with ``padding="valid"``. 3-D: the same as :func:`kornia.metrics.ssim3d` with
    ``padding="valid"``, but with kornia's Gaussian window applied separably, three 1-D passes (kornia convolves
    with the full 11 x 11 x 11 kernel: several times slower on a brain volume). The valid voxels are exactly the
    ones scikit-image keeps after cropping its reflect-padded map, and their values do not depend on any padding.

    Args:
        pred: prediction.
        target: reference, same shape.
        data_range: :math:`L` in :math:`c_1 = (K_1 L)^2`, :math:`c_2 = (K_2 L)^2`; > 0.

    Shape:
        - pred, target: :math:`(B, C, *S)` with 2 or 3 spatial sides, each >= 11.
        - output: :math:`(B, C, *(S - 10))`.

    Example:
        >>> ssim_map(torch.rand(1, 1, 13, 17), torch.rand(1, 1, 13, 17)).shape
        torch.Size([1, 1, 3, 7])
    """
    check_ndim(pred, (4, 5), "pred", _LAYOUT)
    check_same_shape(pred, target, "pred", "target")
    if isinstance(data_range, bool) or not isinstance(data_range, (int, float)) or not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range!r}")
    if min(pred.shape[2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs every spatial side >= {SSIM_WINDOW}, got shape {tuple(pred.shape)}")
    if pred.dim() == 5:
        return _ssim3d_valid(pred, target, float(data_range))
    # eps=0: the denominator is >= c1 * c2 > 0 already, and a perfect prediction then scores exactly 1.
    return kornia.metrics.ssim(pred, target, SSIM_WINDOW, max_val=float(data_range), eps=0.0, padding="valid")


def _ssim3d_valid(pred: Tensor, target: Tensor, data_range: float) -> Tensor:
    """3-D SSIM map on the valid region: kornia's Gaussian window, applied separably as weighted sums of shifts.

    The same numbers as ``kornia.metrics.ssim3d(..., padding="valid")`` (tested), which convolves with the full
    11 x 11 x 11 kernel; three 1-D passes of 11 in-place shifted adds are several times faster on CPU for a brain
    volume (and single-channel 1-D ``conv3d`` is slower still).
    """
    dtype = torch.promote_types(pred.dtype, target.dtype)
    if dtype in (torch.float16, torch.bfloat16) or not dtype.is_floating_point:
        dtype = torch.float32  # moments of half-precision images overflow / lose the variance
    pred, target = pred.to(dtype), target.to(dtype)
    taps = kornia.filters.get_gaussian_kernel1d(SSIM_WINDOW, 1.5, dtype=torch.float64).flatten().tolist()

    def blur(volume: Tensor) -> Tensor:
        for dim in (-3, -2, -1):
            size = volume.shape[dim] - (SSIM_WINDOW - 1)
            out = volume.narrow(dim, 0, size) * taps[0]
            for shift in range(1, SSIM_WINDOW):
                out.add_(volume.narrow(dim, shift, size), alpha=taps[shift])
            volume = out
        return volume

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_p, mu_t = blur(pred), blur(target)
    mu_pp, mu_tt, mu_pt = mu_p * mu_p, mu_t * mu_t, mu_p * mu_t
    sigma_pp = blur(pred * pred) - mu_pp
    sigma_tt = blur(target * target) - mu_tt
    sigma_pt = blur(pred * target) - mu_pt
    return (2 * mu_pt + c1) * (2 * sigma_pt + c2) / ((mu_pp + mu_tt + c1) * (sigma_pp + sigma_tt + c2))


def ssim(
    pred: Tensor, target: Tensor, *, data_range: float = 1.0, mask: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    r"""Wang et al.'s Gaussian SSIM per sample, 2-D or 3-D, over the whole image or averaged inside a region.

    .. math::

        \mathrm{SSIM}(p, t) = \frac{1}{|\Omega|} \sum_{v \in \Omega}
        \frac{(2\mu_p\mu_t + c_1)(2\sigma_{pt} + c_2)}{(\mu_p^2 + \mu_t^2 + c_1)(\sigma_p^2 + \sigma_t^2 + c_2)}(v)

    with Gaussian-weighted local moments (window 11, sigma 1.5, population covariance), :math:`c_1 = (0.01 R)^2`,
    :math:`c_2 = (0.03 R)^2`, :math:`R` = ``data_range``, and :math:`\Omega` the voxels (of every channel) at least 5
    from the border, intersected with ``mask`` when one is given. Without a mask this is scikit-image's
    ``structural_similarity(p, t, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=R)``
    (averaged over channels); the tests hold it within 1e-3 on 2-D and 3-D images. The local map is always
    computed on the whole image, so the SSIM of a region voxel near the region's edge also sees voxels outside it.
    Differentiable.

    Args:
        pred: prediction.
        target: reference, same shape as ``pred``.
        data_range: :math:`R`, the span of the intensity scale (1.0 for images in [0, 1]); > 0.
        mask: bool or {0, 1}; None for the whole image. A sample with no mask voxel inside the border crop gets NaN.
        reduction: ``"mean"`` (mean over the samples that have a value) or ``"none"``.

    Shape:
        - pred, target: :math:`(B, C, H, W)` or :math:`(B, C, D, H, W)`, every spatial side >= 11.
        - mask: :math:`(B, 1, *)` or :math:`(B, C, *)` with the spatial size of ``pred``.
        - output: scalar, or :math:`(B,)` with ``reduction="none"``.

    Example:
        >>> x = torch.rand(2, 1, 32, 32)
        >>> ssim(x, x)
        tensor(1.)
    """
    region = _validate(pred, target, data_range, mask, reduction)
    values = ssim_map(pred, target, data_range=data_range)
    if region is not None:
        crop = (slice(None), slice(None)) + tuple(slice(SSIM_BORDER, size - SSIM_BORDER) for size in region.shape[2:])
        region = region[crop]
    return _reduce(_masked_mean(values, region), reduction)


def region_metrics(
    pred: Tensor,
    target: Tensor,
    *,
    brain_mask: Tensor | None = None,
    tumour_mask: Tensor | None = None,
    data_range: float = 1.0,
) -> dict[str, float]:
    """SSIM, PSNR and MSE over the whole image and inside the brain and tumour regions, as plain floats.

    The keys are ``ssim``, ``psnr``, ``mse`` (whole image), then ``brain_ssim``, ``brain_psnr``, ``brain_mse`` when
    ``brain_mask`` is given and holds a voxel, and likewise ``tumour_*``. Values are batch means as in
    :func:`ssim` / :func:`psnr` / :func:`mse` (samples with an empty region are left out of that region's mean).
    ``psnr`` is ``inf`` for a perfect prediction (JSON writers must allow it or map it).

    Args:
        pred: prediction.
        target: reference, same shape.
        brain_mask: bool or {0, 1}, or None.
        tumour_mask: bool or {0, 1}, or None.
        data_range: the span of the intensity scale; > 0.

    Shape:
        - pred, target: :math:`(B, C, H, W)` or :math:`(B, C, D, H, W)` (a single volume is ``(1, 1, X, Y, Z)``).
        - brain_mask, tumour_mask: :math:`(B, 1, *)` or :math:`(B, C, *)` with the spatial size of ``pred``.

    Example:
        >>> x = torch.rand(1, 1, 16, 16, 16)
        >>> sorted(region_metrics(x, x.clone(), brain_mask=x > 0.5, tumour_mask=torch.zeros_like(x)))
        ['brain_mse', 'brain_psnr', 'brain_ssim', 'mse', 'psnr', 'ssim']
    """
    _validate(pred, target, data_range, None, "mean")
    regions: dict[str, Tensor | None] = {"": None}
    for prefix, mask in (("brain_", brain_mask), ("tumour_", tumour_mask)):
        if mask is not None:
            region = _validate_mask(pred, mask)
            if bool(region.any()):
                regions[prefix] = region
    # Each map once, then one masked mean per region (SSIM of a 3-D volume is the expensive part).
    squared_error = (pred - target).pow(2)
    similarity = ssim_map(pred, target, data_range=data_range)
    crop = (slice(None), slice(None)) + tuple(slice(SSIM_BORDER, size - SSIM_BORDER) for size in pred.shape[2:])
    results: dict[str, float] = {}
    for prefix, region in regions.items():
        error = _masked_mean(squared_error, region)
        similarity_region = None if region is None else region[crop]
        results[prefix + "ssim"] = float(_reduce(_masked_mean(similarity, similarity_region), "mean"))
        results[prefix + "psnr"] = float(_reduce(10.0 * torch.log10(float(data_range) ** 2 / error), "mean"))
        results[prefix + "mse"] = float(_reduce(error, "mean"))
    return results
