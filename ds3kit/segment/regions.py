"""BraTS's evaluation regions and their volume-wise Dice, with BraTS's convention for empty regions."""

from __future__ import annotations

import numpy as np

from ds3kit.data.session import SEG_LABELS

# Channel order of every region tensor in ds3kit.segment: nested from the outside in (ET is inside TC inside WT).
REGIONS = ("wt", "tc", "et")
REGION_LABELS: dict[str, tuple[int, ...]] = {
    "wt": (1, 2, 4),  # whole tumour: necrotic / non-enhancing core, oedema, enhancing tumour
    "tc": (1, 4),  # tumour core: whole tumour without the oedema
    "et": (4,),  # enhancing tumour: what T1ce exists to show
}


def seg_to_regions(seg: np.ndarray) -> np.ndarray:
    """BraTS labels -> the three regions.

    Args:
        seg: integer array (...), labels in {0, 1, 2, 4}.

    Returns:
        bool (3, ...), channels in :data:`REGIONS` order (WT, TC, ET).

    Raises:
        ValueError: ``seg`` is not an integer array or holds labels outside {0, 1, 2, 4}.
    """
    seg = np.asarray(seg)
    if not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(f"seg must hold integer BraTS labels, got dtype {seg.dtype}")
    unexpected = np.setdiff1d(np.unique(seg), SEG_LABELS)
    if unexpected.size:
        raise ValueError(f"seg labels must be in {{0, 1, 2, 4}}, got {unexpected.tolist()[:8]}")
    return np.stack([np.isin(seg, REGION_LABELS[name]) for name in REGIONS])


def dice_score(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice ``2 |P & T| / (|P| + |T|)`` of two binary masks over all their voxels.

    BraTS's convention for empty regions: both empty gives 1.0 (nothing to find, nothing found), exactly one empty
    gives 0.0. The same as ``monai.metrics.DiceMetric(ignore_empty=False)``.

    Raises:
        ValueError: the shapes differ or either mask is not boolean.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {pred.shape} and {target.shape}")
    if pred.dtype != bool or target.dtype != bool:
        raise ValueError(f"pred and target must be bool masks, got {pred.dtype} and {target.dtype}")
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(target))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & target)) / total


def region_dice(pred_regions: np.ndarray, true_seg: np.ndarray) -> dict[str, float]:
    """Volume-wise Dice of predicted BraTS regions against a label map.

    Args:
        pred_regions: bool (3, X, Y, Z), channels WT, TC, ET (:data:`REGIONS`), e.g. from
            :func:`~ds3kit.segment.segment_volume`.
        true_seg: integer (X, Y, Z) BraTS labels {0, 1, 2, 4}.

    Returns:
        ``{"dice_et", "dice_tc", "dice_wt"}``, each in [0, 1] by :func:`dice_score` (both empty 1, one empty 0).

    Raises:
        ValueError: shapes that do not match, a non-bool prediction, labels outside {0, 1, 2, 4}.
    """
    pred_regions = np.asarray(pred_regions)
    true_seg = np.asarray(true_seg)
    if pred_regions.ndim != 4 or pred_regions.shape[0] != len(REGIONS) or pred_regions.shape[1:] != true_seg.shape:
        raise ValueError(
            f"pred_regions must be (3, *true_seg.shape) = (3, {', '.join(map(str, true_seg.shape))}), "
            f"got shape {pred_regions.shape}"
        )
    if pred_regions.dtype != bool:
        raise ValueError(f"pred_regions must be bool, got dtype {pred_regions.dtype}")
    true_regions = seg_to_regions(true_seg)
    scores = {
        f"dice_{name}": dice_score(pred_regions[index], true_regions[index]) for index, name in enumerate(REGIONS)
    }
    return {key: scores[key] for key in ("dice_et", "dice_tc", "dice_wt")}
