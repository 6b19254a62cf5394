"""Data: NIfTI volumes, sessions on one grid, BraTS layout, normalisation, the phantom cohort, slice datasets."""

from ds3kit.data.dataset import CohortSplit, SliceDataset, center_crop_or_pad, split_cohort
from ds3kit.data.nifti import Volume, load_volume, resample_to_reference, same_grid, save_volume
from ds3kit.data.normalize import IntensityScaling, brain_mask, fit_intensity_scaling, is_skull_stripped
from ds3kit.data.phantom import (
    PHANTOM_FORMAT_VERSION,
    TISSUE_CONTRASTS,
    case_seed,
    default_cohort,
    make_phantom_case,
    phantom_affine,
    write_phantom_cohort,
)
from ds3kit.data.session import (
    INPUT_MODALITIES,
    SEG_LABELS,
    TARGET_MODALITY,
    Session,
    find_brats_files,
    list_cases,
    load_brats_case,
    load_session,
)

__all__ = [
    "INPUT_MODALITIES",
    "PHANTOM_FORMAT_VERSION",
    "SEG_LABELS",
    "TARGET_MODALITY",
    "TISSUE_CONTRASTS",
    "CohortSplit",
    "IntensityScaling",
    "Session",
    "SliceDataset",
    "Volume",
    "brain_mask",
    "case_seed",
    "center_crop_or_pad",
    "default_cohort",
    "find_brats_files",
    "fit_intensity_scaling",
    "is_skull_stripped",
    "list_cases",
    "load_brats_case",
    "load_session",
    "load_volume",
    "make_phantom_case",
    "phantom_affine",
    "resample_to_reference",
    "same_grid",
    "save_volume",
    "split_cohort",
    "write_phantom_cohort",
]
