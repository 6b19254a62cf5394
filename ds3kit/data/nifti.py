"""NIfTI volumes: read (validated, float32), resample onto a reference grid through the affines, write atomically."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ds3kit.errors import InputError
from ds3kit.utils.atomic import atomic_path

PathLike = str | os.PathLike

# Two affines closer than this (mm, element-wise) describe the same grid: header round-off only.
_SAME_GRID_ATOL = 1e-4


@dataclass
class Volume:
    """One 3-D image in scanner units.

    Attributes:
        data: float32 array, shape (X, Y, Z).
        affine: float64 (4, 4) voxel -> world (mm) matrix.
        header: the NIfTI-1 header it was read with (or the reference's, after resampling).
        path: the file it came from, if any.
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid size (X, Y, Z)."""
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def name(self) -> str:
        """The file name for messages ("<array>" when the volume has no file)."""
        return str(self.path) if self.path is not None else "<array>"


def load_volume(path: PathLike, *, allow_constant: bool = False) -> Volume:
    """Read one 3-D NIfTI image as float32 (header scaling applied).

    The data is read through ``img.dataobj`` so it is decoded once, straight into float32. A 4-D
    image whose trailing dimensions are all 1 is squeezed to 3-D.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        allow_constant: accept a volume whose voxels all share one value (an empty mask or seg is legal).

    Returns:
        A :class:`Volume` with data of shape (X, Y, Z).

    Raises:
        InputError: the file is missing or unreadable, not NIfTI, truncated/corrupt, not 3-D,
            holds NaN/Inf voxels, or is constant (all-zero) while ``allow_constant`` is False.
    """
    file = Path(path)
    if not file.exists():
        raise InputError(f"{file}: file does not exist")
    if file.is_dir():
        raise InputError(f"{file}: is a directory, expected a NIfTI file")
    if not os.access(file, os.R_OK):
        raise InputError(f"{file}: file is not readable (permission denied)")
    try:
        image = nib.load(file)
    except Exception as error:  # nibabel raises many types for non-NIfTI / corrupt headers
        raise InputError(f"{file}: not a readable NIfTI image ({_describe(error)})") from error
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{file}: expected a NIfTI image, got {type(image).__name__}")

    shape = tuple(int(n) for n in image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise InputError(f"{file}: expected a 3-D volume (X, Y, Z), got shape {tuple(image.shape)}")
    if min(shape) < 1:
        raise InputError(f"{file}: empty grid, shape {shape}")

    try:
        data = np.asarray(image.dataobj, dtype=np.float32).reshape(shape)
    except Exception as error:  # truncated gzip: EOFError / zlib.error / OSError / ValueError
        raise InputError(
            f"{file}: could not read the voxel data, file truncated or corrupt ({_describe(error)})"
        ) from error

    finite = np.isfinite(data)
    if not finite.all():
        raise InputError(f"{file}: holds {int(finite.size - finite.sum())} non-finite voxel(s) (NaN or Inf)")
    if not allow_constant and data.size and data.min() == data.max():
        raise InputError(f"{file}: volume is empty (every voxel is {float(data.flat[0])})")

    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{file}: invalid voxel-to-world affine {affine.tolist()}")
    header = image.header if isinstance(image, nib.Nifti1Image) else nib.Nifti1Header.from_header(image.header)
    return Volume(data=data, affine=affine, header=header, path=file)


def same_grid(volume: Volume, reference: Volume) -> bool:
    """True when ``volume`` lies on the reference grid: equal shapes and affines (up to header round-off)."""
    return volume.shape == reference.shape and bool(np.allclose(volume.affine, reference.affine, atol=_SAME_GRID_ATOL))


def resample_to_reference(volume: Volume, reference: Volume, *, order: int = 1) -> Volume:
    """Bring ``volume`` onto the grid of ``reference`` through the two affines (no registration).

    Each reference voxel centre goes to world coordinates through ``reference.affine`` and then to
    a (fractional) voxel of ``volume`` through ``inv(volume.affine)``, where it is interpolated
    (``order`` 1 = trilinear, 0 = nearest neighbour for label maps). Points outside the source
    field of view read 0. When the grids already match, the data is returned as is.

    Args:
        volume: source, data (X', Y', Z').
        reference: the grid to land on, data (X, Y, Z).
        order: spline order, 0 to 5.

    Returns:
        A :class:`Volume` with data (X, Y, Z), the reference's affine and header, the source's path.

    Raises:
        InputError: the two fields of view do not overlap at all.
        ValueError: ``order`` outside 0..5.
    """
    if order not in range(6):
        raise ValueError(f"order must be an integer in 0..5, got {order!r}")
    if same_grid(volume, reference):
        return Volume(volume.data, reference.affine.copy(), reference.header, volume.path)

    reference_to_source = np.linalg.inv(volume.affine) @ reference.affine
    inside = _fraction_inside(reference_to_source, reference.shape, volume.shape)
    if inside == 0.0:
        raise InputError(
            f"{volume.name}: its field of view does not overlap that of {reference.name} "
            f"(shapes {volume.shape} vs {reference.shape}; check the affines)"
        )
    data = ndimage.affine_transform(
        volume.data,
        reference_to_source[:3, :3],
        offset=reference_to_source[:3, 3],
        output_shape=reference.shape,
        order=order,
        mode="constant",
        cval=0.0,
        prefilter=order > 1,
    ).astype(np.float32, copy=False)
    return Volume(data, reference.affine.copy(), reference.header, volume.path)


def save_volume(
    path: PathLike,
    data: np.ndarray,
    affine: np.ndarray,
    header: nib.Nifti1Header | None = None,
    *,
    dtype: type | np.dtype = np.float32,
) -> None:
    """Write a 3-D volume as NIfTI-1, atomically.

    The affine is stored in both the sform and the qform (code 1, scanner, unless the given header
    carries another non-zero code), the on-disk type is ``dtype`` (float32 by default, uint8 suits
    label maps) with no intensity scaling, and the file appears only once completely written.

    Args:
        path: ``.nii`` or ``.nii.gz``; its directory must exist.
        data: (X, Y, Z) array.
        affine: (4, 4) voxel -> world.
        header: a header to copy metadata from (e.g. the reference's), or None.
        dtype: on-disk data type.

    Raises:
        InputError: the output directory does not exist.
        ValueError: ``data`` is not 3-D or not finite, or ``affine`` is not a finite (4, 4) matrix.
    """
    target = Path(path)
    array = np.asarray(data)
    if array.ndim != 3:
        raise ValueError(f"data must be 3-D (X, Y, Z), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"data for {target} holds NaN or Inf")
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise ValueError(f"affine must be a finite (4, 4) matrix, got shape {matrix.shape}")
    if not (target.name.endswith(".nii") or target.name.endswith(".nii.gz")):
        raise ValueError(f"output must end in .nii or .nii.gz, got {target.name}")

    out_header = header.copy() if header is not None else nib.Nifti1Header()
    sform_code = int(out_header["sform_code"]) or 1
    qform_code = int(out_header["qform_code"]) or 1
    image = nib.Nifti1Image(array.astype(dtype, copy=False), matrix, header=out_header)
    image.set_data_dtype(dtype)
    image.set_sform(matrix, code=sform_code)
    image.set_qform(matrix, code=qform_code)
    image.header.set_slope_inter(1.0, 0.0)
    with atomic_path(target) as temporary:
        nib.save(image, temporary)


def _fraction_inside(reference_to_source: np.ndarray, reference_shape: tuple, source_shape: tuple) -> float:
    """Fraction of reference voxel centres that land inside the source grid (voxel extent included)."""
    # The map is affine, so each source coordinate is a sum of three 1-D ramps: broadcast, never build a meshgrid.
    ramps = [np.arange(n, dtype=np.float32) for n in reference_shape]
    inside = np.ones(reference_shape, dtype=bool)
    for axis in range(3):
        row = reference_to_source[axis].astype(np.float32)
        coordinate = (
            row[0] * ramps[0][:, None, None]
            + row[1] * ramps[1][None, :, None]
            + row[2] * ramps[2][None, None, :]
            + row[3]
        )
        inside &= (coordinate > -0.5) & (coordinate < source_shape[axis] - 0.5)
    return float(inside.mean())


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
