"""The paper's downstream metric: a BraTS tumour segmenter, and the Dice of its regions with a synthetic T1ce.

``ds3kit.segment`` trains a 2-D U-Net (MONAI) on the four real modalities of labelled training subjects, and scores
a synthesis by the Dice of the regions it segments with the synthetic T1ce in place of the real one
(docs/metrics.md, "Dice of a tumour segmenter").
"""

from ds3kit.segment.inference import (
    REFERENCE_ROWS,
    check_held_out,
    check_reads_t1ce,
    dice_by_subject,
    reference_t1ce,
    segment_volume,
    session_dice,
)
from ds3kit.segment.model import SEGMENTER_FORMAT, SEGMENTER_MODALITIES, Segmenter, load_segmenter, save_segmenter
from ds3kit.segment.regions import REGION_LABELS, REGIONS, dice_score, region_dice, seg_to_regions
from ds3kit.segment.training import RegionSlices, SegmentationLoss, load_region_slices, train_segmenter

__all__ = [
    "REFERENCE_ROWS",
    "REGIONS",
    "REGION_LABELS",
    "SEGMENTER_FORMAT",
    "SEGMENTER_MODALITIES",
    "RegionSlices",
    "SegmentationLoss",
    "Segmenter",
    "check_held_out",
    "check_reads_t1ce",
    "dice_by_subject",
    "dice_score",
    "load_region_slices",
    "load_segmenter",
    "region_dice",
    "reference_t1ce",
    "save_segmenter",
    "seg_to_regions",
    "segment_volume",
    "session_dice",
    "train_segmenter",
]
