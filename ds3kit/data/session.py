"""Sessions: the T1/T2/FLAIR(/T1ce/seg) of one subject on the T1 grid, normalised to [0, 1]; BraTS layout."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ds3kit.data.nifti import Volume, load_volume, resample_to_reference
from ds3kit.data.normalize import IntensityScaling, brain_mask, fit_intensity_scaling
from ds3kit.errors import InputError

PathLike = str | os.PathLike

INPUT_MODALITIES = ("t1", "t2", "flair")
TARGET_MODALITY = "t1ce"
SEG_LABELS = (0, 1, 2, 4)

# The last name token (split on "_", "-", ".") -> modality. Exact tokens, so "t1" never claims
# a "t1ce"/"t1c"/"t1n"/"t1gd" file. BraTS 2023 names: t1n (native T1), t1c, t2w, t2f (FLAIR).
_MODALITY_TOKENS = {
    "t1": "t1",
    "t1n": "t1",
    "t1ce": "t1ce",
    "t1c": "t1ce",
    "t1gd": "t1ce",
    "t2": "t2",
    "t2w": "t2",
    "flair": "flair",
    "t2f": "flair",
    "seg": "seg",
    "segm": "seg",  # BraTS 2020 case 355: W39_1998.09.19_Segm.nii
}
_EXPECTED_NAMES = {
    "t1": "*_t1 or *-t1n",
    "t2": "*_t2 or *-t2w",
    "flair": "*_flair or *-t2f",
    "t1ce": "*_t1ce, *_t1Gd or *-t1c",
    "seg": "*_seg or *-seg",
}
_NIFTI_SUFFIX = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
_TOKEN_SPLIT = re.compile(r"[_\-.]")


@dataclass
class Session:
    """One subject, every volume on the T1 grid.

    Attributes:
        case_id: subject name.
        inputs: float32 (3, X, Y, Z) in [0, 1], order t1, t2, flair; 0 outside the brain mask.
        target: float32 (X, Y, Z) normalised T1ce, or None (unpaired subject / no T1ce).
        seg: uint8 (X, Y, Z) BraTS labels {0, 1, 2, 4}, or None.
        brain_mask: bool (X, Y, Z).
        affine: float64 (4, 4), the T1 affine (write outputs with it).
        header: the T1 header.
        scalings: per modality ("t1", "t2", "flair", and "t1ce" when loaded), the map to undo
            normalisation: ``scalings["t1ce"].denormalize(prediction)`` gives scanner units.
    """

    case_id: str
    inputs: np.ndarray
    target: np.ndarray | None
    seg: np.ndarray | None
    brain_mask: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    scalings: dict[str, IntensityScaling] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The T1 grid (X, Y, Z)."""
        return tuple(self.brain_mask.shape)  # type: ignore[return-value]

    @property
    def tumour_mask(self) -> np.ndarray:
        """bool (X, Y, Z): seg > 0, all False when there is no seg."""
        if self.seg is None:
            return np.zeros(self.shape, dtype=bool)
        return self.seg > 0


