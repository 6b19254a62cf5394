"""Intensity normalisation (the brain's mean and spread, or its percentiles -> [0, 1]) and brain masks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ds3kit.errors import InputError

# A volume counts as skull-stripped when nearly all of its outer faces are exactly zero:
# a raw scan has noise (and scalp) there, a BraTS volume has a zero background.
_STRIPPED_BORDER_ZERO_FRACTION = 0.95


@dataclass(frozen=True)
class IntensityScaling:
    """The linear map from scanner units to [0, 1]: ``(x - low) / (high - low)``, clipped.

    Attributes:
        low: the scanner value mapped to 0 (see :func:`fit_intensity_scaling`).
        high: the scanner value mapped to 1; ``high > low``.
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high)) or self.high <= self.low:
            raise ValueError(f"IntensityScaling needs finite low < high, got low={self.low}, high={self.high}")

    def normalize(self, data: np.ndarray) -> np.ndarray:
        """Scanner units -> [0, 1]; any shape; float32. Values beyond ``low`` / ``high`` clip to 0 or 1."""
        scaled = (np.asarray(data, dtype=np.float32) - np.float32(self.low)) / np.float32(self.high - self.low)
        return np.clip(scaled, 0.0, 1.0, out=scaled)

    def denormalize(self, data: np.ndarray) -> np.ndarray:
        """[0, 1] -> scanner units (the inverse of :meth:`normalize` on the unclipped range); float32."""
        return np.asarray(data, dtype=np.float32) * np.float32(self.high - self.low) + np.float32(self.low)


#: The rules :func:`fit_intensity_scaling` knows; the first is what every session is normalised with.
NORMALIZATIONS = ("zscore", "percentile")
NORMALIZATION = NORMALIZATIONS[0]
#: ``zscore`` maps the brain's mean minus / plus this many standard deviations to 0 / 1.
ZSCORE_HALF_WIDTH = 3.0


