"""Shared fixtures for the data-layer tests: tiny phantom cases on odd grids, NIfTI writers."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ds3kit.data.phantom import make_phantom_case, phantom_affine

SMALL_SHAPE = (33, 37, 19)
TCGA_DIR = Path(__file__).parents[2].parent / "shared" / "data" / "tcga-fg-6692"


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write with plain nibabel (independent of ds3kit's writer)."""
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), path)
    return path


@pytest.fixture(scope="session")
def small_case() -> dict[str, np.ndarray]:
    return make_phantom_case(SMALL_SHAPE, seed=3)


@pytest.fixture
def brats_case_dir(tmp_path: Path, small_case: dict[str, np.ndarray]) -> Path:
    """A BraTS 2020-style case folder with all five files."""
    folder = tmp_path / "BraTS20_Training_007"
    folder.mkdir()
    affine = phantom_affine(SMALL_SHAPE)
    for name, data in small_case.items():
        write_nifti(folder / f"{folder.name}_{name}.nii.gz", data, affine)
    return folder
