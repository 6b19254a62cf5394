"""Synthesis with a trained generator: load it from a checkpoint, run it over the axial slices of a volume, calibrate
its intensities on subjects it never trained on."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ds3kit.checkpoint import load_generator, save_generator  # noqa: F401  (re-exported: the synthesis API)
from ds3kit.data import Session
from ds3kit.models import Generator, for_inference
from ds3kit.models.calibration import MIN_BIN_VOXELS, CalibrationFit, IntensityCalibration
from ds3kit.utils.flips import FLIPS, flip_mean  # noqa: F401  (FLIPS re-exported: the synthesis API)

# A CPU forward pass is fastest when one batch holds about one 240 x 240 slice: its activations then stay in the
# caches. GPUs want more work per launch: 16 slices of 240 x 240. The timings: docs/benchmarks.md, "Synthesis batch
# size on the CPU".
_CPU_PIXELS_PER_BATCH = 240 * 240
_GPU_PIXELS_PER_BATCH = 16 * 240 * 240


def default_batch_size(device: str | torch.device, slice_shape: tuple[int, int]) -> int:
    """Slices per forward pass for synthesis on ``device``: about one 240 x 240 slice's pixels on CPU, 16 elsewhere.

    Any device other than the CPU (CUDA, MPS ...) gets the GPU budget. ``slice_shape`` is one slice's (X, Y).
    """
    if len(slice_shape) != 2:
        raise ValueError(f"slice_shape must be (X, Y), got {tuple(slice_shape)}")
    pixels = max(1, int(slice_shape[0]) * int(slice_shape[1]))
    budget = _CPU_PIXELS_PER_BATCH if torch.device(device).type == "cpu" else _GPU_PIXELS_PER_BATCH
    return max(1, budget // pixels)


def synthesize_volume(
    generator: nn.Module,
    inputs: np.ndarray,
    *,
    brain_mask: np.ndarray | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    channels_last: bool = True,
    flips: str = "none",
    calibrate: bool = True,
) -> np.ndarray:
    """Synthesize T1ce for every axial slice of a normalised session.

    A :class:`~ds3kit.models.Generator` runs as its :func:`~ds3kit.models.for_inference` copy (grouped
    modality encoders), in ``channels_last`` memory format, under ``torch.inference_mode``; slices without a
    brain voxel (when ``brain_mask`` is given) are not computed: they are 0 in the output either way.

    Args:
        generator: maps (B, 3, H, W) in [0, 1] to (B, 1, H, W); any H, W.
        inputs: (3, X, Y, Z) float32 in [0, 1], channels T1, T2, FLAIR; slices along the last axis.
        brain_mask: (X, Y, Z) bool; voxels outside are set to 0, as in the training targets.
        batch_size: slices per forward pass; None picks :func:`default_batch_size` for the device and slice size.
        channels_last: run the convolutions in channels_last (NHWC) memory format.
        flips: test-time flip averaging, a key of :data:`FLIPS`: the mean of the predictions on the flipped slices,
            each flipped back (``"all"``: four passes per slice). Every pass is clamped to [0, 1] before the mean.
        calibrate: apply the generator's intensity calibration (:class:`~ds3kit.models.IntensityCalibration`, the
            identity unless fitted by :func:`calibrate_generator`) to the finished synthesis, inside ``brain_mask``
            when given; False: the network's output as it is.

    Returns:
        (X, Y, Z) float32 synthesized T1ce in the normalised [0, 1] scale.
    """
    if inputs.ndim != 4 or inputs.shape[0] != 3:
        raise ValueError(f"inputs must be (3, X, Y, Z), got shape {inputs.shape}")
    if brain_mask is not None and brain_mask.shape != inputs.shape[1:]:
        raise ValueError(f"brain_mask must be {inputs.shape[1:]}, got shape {brain_mask.shape}")
    device = torch.device(device)
    if batch_size is None:
        batch_size = default_batch_size(device, inputs.shape[1:3])
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if flips not in FLIPS:
        raise ValueError(f"flips must be one of {', '.join(FLIPS)}, got {flips!r}")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if isinstance(generator, Generator):
        generator = for_inference(generator).to(device, memory_format=memory_format)  # a copy: ours to change
    else:
        generator.eval()
    output = np.zeros(inputs.shape[1:], dtype=np.float32)
    if brain_mask is None:
        wanted = np.arange(inputs.shape[-1])
    else:
        brain_mask = brain_mask.astype(bool, copy=False)
        wanted = np.flatnonzero(brain_mask.any(axis=(0, 1)))
    slices = torch.from_numpy(np.moveaxis(inputs, -1, 0)[wanted])  # (Z', 3, X, Y): one contiguous copy
    starts = range(0, len(wanted), batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc="synthesize", unit="batch", disable=not progress, leave=False):
            batch = slices[start : start + batch_size].to(device, non_blocking=True).float()
            prediction = flip_mean(generator, batch, flips, clamp=True, memory_format=memory_format)
            index = wanted[start : start + batch.shape[0]]
            output[..., index] = np.moveaxis(prediction[:, 0].cpu().numpy(), 0, -1)
    if brain_mask is not None:
        output[~brain_mask] = 0.0
    calibration = getattr(generator, "calibration", None)
    if calibrate and isinstance(calibration, IntensityCalibration) and calibration.fitted:
        output = calibration.apply(output, brain_mask)
    return output


def calibrate_generator(
    generator: Generator,
    sessions: Iterable[Session],
    *,
    flips: str = "none",
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    min_voxels: int = MIN_BIN_VOXELS,
) -> CalibrationFit:
    """Fit ``generator.calibration`` on subjects it never trained on (a run's validation subjects); returns the fit.

    Each session (with its real T1ce) is synthesized with ``flips``, the test-time flips the calibration will be
    applied after, uncalibrated, and its brain voxels are counted (:class:`~ds3kit.models.CalibrationFit`); sessions
    stream one at a time. The calibration is reset first, so a refit never stacks on an earlier one; with too few
    voxels (fewer than two bins of ``min_voxels``) it stays the identity.
    """
    generator.calibration.reset()
    fit = CalibrationFit(generator.calibration.source.numel())
    for session in sessions:
        if session.target is None:
            raise ValueError(f"{session.case_id}: calibration needs the real T1ce, the session has none")
        prediction = synthesize_volume(
            generator,
            session.inputs,
            brain_mask=session.brain_mask,
            batch_size=batch_size,
            device=device,
            flips=flips,
            calibrate=False,
        )
        fit.add(prediction, session.target, session.brain_mask)
    apply_calibration_fit(generator, fit, min_voxels=min_voxels)
    return fit


def apply_calibration_fit(generator: Generator, fit: CalibrationFit, *, min_voxels: int = MIN_BIN_VOXELS) -> None:
    """Set ``generator.calibration`` from a finished ``fit`` (counted from the generator's uncalibrated predictions,
    as :func:`calibrate_generator` counts them): its knots, or the identity with too few voxels."""
    generator.calibration.reset()
    knots = fit.knots(min_voxels)
    if knots is not None:
        generator.calibration.set_knots(*knots)