def fit_intensity_scaling(
    data: np.ndarray,
    mask: np.ndarray,
    *,
    method: str = NORMALIZATION,
    lower_percentile: float = 0.5,
    upper_percentile: float = 99.5,
) -> IntensityScaling:
    """Fit the [0, 1] map of one volume from its intensities inside ``mask``.

    ``"zscore"`` (the default) maps the mean inside the mask minus / plus :data:`ZSCORE_HALF_WIDTH` standard
    deviations to 0 / 1: a z-score inside the brain, nnU-Net's convention for MRI, rescaled to the unit range.
    The scale is set by the bulk of the brain, so one tissue sits at nearly the same value in every subject, and a
    bright rim or vessel is kept rather than clipped. ``"percentile"`` maps ``lower_percentile`` /
    ``upper_percentile`` to 0 / 1 (ds3kit before 2026-12-03: 0.5 / 99.5); there the 99.5th percentile falls on the
    enhancing rim and the vessels, so their volume sets the subject's scale and a large rim is clipped to 1
    (docs/data.md). Either falls back to the min / max inside the mask when its range is empty.

    Args:
        data: (X, Y, Z) scanner units.
        mask: bool (X, Y, Z), the voxels to measure (the brain).
        method: one of :data:`NORMALIZATIONS`.
        lower_percentile, upper_percentile: ``"percentile"`` only; in [0, 100], lower < upper.

    Raises:
        InputError: the mask is empty or the intensity inside it is constant.
        ValueError: an unknown method, shapes differ or the percentiles are out of order.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"method must be one of {NORMALIZATIONS}, got {method!r}")
    values = np.asarray(data)
    inside = np.asarray(mask, dtype=bool)
    if values.shape != inside.shape:
        raise ValueError(f"data and mask must have the same shape, got {values.shape} and {inside.shape}")
    if not 0.0 <= lower_percentile < upper_percentile <= 100.0:
        raise ValueError(
            f"need 0 <= lower_percentile < upper_percentile <= 100, got {lower_percentile} and {upper_percentile}"
        )
    selected = values[inside]
    if selected.size == 0:
        raise InputError("brain mask is empty: no voxels to fit the intensity scaling on")
    if method == "zscore":
        selected = selected.astype(np.float64)
        mean, spread = selected.mean(), selected.std()
        low, high = mean - ZSCORE_HALF_WIDTH * spread, mean + ZSCORE_HALF_WIDTH * spread
    else:
        low, high = np.percentile(selected, [lower_percentile, upper_percentile])
    if high <= low:
        low, high = selected.min(), selected.max()
    if high <= low:
        raise InputError(f"intensity is constant ({float(low)}) inside the brain mask")
    return IntensityScaling(float(low), float(high))


def is_skull_stripped(volumes: Sequence[np.ndarray]) -> bool:
    """True when the volumes have a zero background (BraTS-style): the outer faces are almost all exactly 0."""
    stack = _stack(volumes)
    any_nonzero = (stack != 0).any(axis=0)
    faces = [
        any_nonzero[0],
        any_nonzero[-1],
        any_nonzero[:, 0],
        any_nonzero[:, -1],
        any_nonzero[:, :, 0],
        any_nonzero[:, :, -1],
    ]
    border = np.concatenate([face.ravel() for face in faces])
    return float(1.0 - border.mean()) >= _STRIPPED_BORDER_ZERO_FRACTION


def brain_mask(volumes: Sequence[np.ndarray]) -> np.ndarray:
    """A bool (X, Y, Z) mask of the brain (or head) from co-registered input volumes.

    * Skull-stripped inputs (zero background, see :func:`is_skull_stripped`): the voxels where any
      input is > 0, with enclosed holes filled.
    * Raw, non-stripped scans: each input is scaled by its 99th percentile and the inputs are
      averaged; Otsu's threshold on that mean separates tissue from air; the largest connected
      component is kept (drops noise specks and ghosting) and holes are filled in 3-D and then
      slice by slice (dark CSF, thick slices). This is a head mask (scalp and skull included): it
      stops normalisation from being dominated by air, it is not a skull stripper.

    Args:
        volumes: one or more arrays of shape (X, Y, Z) on one grid, scanner units.

    Raises:
        InputError: the mask comes out empty.
        ValueError: no volumes or shapes differ.
    """
    stack = _stack(volumes)
    if is_skull_stripped(volumes):
        mask = (stack > 0).any(axis=0)
        mask = _fill_holes(mask)
    else:
        scaled = []
        for volume in stack:
            positive = volume[volume > 0]
            reference = np.percentile(positive, 99.0) if positive.size else 0.0
            scaled.append(np.clip(volume / reference, 0.0, 1.5) if reference > 0 else np.zeros_like(volume))
        mean = np.mean(scaled, axis=0)
        mask = mean > _otsu_threshold(mean)
        mask = _largest_component(mask)
        mask = _fill_holes(mask)
        for z in range(mask.shape[2]):
            mask[:, :, z] = _fill_holes(mask[:, :, z])
    if not mask.any():
        raise InputError("brain mask is empty: no input voxel is above the background")
    return mask


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes`` run on the mask's bounding box (plus a background margin of one voxel).

    The same result, as everything outside the box is background connected to the border; on a BraTS grid the
    brain's box is about a third of the grid, and the fill took 0.03 s instead of 0.15 s.
    """
    axes = range(mask.ndim)
    occupied = [np.flatnonzero(mask.any(axis=tuple(other for other in axes if other != axis))) for axis in axes]
    if any(index.size == 0 for index in occupied):
        return np.zeros(mask.shape, dtype=bool)
    box = tuple(slice(max(int(index[0]) - 1, 0), int(index[-1]) + 2) for index in occupied)
    filled = np.zeros_like(mask, dtype=bool)
    filled[box] = ndimage.binary_fill_holes(mask[box])
    return filled


def _stack(volumes: Sequence[np.ndarray]) -> np.ndarray:
    arrays = [np.asarray(volume, dtype=np.float32) for volume in volumes]
    if not arrays:
        raise ValueError("need at least one volume")
    shapes = {array.shape for array in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 3:
        raise ValueError(f"volumes must be 3-D and share one shape, got shapes {[a.shape for a in arrays]}")
    return np.stack(arrays)


def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut maximising the between-class variance of the histogram."""
    histogram, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    weight_low = np.cumsum(histogram, dtype=np.float64)
    weight_high = weight_low[-1] - weight_low
    cumulative_mass = np.cumsum(histogram * centres, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_low = cumulative_mass / weight_low
        mean_high = (cumulative_mass[-1] - cumulative_mass) / weight_high
        between = weight_low * weight_high * (mean_low - mean_high) ** 2
    between = np.nan_to_num(between[:-1], nan=-1.0)
    return float(edges[1:][:-1][int(np.argmax(between))])


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))
