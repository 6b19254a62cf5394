"""Intensity calibration of a synthesis: a monotone map from synthesized to real T1ce intensity.

A generator trained on one or two paired subjects places many brain voxels between the tissues' levels, where the
real T1ce of an unseen subject is not: on held-out subjects the mean real intensity at a predicted 0.47-0.52 is
0.45-0.48 (docs/method.md, "Where the brain error is left"). :class:`IntensityCalibration` is a monotone
piecewise-linear map that moves each predicted intensity to the mean real T1ce found at that prediction on subjects
the generator never trained on: the run's validation subjects (:func:`ds3kit.inference.calibrate_generator`). It is
a buffer of every :class:`~ds3kit.models.Generator`, the identity until fitted, applied by
:func:`ds3kit.inference.synthesize_volume` to the finished synthesis (after the test-time flips, inside the brain),
never in ``forward``, so training does not see it. docs/models.md, "Intensity calibration".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

# Knots of every calibration: uniform bins of the predicted intensity over [0, 1].
KNOTS = 64

# A bin with fewer validation voxels than this does not set a knot of its own; the map there is interpolated.
MIN_BIN_VOXELS = 50


class IntensityCalibration(nn.Module):
    """A monotone piecewise-linear map of [0, 1] intensities; the identity until :meth:`set_knots`.

    Buffers ``source`` and ``target`` ((KNOTS,) each): the map passes through the points ``(source[k],
    target[k])``, ``source`` strictly increasing and ``target`` non-decreasing, and is linear between them. Below the
    first knot and above the last it is the identity shifted to meet that knot (slope 1). Outputs are clamped to
    [0, 1]. A state dict without these buffers (a generator saved before calibration existed) loads as the identity.

    Shape:
        - Input: any shape, values in [0, 1]
        - Output: same shape
    """

    source: Tensor
    target: Tensor

    def __init__(self, knots: int = KNOTS) -> None:
        super().__init__()
        if knots < 2:
            raise ValueError(f"knots must be >= 2, got {knots}")
        grid = torch.linspace(0.0, 1.0, knots)
        self.register_buffer("source", grid.clone())
        self.register_buffer("target", grid.clone())

    @property
    def fitted(self) -> bool:
        """Whether the map differs from the identity."""
        return not torch.equal(self.source, self.target)

    def reset(self) -> None:
        """Back to the identity."""
        grid = torch.linspace(0.0, 1.0, self.source.numel(), device=self.source.device)
        self.source.copy_(grid)
        self.target.copy_(grid)

    def set_knots(self, source: np.ndarray | Tensor, target: np.ndarray | Tensor) -> None:
        """Take ``(source, target)`` knots: as many as the buffers hold, ``source`` strictly increasing in [0, 1] and
        ``target`` non-decreasing (what :meth:`CalibrationFit.knots` returns)."""
        source = torch.as_tensor(source, dtype=torch.float64)
        target = torch.as_tensor(target, dtype=torch.float64)
        if source.shape != self.source.shape or target.shape != self.target.shape:
            raise ValueError(
                f"calibration knots must be {tuple(self.source.shape)} each, got {tuple(source.shape)} and "
                f"{tuple(target.shape)}"
            )
        if not bool((source[1:] > source[:-1]).all()) or not bool((target[1:] >= target[:-1]).all()):
            raise ValueError("calibration knots must have strictly increasing sources and non-decreasing targets")
        self.source.copy_(source.to(self.source))
        self.target.copy_(target.to(self.target))

    def forward(self, x: Tensor) -> Tensor:
        source, target = self.source.to(x.dtype), self.target.to(x.dtype)
        right = torch.searchsorted(source, x.contiguous()).clamp(1, source.numel() - 1)
        s0, s1 = source[right - 1], source[right]
        t0, t1 = target[right - 1], target[right]
        inside = t0 + (x - s0) * (t1 - t0) / (s1 - s0)
        below = x + (target[0] - source[0])
        above = x + (target[-1] - source[-1])
        mapped = torch.where(x < source[0], below, torch.where(x > source[-1], above, inside))
        return mapped.clamp(0.0, 1.0)

    def apply(self, prediction: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """The map applied to a synthesized volume (a new array): inside ``mask`` only when given (voxels outside
        keep their value, 0 in a synthesis), everywhere otherwise."""
        out = np.array(prediction, dtype=np.float32, copy=True)
        if not self.fitted:
            return out
        region = np.ones(out.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        with torch.no_grad():
            values = torch.from_numpy(out[region]).to(self.source.device)
            out[region] = self(values).cpu().numpy()
        return out

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        absent = [f"{prefix}{name}" for name in ("source", "target") if f"{prefix}{name}" not in state_dict]
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if len(absent) == 2:
            # Saved before calibration existed: the identity, which is what that generator's synthesis was.
            for key in absent:
                missing_keys.remove(key)
            self.reset()


class CalibrationFit:
    """Accumulates (synthesis, real T1ce) voxel pairs, subject by subject, into the knots of a calibration.

    Predictions fall into :data:`KNOTS` uniform bins over [0, 1]; each bin keeps its voxel count and the float64
    sums of the predicted and the real intensity, so any number of subjects streams through in constant memory.
    :meth:`knots` turns them into the map: each bin with at least ``min_voxels`` voxels gives the point (mean
    prediction, mean real T1ce), the means made non-decreasing by a weighted isotonic regression (pool adjacent
    violators, weights the counts); a bin with fewer voxels takes the map's value at its centre.
    """

    def __init__(self, knots: int = KNOTS) -> None:
        self.bins = knots
        self.count = np.zeros(knots, dtype=np.int64)
        self.sum_prediction = np.zeros(knots, dtype=np.float64)
        self.sum_target = np.zeros(knots, dtype=np.float64)

    @property
    def voxels(self) -> int:
        return int(self.count.sum())

    def add(self, prediction: np.ndarray, target: np.ndarray, mask: np.ndarray) -> None:
        """Count the voxels of ``mask`` (bool, the brain) of one subject's synthesis and real T1ce."""
        if prediction.shape != target.shape or prediction.shape != mask.shape:
            raise ValueError(
                f"prediction, target and mask must have one shape, got {prediction.shape}, {target.shape} and "
                f"{mask.shape}"
            )
        mask = np.asarray(mask, dtype=bool)
        p = np.clip(np.asarray(prediction, dtype=np.float64)[mask], 0.0, 1.0)
        t = np.asarray(target, dtype=np.float64)[mask]
        index = np.minimum((p * self.bins).astype(np.int64), self.bins - 1)
        self.count += np.bincount(index, minlength=self.bins)
        self.sum_prediction += np.bincount(index, weights=p, minlength=self.bins)
        self.sum_target += np.bincount(index, weights=t, minlength=self.bins)

    def knots(self, min_voxels: int = MIN_BIN_VOXELS) -> tuple[np.ndarray, np.ndarray] | None:
        """``(source, target)`` for :meth:`IntensityCalibration.set_knots`, or None when fewer than two bins hold
        ``min_voxels`` voxels (too little to fit: the generator keeps the identity)."""
        kept = self.count >= max(1, min_voxels)
        if int(kept.sum()) < 2:
            return None
        weights = self.count[kept].astype(np.float64)
        means_p = self.sum_prediction[kept] / weights
        means_t = isotonic(self.sum_target[kept] / weights, weights)
        centres = (np.arange(self.bins) + 0.5) / self.bins
        source = centres.copy()
        source[kept] = means_p
        target = _piecewise(source, means_p, means_t)
        target[kept] = means_t
        return source, np.maximum.accumulate(target)


def isotonic(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence nearest to ``values`` in weighted least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, length]
    for value, weight in zip(np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)):
        blocks.append([float(value), float(weight), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            mean, weight, length = blocks.pop()
            previous = blocks[-1]
            total = previous[1] + weight
            previous[0] = (previous[0] * previous[1] + mean * weight) / total
            previous[1] = total
            previous[2] += length
    return np.concatenate([np.full(int(length), mean) for mean, _, length in blocks])


def _piecewise(x: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """:class:`IntensityCalibration`'s map through the knots ``(source, target)`` (float64, without the clamp)."""
    inside = np.interp(x, source, target)
    return np.where(
        x < source[0], x + target[0] - source[0], np.where(x > source[-1], x + target[-1] - source[-1], inside)
    )
