r"""One random in-plane affine warp per sample, applied alike to images, label maps and feature maps of any size.

DS3-Net's consistency training (``DS3NetOptions.student_warp``) shows the student a warped view of the unpaired
batch and warps the teacher's pseudo-target, features and the tumour labels by the same transform. Feature maps are
coarser than the images, so the warp is written as a :func:`torch.nn.functional.affine_grid` matrix in normalised
coordinates (``align_corners=False``), which means the same geometry at every resolution of a slice.

For output pixel centre :math:`p` (pixel units about the slice's centre), the sampled input position is

.. math::

    q = s \, R(\alpha) \, F \, p + t, \qquad F = \operatorname{diag}(1, \pm 1)

a rotation by :math:`\alpha`, an isotropic zoom :math:`s`, an optional flip of the H axis (the left-right axis of
ds3kit's slices) and a shift :math:`t`, drawn per sample. Samples outside the slice read zero (the background of a
skull-stripped, normalised slice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ds3kit.utils.checks import check_ndim

__all__ = ["WarpRange", "random_affine", "warp"]


@dataclass(frozen=True)
class WarpRange:
    """The range each sample's warp is drawn from (uniformly; the zoom log-uniformly).

    Attributes:
        degrees: largest rotation, degrees, >= 0.
        scale: (low, high) zoom factors, 0 < low <= high.
        translate: largest shift as a fraction of each side, in [0, 1).
        flip: flip the H axis of half of the samples.
    """

    degrees: float = 20.0
    scale: tuple[float, float] = (0.85, 1.15)
    translate: float = 0.08
    flip: bool = True

    def __post_init__(self) -> None:
        low, high = self.scale
        if not self.degrees >= 0:
            raise ValueError(f"degrees must be >= 0, got {self.degrees}")
        if not 0 < low <= high:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {self.scale}")
        if not 0 <= self.translate < 1:
            raise ValueError(f"translate must be in [0, 1), got {self.translate}")


def random_affine(
    batch: int, size: tuple[int, int], warps: WarpRange, *, device: torch.device | str | None = None
) -> Tensor:
    """``batch`` random warps of an (H, W) slice as ``affine_grid`` matrices (batch, 2, 3), float32.

    Draws from torch's global CPU generator, so :func:`torch.manual_seed` (or a random stream) reproduces them.
    """
    height, width = (int(n) for n in size)
    if batch < 1 or height < 1 or width < 1:
        raise ValueError(f"random_affine needs batch >= 1 and a non-empty size, got {batch} and {size}")
    draws = torch.rand(batch, 5, dtype=torch.float64)
    angle = (2 * draws[:, 0] - 1) * math.radians(warps.degrees)
    low, high = (math.log(s) for s in warps.scale)
    zoom = torch.exp(low + draws[:, 1] * (high - low))
    flip = torch.where(draws[:, 2] < 0.5, -1.0, 1.0) if warps.flip else torch.ones(batch, dtype=torch.float64)
    shift = (2 * draws[:, 3:5] - 1) * warps.translate * 2  # normalised units: a side spans 2
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    # Pixel units about the centre, (x along W, y along H) as affine_grid orders them: q = zoom R diag(1, flip) p.
    linear = torch.stack((torch.stack((cos, -sin * flip), -1), torch.stack((sin, cos * flip), -1)), -2)
    # In normalised coordinates u = 2 x / W, v = 2 y / H: N linear N^-1 with N = diag(2 / W, 2 / H).
    to_normalised = torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64)
    linear = to_normalised[:, None] * linear / to_normalised[None, :]
    theta = torch.cat((linear, shift[:, :, None]), dim=-1)
    return theta.to(device=device, dtype=torch.float32)


def warp(image: Tensor, theta: Tensor, *, mode: str = "bilinear") -> Tensor:
    """``image`` (B, C, H, W) resampled through ``theta`` (B, 2, 3) from :func:`random_affine`; zero outside.

    ``mode="bilinear"`` for images and features (keeps gradients), ``"nearest"`` for label maps, whose values and
    dtype are kept exactly (integer and bool maps go through float and back).
    """
    check_ndim(image, 4, "image", "(B, C, H, W)")
    if theta.shape != (image.shape[0], 2, 3):
        raise ValueError(f"theta must have shape ({image.shape[0]}, 2, 3), got {tuple(theta.shape)}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    dtype = image.dtype
    values = image if dtype.is_floating_point else image.float()
    grid = F.affine_grid(theta.to(values), list(values.shape), align_corners=False)
    out = F.grid_sample(values, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out if dtype.is_floating_point else out.round().to(dtype)
