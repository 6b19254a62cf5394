r"""The difficulty map and the difficulty-perceived pixel loss L_pid.

The discriminator scores every patch of ``(x, G(x))``; patches it finds fake are the hard ones. DS3-Net weighs
its pixelwise (and patchwise) losses by

.. math::
    M = 1 + \beta\,(1 - \mathrm{realness}(D(x, G(x))))  \in [1, 1 + \beta],

upsampled to the image size and detached, with :math:`\beta` ramping up "progressively" from 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ds3kit.losses.adversarial import realness
from ds3kit.utils.checks import check_ndim, check_same_shape

INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "area")
REDUCTIONS = ("mean", "sum", "none")


def difficulty_map(
    discriminator_output: Tensor,
    size: Sequence[int],
    *,
    beta: float,
    mode: str = "lsgan",
    interpolation: str = "bilinear",
) -> Tensor:
    r"""The difficulty map :math:`M = 1 + \beta (1 - \mathrm{realness}(s))`, upsampled to ``size``, detached.

    No gradient ever flows through ``M``: it is a weight, and a path through it would let the generator lower its
    loss by fooling the discriminator into lowering the weight instead of by synthesizing better.

    Args:
        discriminator_output: raw PatchGAN scores ``s``.
        size: (H, W) of the image the map weighs (a ``torch.Size`` works).
        beta: strength, >= 0 (0 gives ones: the unweighted loss).
        mode: the GAN mode the scores come from (``"lsgan"``: clamp to [0, 1]; ``"bce"``: sigmoid; ``"hinge"``).
        interpolation: ``"bilinear"`` (default: smooth weights), ``"nearest"`` (the patch grid as drawn in the
            paper's figure), ``"bicubic"`` (clamped back to [1, 1 + beta]) or ``"area"``.

    Shape:
        - Input: (B, 1, h, w)
        - Output: (B, 1, H, W), values in [1, 1 + beta], ``requires_grad=False``

    Example:
        >>> difficulty_map(torch.zeros(1, 1, 2, 2), (4, 4), beta=1.0).unique()
        tensor([2.])
    """
    check_ndim(discriminator_output, 4, "discriminator_output", "(B, 1, h, w)")
    if discriminator_output.shape[1] != 1:
        raise ValueError(f"discriminator_output must have 1 channel, got shape {tuple(discriminator_output.shape)}")
    if len(size) != 2 or any(int(side) < 1 for side in size):
        raise ValueError(f"size must be (H, W) with positive sides, got {tuple(size)}")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    with torch.no_grad():
        hardness = 1.0 - realness(discriminator_output.detach(), mode)
        if tuple(hardness.shape[-2:]) != (int(size[0]), int(size[1])):
            extra = {"align_corners": False} if interpolation in ("bilinear", "bicubic") else {}
            hardness = F.interpolate(hardness, size=(int(size[0]), int(size[1])), mode=interpolation, **extra)
            if interpolation == "bicubic":  # cubic kernels overshoot; keep the promised range
                hardness = hardness.clamp(0.0, 1.0)
        return 1.0 + beta * hardness


def difficulty_beta(step: int, *, beta_max: float, warmup_steps: int) -> float:
    r"""The progressive strength :math:`\beta(t) = \beta_{max} \min(1, t / T_{warm-up})` (``warmup_steps=0``: constant).

    Example:
        >>> difficulty_beta(50, beta_max=2.0, warmup_steps=100)
        1.0
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not (math.isfinite(beta_max) and beta_max >= 0):
        raise ValueError(f"beta_max must be a finite number >= 0, got {beta_max!r}")
    if warmup_steps == 0:
        return float(beta_max)
    return float(beta_max) * min(1.0, step / warmup_steps)


def difficulty_weighted_mean(
    errors: Tensor, difficulty: Tensor | None = None, *, mask: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    r"""Reduce element-wise ``errors`` weighted by a difficulty map, over a mask.

    .. math::
        \text{mean: } \frac{\sum_i m_i M_i e_i}{\sum_i m_i} \qquad \text{sum: } \sum_i m_i M_i e_i \qquad
        \text{none: } m_i M_i e_i

    ``M`` and ``m`` default to ones and broadcast to ``errors`` (e.g. a (B, 1, H, W) map over (B, C, H, W) errors;
    the mask's sum is taken after broadcasting). The mask divides, the map does not: ``M`` shifts weight towards
    hard pixels AND raises the loss scale, as :math:`\mathrm{mean}(M |\hat y - y|)` does. An all-zero mask gives 0.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    weighted = errors
    for name, weight in (("difficulty", difficulty), ("mask", mask)):
        if weight is None:
            continue
        if not isinstance(weight, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor or None, got {type(weight).__name__}")
        try:
            broadcast = torch.broadcast_shapes(weight.shape, errors.shape)
        except RuntimeError:
            broadcast = None
        if broadcast != errors.shape:
            raise ValueError(
                f"{name} must broadcast to the prediction's shape {tuple(errors.shape)}, got {tuple(weight.shape)}"
            )
        weighted = weighted * weight.to(errors.dtype)
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    if mask is None:
        return weighted.mean()
    count = mask.to(errors.dtype).expand(errors.shape).sum()
    # An empty mask has a zero numerator too: dividing by a tiny positive number returns that 0, with a gradient path.
    return weighted.sum() / count.clamp_min(torch.finfo(errors.dtype).tiny)


#: The pixel losses :func:`difficulty_pixel` takes: absolute error (pix2pix's L1) or squared error.
PIXEL_LOSSES: tuple[str, ...] = ("l1", "l2")


def difficulty_pixel(
    pred: Tensor,
    target: Tensor,
    difficulty: Tensor | None = None,
    *,
    loss: str = "l1",
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""The difficulty-weighted pixel loss with a choice of error: :math:`\mathrm{mean}(M \odot |\hat y - y|)`
    (``loss="l1"``, :func:`difficulty_l1`) or :math:`\mathrm{mean}(M \odot (\hat y - y)^2)` (``"l2"``).

    L1's minimiser is the conditional median, L2's the conditional mean, which is what MSE and PSNR score. Arguments
    as :func:`difficulty_l1`.

    Example:
        >>> difficulty_pixel(torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 2.0), loss="l2")
        tensor(4.)
    """
    if loss not in PIXEL_LOSSES:
        raise ValueError(f"loss must be one of {PIXEL_LOSSES}, got {loss!r}")
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
        raise ValueError(
            f"pred and target must be torch.Tensors, got {type(pred).__name__} and {type(target).__name__}"
        )
    check_same_shape(pred, target, "pred", "target")
    errors = pred - target
    errors = errors.abs() if loss == "l1" else errors.square()
    return difficulty_weighted_mean(errors, difficulty, mask=mask, reduction=reduction)


def difficulty_l1(
    pred: Tensor,
    target: Tensor,
    difficulty: Tensor | None = None,
    *,
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""L_pid, the difficulty-perceived pixelwise loss: :math:`\mathrm{mean}(M \odot |\hat y - y|)`.

    With a ``mask`` (e.g. the brain mask) the mean runs over the masked pixels only:
    :math:`\sum m M |\hat y - y| / \sum m`. Without ``difficulty`` it is plain (masked) L1.

    Args:
        pred: synthesized image :math:`\hat y`.
        target: ground truth :math:`y` (same shape).
        difficulty: map ``M`` from :func:`difficulty_map`, broadcastable to ``pred`` (usually (B, 1, H, W)).
            Used as given: pass a detached map (``difficulty_map`` returns one).
        mask: 0/1 (or soft) weights broadcastable to ``pred``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (element-wise, shape of ``pred``).

    Shape:
        - pred, target: (B, C, H, W) (any shape works)
        - Output: scalar, or the shape of ``pred`` for ``reduction="none"``

    Example:
        >>> pred, target = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
        >>> difficulty_l1(pred, target, torch.full((1, 1, 2, 2), 1.5))
        tensor(1.5000)
    """
    return difficulty_pixel(pred, target, difficulty, loss="l1", mask=mask, reduction=reduction)


class DifficultyL1Loss(nn.Module):
    r"""Module form of :func:`difficulty_l1`: :math:`\mathrm{mean}(M \odot |\hat y - y|)` over an optional mask.

    Example:
        >>> loss = DifficultyL1Loss()
        >>> loss(torch.zeros(1, 1, 3, 3), torch.ones(1, 1, 3, 3))
        tensor(1.)
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def forward(
        self, pred: Tensor, target: Tensor, difficulty: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        return difficulty_l1(pred, target, difficulty, mask=mask, reduction=self.reduction)
