"""Pseudo-targets and their weights for a distilled student: the arithmetic DS3-Net's student step composes.

Each function is pure (tensors in, tensors out, no module state) and is tested against an independent reference:
the tumour weights of a pixel loss, the paired subjects' per-label levels and the pseudo-targets shifted to them, a
pseudo-target through an intensity calibration, and confidence weights from a teacher's agreement across passes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: The BraTS tumour labels (internal convention): necrotic core, oedema, enhancing tumour.
TUMOUR_LABELS: tuple[int, ...] = (1, 2, 4)
#: The enhancing tumour's label: the region T1ce exists to show (BraTS's ET).
ENHANCING_LABEL = 4
#: The necrotic / non-enhancing core's label: dark in T1ce, inside the rim (with it, BraTS's TC).
CORE_LABEL = 1
#: How :func:`tumour_level_targets` moves a label to its level: its mean (the pattern kept) or every voxel.
TUMOUR_LEVEL_MODES: tuple[str, ...] = ("shift", "replace")


def tumour_weighted(difficulty: Tensor, tumour_mask: Tensor | None, weight: float) -> Tensor:
    """The pixel loss's weights ``M * (1 + (weight - 1) * tumour)``: the tumour's few voxels count ``weight`` times.

    ``tumour_mask`` is the batch's 0/1 (B, 1, H, W) map of seg > 0; without one (a cohort without labels) or at
    ``weight == 1`` the difficulty map is returned unchanged.
    """
    if weight < 0:
        raise ValueError(f"tumour_weight must be >= 0, got {weight}")
    if tumour_mask is None or weight == 1.0:
        return difficulty
    return difficulty * (1.0 + (weight - 1.0) * tumour_mask)


def calibrated_target(prediction: Tensor, brain_mask: Tensor, calibration: nn.Module) -> Tensor:
    """The pseudo-target through the teacher's intensity calibration inside the brain (``brain_mask`` > 0; voxels
    outside keep the prediction), computed in float32 whatever the prediction's dtype (bf16 would round the knots)
    and returned in it. With an unfitted calibration (the identity) the prediction comes back unchanged."""
    with torch.no_grad():
        mapped = calibration(prediction.float()).to(prediction.dtype)
        return torch.where(brain_mask > 0, mapped, prediction)


def agreement_weights(passes: Tensor, brain_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-voxel confidence weights from a teacher's agreement with itself across K passes, and its typical spread.

    ``passes`` is (K, B, 1, H, W), K >= 2 (e.g. :func:`ds3kit.utils.flips.flip_passes`). Per voxel, the spread ``s`` is
    the passes' mean absolute deviation from their mean; per image, ``s_bar`` is the mean of ``s`` inside the brain
    (``brain_mask`` > 0; the whole image without a mask). The weight inside the brain is ``1 / (1 + s / s_bar)``,
    rescaled so that its brain mean is 1 (a slice's L_id keeps its total, moved towards the voxels its teacher agrees
    on); outside the brain, and in an image with no brain voxel, it is 1. Where ``s_bar`` is 0 (every pass agrees)
    every weight is 1. Computed in float64 (passes that agree to the bit then have no spread at all), returned as
    the (B, 1, H, W) float32 weights and the batch's mean ``s_bar`` (a float32 scalar), both detached.
    """
    if passes.dim() != 5 or passes.shape[0] < 2:
        raise ValueError(f"passes must be (K >= 2, B, 1, H, W), got {tuple(passes.shape)}")
    with torch.no_grad():
        values = passes.double()
        spread = (values - values.mean(0)).abs().mean(0)  # (B, 1, H, W)
        if brain_mask is None:
            inside = torch.ones_like(spread)
        elif brain_mask.shape != spread.shape:
            raise ValueError(
                f"brain_mask must have one pass's shape {tuple(spread.shape)}, got {tuple(brain_mask.shape)}"
            )
        else:
            inside = (brain_mask > 0).to(spread.dtype)
        tiny = torch.finfo(spread.dtype).tiny
        count = inside.flatten(1).sum(1).clamp(min=1).view(-1, 1, 1, 1)
        typical = (spread * inside).flatten(1).sum(1).view(-1, 1, 1, 1) / count
        raw = torch.where(typical > 0, 1.0 / (1.0 + spread / typical.clamp(min=tiny)), 1.0)
        scale = (raw * inside).flatten(1).sum(1).view(-1, 1, 1, 1) / count
        weights = torch.where((inside > 0) & (scale > 0), raw / scale.clamp(min=tiny), 1.0)
        return weights.float(), typical.mean().float()