def load_session(
    t1: PathLike | Volume,
    t2: PathLike | Volume,
    flair: PathLike | Volume,
    *,
    t1ce: PathLike | Volume | None = None,
    seg: PathLike | Volume | None = None,
    mask: PathLike | Volume | None = None,
    case_id: str | None = None,
) -> Session:
    """Load one session and bring every volume onto the T1 grid through the affines.

    T2, FLAIR and T1ce are resampled trilinearly, seg and mask by nearest neighbour; the grids
    may differ in shape, orientation and field of view (a real clinical session), but must
    overlap. Each modality is then normalised to [0, 1] by its own robust percentiles inside the
    brain mask (``mask`` if given, else :func:`brain_mask` of T1/T2/FLAIR), and set to 0 outside.

    Args:
        t1, t2, flair: NIfTI paths (or already loaded :class:`Volume` objects).
        t1ce: the target modality, optional.
        seg: BraTS label map {0, 1, 2, 4}, optional.
        mask: a brain mask (non-zero = brain), optional.
        case_id: defaults to the T1 file name without its modality suffix.

    Returns:
        A :class:`Session` on the T1 grid with the T1 affine and header.

    Raises:
        InputError: a file is unusable (see :func:`load_volume`), grids do not overlap, seg labels
            are outside {0, 1, 2, 4}, or the mask is empty.
    """
    reference = _as_volume(t1)
    volumes = {"t1": reference, "t2": _as_volume(t2), "flair": _as_volume(flair)}
    if t1ce is not None:
        volumes["t1ce"] = _as_volume(t1ce)
    for name in ("t2", "flair", "t1ce"):
        if name in volumes:
            volumes[name] = resample_to_reference(volumes[name], reference, order=1)
    seg_volume = resample_to_reference(_load_seg(seg), reference, order=0) if seg is not None else None
    mask_volume = resample_to_reference(_as_volume(mask, allow_constant=True), reference, order=0) if mask is not None else None
    return _normalised_session(volumes, seg_volume, mask_volume, case_id or _case_id_from(reference))


def find_brats_files(case_dir: PathLike) -> dict[str, Path]:
    """Find the modality files of one BraTS-layout case folder.

    Recognises BraTS 2018-2021 names (``<case>_t1.nii.gz``, ``_t1ce``, ``_t2``, ``_flair``,
    ``_seg``; also ``_t1Gd``, ``.nii``, any letter case, case 355's ``..._Segm.nii``) and BraTS
    2023 names (``<case>-t1n``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg``). The modality is the last
    token of the name, so "t1" never matches a T1ce file.

    Returns:
        ``{"t1", "t2", "flair"}`` always, plus ``"t1ce"`` and ``"seg"`` when present; key order
        t1, t2, flair, t1ce, seg.

    Raises:
        InputError: not a folder, a required modality is missing (named), or two files claim one modality.
    """
    folder = Path(case_dir)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a case folder (does not exist or is not a directory)")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue  # hidden files, e.g. macOS "._" resource forks next to real volumes
        stem = _NIFTI_SUFFIX.sub("", path.name)
        if stem == path.name:
            continue
        modality = _MODALITY_TOKENS.get(_TOKEN_SPLIT.split(stem.lower())[-1])
        if modality is None:
            continue
        if modality in found:
            raise InputError(f"{folder}: two files for {modality}: {found[modality].name} and {path.name}")
        found[modality] = path
    missing = [name for name in INPUT_MODALITIES if name not in found]
    if missing:
        expected = "; ".join(f"{name} ({_EXPECTED_NAMES[name]}.nii[.gz])" for name in missing)
        raise InputError(f"{folder}: missing modality {', '.join(missing)}: no file named {expected}")
    order = (*INPUT_MODALITIES, TARGET_MODALITY, "seg")
    return {name: found[name] for name in order if name in found}


def load_brats_case(case_dir: PathLike, *, with_target: bool = True) -> Session:
    """Load one BraTS-layout case folder as a :class:`Session`.

    BraTS promises one voxel grid per case, so the arrays are taken as aligned voxel for voxel
    (no resampling: BraTS headers are known to disagree slightly between modalities) and every
    file must have the T1's shape. The brain mask is the non-zero region of T1/T2/FLAIR.

    Args:
        case_dir: ``<root>/<Case>`` holding the modality files.
        with_target: read the T1ce (paired subject); with False the T1ce is never read, so an
            unpaired subject cannot leak its target.

    Raises:
        InputError: see :func:`find_brats_files` and :func:`load_volume`; T1ce missing while
            ``with_target``; files of one case on different grids (all differing files named).
    """
    files = find_brats_files(case_dir)
    if with_target and TARGET_MODALITY not in files:
        raise InputError(f"{case_dir}: missing modality t1ce ({_EXPECTED_NAMES['t1ce']}.nii[.gz]) needed with_target=True")
    volumes = {name: load_volume(files[name]) for name in INPUT_MODALITIES}
    if with_target:
        volumes[TARGET_MODALITY] = load_volume(files[TARGET_MODALITY])
    seg_volume = _load_seg(files["seg"]) if "seg" in files else None

    reference = volumes["t1"]
    others = [*volumes.values(), *([seg_volume] if seg_volume is not None else [])]
    differing = [volume for volume in others if volume.shape != reference.shape]
    if differing:
        details = ", ".join(f"{volume.path.name} {volume.shape}" for volume in differing)  # type: ignore[union-attr]
        raise InputError(
            f"{case_dir}: BraTS files of one case must share one grid, but {details} differ from "
            f"{reference.path.name} {reference.shape}"  # type: ignore[union-attr]
        )
    for volume in others:
        volume.affine = reference.affine
    return _normalised_session(volumes, seg_volume, None, Path(case_dir).name)


