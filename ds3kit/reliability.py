r"""The reliability map: where DS3-Net's own discriminator finds the synthesis unlike real T1ce.

DS3-Net weighs its losses by the difficulty map :math:`M = 1 + \beta\,(1 - \mathrm{realness}(D(x, G(x))))`
(:func:`ds3kit.losses.difficulty_map`). Shipped beside a synthesis, its informative part is the patch
**unreliability**

.. math::
    U = 1 - \mathrm{realness}(D^S(x, \hat y)) = (M - 1) / \beta \in [0, 1],

upsampled bilinearly from the discriminator's patch grid to the slice: 0 where D^S takes the patch for real T1ce,
1 where it is sure the patch is synthetic. It is the discriminator's judgement, not a calibrated error bar: a
high value says "this looks unlike the T1ce D^S was trained on", not "the intensity is off by this much".
:func:`error_correlation` measures how far it tracks the actual error, and :func:`edge_map` is the non-learned map
it has to beat (synthesis errors concentrate at edges).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ds3kit.losses.difficulty import difficulty_map
from ds3kit.models import PatchDiscriminator

# D^S's two forms: conditional D(x, y_hat) on T1, T2, FLAIR + T1ce, unconditional D(y_hat) on T1ce alone.
CONDITIONAL_CHANNELS = 4
UNCONDITIONAL_CHANNELS = 1


def reliability_volume(
    prediction: np.ndarray | nn.Module,
    discriminator: PatchDiscriminator,
    inputs: np.ndarray,
    brain_mask: np.ndarray,
    *,
    gan_mode: str = "lsgan",
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    interpolation: str = "bilinear",
) -> np.ndarray:
    r"""Per voxel, the discriminator's patch unreliability :math:`1 - \mathrm{realness}(D)` of a synthesis.

    Each axial slice (last axis) that holds brain is scored by ``discriminator`` in batches under
    ``torch.inference_mode``: ``D(inputs, prediction)`` when it was built for 4 channels (conditional, as DS3-Net's
    D^T and its default D^S), ``D(prediction)`` for 1 channel (the unconditional D^S of the "other subjects"
    setting). The raw patch scores are read as realness in ``gan_mode`` and upsampled to the slice exactly as the
    difficulty map is: the result equals ``(difficulty_map(scores, (X, Y), beta=b, mode=gan_mode,
    interpolation=interpolation) - 1) / b`` for any ``b > 0`` (up to float32 rounding). Voxels outside
    ``brain_mask`` are 0, as are slices without brain (they are not scored).

    The prediction is set to 0 outside the brain before it is scored, as ``ds3kit synthesize`` writes it.

    Args:
        prediction: the synthesized T1ce, (X, Y, Z) in ds3kit's normalised [0, 1] scale, or a generator, which is
            then run over the session first (:func:`ds3kit.inference.synthesize_volume`).
        discriminator: a :class:`~ds3kit.models.PatchDiscriminator` with ``in_channels`` 4 or 1, e.g. from
            :func:`ds3kit.checkpoint.load_discriminator`.
        inputs: (3, X, Y, Z) float32 in [0, 1], T1, T2, FLAIR (a :class:`~ds3kit.data.Session`'s ``inputs``).
        brain_mask: (X, Y, Z) bool.
        gan_mode: the GAN mode the discriminator was trained with (:func:`ds3kit.checkpoint.discriminator_gan_mode`).
        batch_size: slices per forward pass; None: :func:`ds3kit.inference.default_batch_size`.
        interpolation: patch grid -> slice upsampling, as in :func:`~ds3kit.losses.difficulty_map`.

    Returns:
        (X, Y, Z) float32 in [0, 1]; 1 = looks unlike real T1ce.

    Raises:
        ValueError: shapes that do not fit, a discriminator with another channel count, or slices smaller than the
            discriminator's minimum size (``discriminator.min_size`` pixels a side).
    """
    from ds3kit.inference import default_batch_size, synthesize_volume

    if inputs.ndim != 4 or inputs.shape[0] != 3:
        raise ValueError(f"inputs must be (3, X, Y, Z), got shape {inputs.shape}")
    if brain_mask.shape != inputs.shape[1:]:
        raise ValueError(f"brain_mask must be {inputs.shape[1:]}, got shape {brain_mask.shape}")
    channels = getattr(discriminator, "in_channels", None)
    if channels not in (CONDITIONAL_CHANNELS, UNCONDITIONAL_CHANNELS):
        raise ValueError(
            f"discriminator must take {CONDITIONAL_CHANNELS} channels (conditional: T1, T2, FLAIR + T1ce) or "
            f"{UNCONDITIONAL_CHANNELS} (unconditional: T1ce alone), got in_channels={channels}"
        )
    if min(inputs.shape[1:3]) < discriminator.min_size:
        raise ValueError(
            f"slices of {inputs.shape[1]} x {inputs.shape[2]} are smaller than the discriminator's minimum of "
            f"{discriminator.min_size} pixels a side"
        )
    device = torch.device(device)
    brain_mask = brain_mask.astype(bool, copy=False)
    if isinstance(prediction, nn.Module):
        prediction = synthesize_volume(prediction, inputs, brain_mask=brain_mask, batch_size=batch_size, device=device)
    prediction = np.asarray(prediction, dtype=np.float32)
    if prediction.shape != brain_mask.shape:
        raise ValueError(f"prediction must be {brain_mask.shape} (the inputs' grid), got shape {prediction.shape}")
    if batch_size is None:
        batch_size = default_batch_size(device, inputs.shape[1:3])
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    output = np.zeros(brain_mask.shape, dtype=np.float32)
    wanted = np.flatnonzero(brain_mask.any(axis=(0, 1)))
    synthesis = np.moveaxis(np.where(brain_mask, prediction, np.float32(0.0)), -1, 0)[wanted]  # (Z', X, Y)
    conditions = np.moveaxis(inputs, -1, 0)[wanted] if channels == CONDITIONAL_CHANNELS else None  # (Z', 3, X, Y)
    size = tuple(inputs.shape[1:3])
    was_training = discriminator.training
    discriminator.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(wanted), batch_size):
                stop = start + batch_size
                fake = torch.from_numpy(synthesis[start:stop, None]).to(device, torch.float32)
                if conditions is None:
                    scores = discriminator(fake)
                else:
                    scores = discriminator(torch.from_numpy(conditions[start:stop]).to(device, torch.float32), fake)
                # difficulty_map with beta = 1 is 1 + (1 - realness), upsampled: subtract the 1.
                hardness = difficulty_map(scores.float(), size, beta=1.0, mode=gan_mode, interpolation=interpolation)
                hardness = (hardness[:, 0] - 1.0).clamp_(0.0, 1.0)
                output[..., wanted[start:stop]] = np.moveaxis(hardness.cpu().numpy(), 0, -1)
    finally:
        discriminator.train(was_training)
    output[~brain_mask] = 0.0
    return output


def error_correlation(reliability: np.ndarray, prediction: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation between a map and the absolute error ``|prediction - target|`` over the voxels of ``mask``.

    Computed in float64. NaN-safe: when the map or the error is constant over the mask (a Pearson correlation is
    undefined there, ``numpy.corrcoef`` gives NaN) the result is 0.0, "no linear relation", never NaN.

    Args:
        reliability: the map (e.g. :func:`reliability_volume` or :func:`edge_map`), any shape.
        prediction, target: the synthesis and the real T1ce in one set of units, same shape.
        mask: bool (or 0/1) region, same shape, at least one voxel.

    Raises:
        ValueError: shapes differ, the mask is empty, or a value inside it is not finite.
    """
    shapes = {np.shape(reliability), np.shape(prediction), np.shape(target), np.shape(mask)}
    if len(shapes) != 1:
        raise ValueError(
            "reliability, prediction, target and mask must share one shape, got "
            f"{np.shape(reliability)}, {np.shape(prediction)}, {np.shape(target)} and {np.shape(mask)}"
        )
    region = np.asarray(mask).astype(bool)
    if not region.any():
        raise ValueError("mask is empty: no voxel to correlate over")
    values = np.asarray(reliability, dtype=np.float64)[region]
    error = np.abs(np.asarray(prediction, dtype=np.float64)[region] - np.asarray(target, dtype=np.float64)[region])
    if not (np.isfinite(values).all() and np.isfinite(error).all()):
        raise ValueError("reliability, prediction and target must be finite inside the mask")
    if np.ptp(values) == 0 or np.ptp(error) == 0:
        return 0.0
    values -= values.mean()
    error -= error.mean()
    correlation = float(values @ error / np.sqrt((values @ values) * (error @ error)))
    return min(1.0, max(-1.0, correlation))


def edge_map(prediction: np.ndarray, brain_mask: np.ndarray) -> np.ndarray:
    """The non-learned comparison map: the in-plane gradient magnitude of the synthesis, normalised to [0, 1].

    Per axial slice, ``sqrt(gx**2 + gy**2)`` with central differences (``numpy.gradient`` along the first two axes,
    one-sided at the borders), then divided by its maximum inside the brain over the whole volume; 0 outside the
    brain (and everywhere when the synthesis is flat). The prediction is set to 0 outside the brain first, as
    :func:`reliability_volume` does, so the brain's outline counts as an edge.

    Returns:
        (X, Y, Z) float32 in [0, 1].
    """
    if prediction.ndim != 3 or prediction.shape != brain_mask.shape:
        raise ValueError(
            f"prediction and brain_mask must be one (X, Y, Z) shape, got {prediction.shape} and {brain_mask.shape}"
        )
    if min(prediction.shape[:2]) < 2:
        raise ValueError(f"an in-plane gradient needs slices of at least 2 x 2, got shape {prediction.shape}")
    brain = brain_mask.astype(bool, copy=False)
    synthesis = np.where(brain, prediction.astype(np.float64), 0.0)
    gx, gy = np.gradient(synthesis, axis=(0, 1))
    magnitude = np.where(brain, np.hypot(gx, gy), 0.0)
    peak = magnitude.max(initial=0.0)
    if peak > 0:
        magnitude /= peak
    return magnitude.astype(np.float32)
