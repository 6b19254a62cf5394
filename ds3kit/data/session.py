"""Sessions: the T1/T2/FLAIR(/T1ce/seg) of one subject on the T1 grid, normalised to [0, 1]; BraTS layout."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
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
SEG_LABELS = (0, 1, 2, 4)  # the internal convention (BraTS 2018-2021): 1 core, 2 oedema, 4 enhancing tumour

# How a segmentation file labels the enhancing tumour. "brats2020": BraTS 2018-2021, {0, 1, 2, 4}, 4 = enhancing.
# "brats2023": BraTS 2023 and later (GLI, MEN, PED, SSA), {0, 1, 2, 3}, 3 = enhancing, mapped to 4 on reading.
# "auto": "brats2023" when the case's files carry BraTS 2023 names (-t1n, -t1c, -t2w, -t2f), else "brats2020".
LABEL_CONVENTIONS = ("auto", "brats2020", "brats2023")
_CONVENTION_LABELS = {"brats2020": (0, 1, 2, 4), "brats2023": (0, 1, 2, 3)}
_BRATS2023_TOKENS = frozenset({"t1n", "t1c", "t2w", "t2f"})

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
        seg: uint8 (X, Y, Z) BraTS labels in the internal convention {0, 1, 2, 4} (4 = enhancing tumour,
            whatever the file's convention), or None.
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
    label_convention: str = "auto",
) -> Session:
    """Load one session and bring every volume onto the T1 grid through the affines.

    T2, FLAIR and T1ce are resampled trilinearly, seg and mask by nearest neighbour; the grids
    may differ in shape, orientation and field of view (a real clinical session), but must
    overlap. Each modality is then normalised to [0, 1] by its own mean and spread inside the
    brain mask (``mask`` if given, else :func:`brain_mask` of T1/T2/FLAIR), and set to 0 outside.

    Args:
        t1, t2, flair: NIfTI paths (or already loaded :class:`Volume` objects).
        t1ce: the target modality, optional.
        seg: BraTS label map, optional; read in ``label_convention`` and returned in {0, 1, 2, 4}.
        mask: a brain mask (non-zero = brain), optional.
        case_id: defaults to the T1 file name without its modality suffix.
        label_convention: "brats2020" ({0, 1, 2, 4}, 4 = enhancing), "brats2023" ({0, 1, 2, 3}, 3 = enhancing,
            mapped to 4) or "auto": "brats2023" when an input file has a BraTS 2023 name (``-t1n``, ``-t1c``,
            ``-t2w``, ``-t2f``), else "brats2020". See :func:`detect_label_convention`.

    Returns:
        A :class:`Session` on the T1 grid with the T1 affine and header.

    Raises:
        InputError: a file is unusable (see :func:`load_volume`), grids do not overlap, seg labels
            are outside the convention's set (or mix 3 and 4), or the mask is empty.
        ValueError: ``label_convention`` is not one of :data:`LABEL_CONVENTIONS`.
    """
    _check_convention(label_convention)
    reference = _as_volume(t1)
    volumes = {"t1": reference, "t2": _as_volume(t2), "flair": _as_volume(flair)}
    if t1ce is not None:
        volumes["t1ce"] = _as_volume(t1ce)
    for name in ("t2", "flair", "t1ce"):
        if name in volumes:
            volumes[name] = resample_to_reference(volumes[name], reference, order=1)
    if label_convention == "auto":
        named = [source.path if isinstance(source, Volume) else source for source in (t1, t2, flair, t1ce)]
        label_convention = detect_label_convention([Path(path) for path in named if path is not None])
    seg_volume = (
        resample_to_reference(_load_seg(seg, label_convention), reference, order=0) if seg is not None else None
    )
    mask_volume = (
        resample_to_reference(_as_volume(mask, allow_constant=True), reference, order=0) if mask is not None else None
    )
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


def detect_label_convention(files: Iterable[PathLike] | Mapping[str, PathLike]) -> str:
    """The segmentation convention a case's file names imply: "brats2023" or "brats2020".

    "brats2023" when any file name's modality token (the last one, as in :func:`find_brats_files`) is a BraTS 2023
    name: ``t1n``, ``t1c``, ``t2w`` or ``t2f``; otherwise "brats2020" (``_t1``, ``_t1ce``, ``_t2``, ``_flair``).

    Args:
        files: file paths, or a :func:`find_brats_files` mapping (its values are used).
    """
    paths = files.values() if isinstance(files, Mapping) else files
    for path in paths:
        stem = _NIFTI_SUFFIX.sub("", Path(path).name)
        if _TOKEN_SPLIT.split(stem.lower())[-1] in _BRATS2023_TOKENS:
            return "brats2023"
    return "brats2020"


def load_brats_case(case_dir: PathLike, *, with_target: bool = True, label_convention: str = "auto") -> Session:
    """Load one BraTS-layout case folder as a :class:`Session`.

    BraTS promises one voxel grid per case, so the arrays are taken as aligned voxel for voxel
    (no resampling: BraTS headers are known to disagree slightly between modalities) and every
    file must have the T1's shape. The brain mask is the non-zero region of T1/T2/FLAIR.

    Args:
        case_dir: ``<root>/<Case>`` holding the modality files.
        with_target: read the T1ce (paired subject); with False the T1ce is never read, so an
            unpaired subject cannot leak its target.
        label_convention: how the seg labels the enhancing tumour (see :func:`load_session`); "auto" detects it
            from the file names (:func:`detect_label_convention`). The session's seg is always in {0, 1, 2, 4}.

    Raises:
        InputError: see :func:`find_brats_files` and :func:`load_volume`; T1ce missing while
            ``with_target``; files of one case on different grids (all differing files named); seg labels
            outside the convention's set or mixing 3 and 4.
        ValueError: ``label_convention`` is not one of :data:`LABEL_CONVENTIONS`.
    """
    _check_convention(label_convention)
    files = find_brats_files(case_dir)
    if label_convention == "auto":
        label_convention = detect_label_convention(files)
    if with_target and TARGET_MODALITY not in files:
        raise InputError(
            f"{case_dir}: missing modality t1ce ({_EXPECTED_NAMES['t1ce']}.nii[.gz]) needed with_target=True"
        )
    volumes = {name: load_volume(files[name]) for name in INPUT_MODALITIES}
    if with_target:
        volumes[TARGET_MODALITY] = load_volume(files[TARGET_MODALITY])
    seg_volume = _load_seg(files["seg"], label_convention) if "seg" in files else None

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


def _check_convention(label_convention: str) -> None:
    if label_convention not in LABEL_CONVENTIONS:
        raise ValueError(f"label_convention must be one of {', '.join(LABEL_CONVENTIONS)}, got {label_convention!r}")


def _load_seg(source: PathLike | Volume, label_convention: str = "brats2020") -> Volume:
    """Read a seg in ``label_convention`` ("brats2020" or "brats2023") and return it in {0, 1, 2, 4}."""
    volume = _as_volume(source, allow_constant=True)  # a tumour-free seg is all zeros, legitimately
    labels = np.unique(volume.data)
    if 3 in labels and 4 in labels:
        raise InputError(
            f"{volume.name}: segmentation holds both label 3 and label 4; BraTS 2018-2021 marks the enhancing tumour 4 "
            f"and BraTS 2023+ marks it 3, so one file cannot use both"
        )
    allowed = _CONVENTION_LABELS[label_convention]
    unexpected = [float(label) for label in labels if label not in allowed]
    if unexpected:
        shown = ", ".join(f"{label:g}" for label in unexpected[:8])
        more = f" (and {len(unexpected) - 8} more)" if len(unexpected) > 8 else ""
        if label_convention == "brats2020":
            hint = (
                "; a BraTS 2023+ seg (3 = enhancing tumour) needs label_convention='brats2023'" if 3 in labels else ""
            )
        else:
            hint = (
                "; a BraTS 2018-2021 seg (4 = enhancing tumour) needs label_convention='brats2020'"
                if 4 in labels
                else ""
            )
        allowed_text = "{" + ", ".join(map(str, allowed)) + "}"
        raise InputError(
            f"{volume.name}: segmentation labels must be in {allowed_text}, found {shown}{more}"
            f" ({label_convention} convention{hint})"
        )
    if label_convention == "brats2023" and 3 in labels:
        data = volume.data.copy()
        data[data == 3] = 4  # BraTS 2023's enhancing tumour -> the internal (2018-2021) label
        volume = Volume(data, volume.affine, volume.header, volume.path)
    return volume


def _normalised_session(volumes: dict[str, Volume], seg: Volume | None, mask: Volume | None, case_id: str) -> Session:
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