def list_cases(root: PathLike) -> list[Path]:
    """Case folders under a BraTS-layout root, sorted by name.

    A case folder is a non-hidden sub-folder holding at least one ``.nii``/``.nii.gz`` file; other
    entries (``name_mapping.csv``, ``survival_info.csv``, ...) are ignored.

    Raises:
        InputError: ``root`` is not a folder or holds no case folder.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a data folder (does not exist or is not a directory)")
    cases = [
        path
        for path in sorted(folder.iterdir())
        if path.is_dir() and not path.name.startswith(".") and any(_NIFTI_SUFFIX.search(f.name) for f in path.iterdir())
    ]
    if not cases:
        raise InputError(f"{folder}: no case folders (sub-folders holding .nii/.nii.gz files)")
    return cases


def _as_volume(source: PathLike | Volume, *, allow_constant: bool = False) -> Volume:
    return source if isinstance(source, Volume) else load_volume(source, allow_constant=allow_constant)


def _load_seg(source: PathLike | Volume) -> Volume:
    volume = _as_volume(source, allow_constant=True)  # a tumour-free seg is all zeros, legitimately
    labels = np.unique(volume.data)
    unexpected = [float(label) for label in labels if label not in SEG_LABELS]
    if unexpected:
        shown = ", ".join(f"{label:g}" for label in unexpected[:8])
        more = f" (and {len(unexpected) - 8} more)" if len(unexpected) > 8 else ""
        raise InputError(f"{volume.name}: segmentation labels must be in {{0, 1, 2, 4}}, found {shown}{more}")
    return volume


def _normalised_session(
    volumes: dict[str, Volume], seg: Volume | None, mask: Volume | None, case_id: str
) -> Session:
    reference = volumes["t1"]
    if mask is not None:
        brain = mask.data > 0
        if not brain.any():
            raise InputError(f"{mask.name}: brain mask is empty after resampling onto the T1 grid")
    else:
        brain = brain_mask([volumes[name].data for name in INPUT_MODALITIES])

    scalings: dict[str, IntensityScaling] = {}
    normalised: dict[str, np.ndarray] = {}
    for name, volume in volumes.items():
        try:
            scalings[name] = fit_intensity_scaling(volume.data, brain)
        except InputError as error:
            raise InputError(f"{volume.name}: {error}") from error
        image = scalings[name].normalize(volume.data)
        image[~brain] = 0.0
        normalised[name] = image
    return Session(
        case_id=case_id,
        inputs=np.stack([normalised[name] for name in INPUT_MODALITIES]),
        target=normalised.get(TARGET_MODALITY),
        seg=np.rint(seg.data).astype(np.uint8) if seg is not None else None,
        brain_mask=brain,
        affine=reference.affine.copy(),
        header=reference.header,
        scalings=scalings,
    )


def _case_id_from(volume: Volume) -> str:
    if volume.path is None:
        return "case"
    stem = _NIFTI_SUFFIX.sub("", volume.path.name)
    tokens = re.split(r"([_\-.])", stem)
    if len(tokens) >= 3 and tokens[-1].lower() in _MODALITY_TOKENS:
        return "".join(tokens[:-2]) or stem
    return stem