def label_sums(image: Tensor, seg: Tensor) -> tuple[Tensor, Tensor]:
    """Per tumour label (:data:`TUMOUR_LABELS`): the sum of ``image`` over the label's voxels and their count, both
    float64 of shape (len(TUMOUR_LABELS),). ``image`` and ``seg`` are (B, 1, H, W); ``seg`` holds the labels."""
    if image.shape != seg.shape:
        raise ValueError(f"image and seg must have one shape, got {tuple(image.shape)} and {tuple(seg.shape)}")
    masks = torch.stack([seg == label for label in TUMOUR_LABELS])  # (L, B, 1, H, W)
    values = image.detach().to(torch.float64)
    sums = (masks * values).flatten(1).sum(1)
    return sums, masks.flatten(1).sum(1).to(torch.float64)


def tumour_level_targets(prediction: Tensor, seg: Tensor, levels: Tensor, *, mode: str = "shift") -> Tensor:
    """The teacher's pseudo-target with each tumour label moved to the paired subjects' level there.

    ``mode="shift"``: per image ``b`` and label ``k`` of :data:`TUMOUR_LABELS` present in ``seg[b]``, the prediction
    over that label's voxels is shifted by ``levels[k] - mean(prediction[b] over them)``: the teacher's pattern inside
    the label is kept, its level is the one the paired subjects' real T1ce has. ``mode="replace"``: every voxel of the
    label becomes ``levels[k]``: the teacher's pattern there is dropped, and the target is the label map painted at
    the paired levels (the tissue-map prediction inside the tumour). Both ours, docs/method.md. Labels whose level
    is NaN (never seen in a paired batch) and voxels outside the tumour are left as they are.

    Args:
        prediction: (B, 1, H, W) the teacher's prediction on unpaired inputs.
        seg: (B, 1, H, W) BraTS labels (0, 1, 2, 4) of the unpaired subjects.
        levels: (len(TUMOUR_LABELS),) target level per label.
        mode: ``"shift"`` or ``"replace"`` (:data:`TUMOUR_LEVEL_MODES`).
    """
    if mode not in TUMOUR_LEVEL_MODES:
        raise ValueError(f"mode must be one of {', '.join(TUMOUR_LEVEL_MODES)}, got {mode!r}")
    if prediction.shape != seg.shape:
        raise ValueError(
            f"prediction and seg must have one shape, got {tuple(prediction.shape)} and {tuple(seg.shape)}"
        )
    if levels.shape != (len(TUMOUR_LABELS),):
        raise ValueError(f"levels must have shape ({len(TUMOUR_LABELS)},), got {tuple(levels.shape)}")
    # All labels at once and without a host sync (the labels are disjoint, so the shifts add up voxel by voxel).
    values = prediction.detach().float()
    masks = torch.stack([seg == label for label in TUMOUR_LABELS]).float()  # (L, B, 1, H, W)
    if mode == "replace":
        # Each label's voxels set to its level exactly (a level that is NaN leaves its label as it is).
        painted = values
        for mask, level in zip(masks, levels.to(values)):
            painted = torch.where((mask > 0) & ~torch.isnan(level), level, painted)
        return painted.to(prediction.dtype)
    counts = masks.flatten(2).sum(2)  # (L, B)
    means = (masks * values).flatten(2).sum(2) / counts.clamp(min=1)
    shifts = levels.to(values)[:, None] - means
    shifts = torch.where(torch.isnan(shifts) | (counts == 0), 0.0, shifts)
    corrected = values + (masks * shifts.view(*shifts.shape, *([1] * (prediction.dim() - 1)))).sum(0)
    return corrected.to(prediction.dtype)
