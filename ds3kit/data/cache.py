"""A preprocessed on-disk cache of BraTS-layout cases, read back through memory maps.

Preprocessing (:func:`preprocess_cases`, ``ds3kit preprocess``) loads each case once as :func:`load_brats_case`
does (T1 grid, per-modality z-score normalisation to [0, 1], brain mask, seg in {0, 1, 2, 4}), crops it to the
bounding box of the brain and the tumour, and writes plain ``.npy`` files plus a ``case.json`` manifest:

=================  ============================  =======================================================
file               dtype, shape                  what
=================  ============================  =======================================================
``inputs.npy``     float16 (Zc, 3, Xc, Yc)       t1, t2, flair, normalised, 0 outside the brain
``target.npy``     float16 (Zc, 1, Xc, Yc)       normalised T1ce (only when the case has one)
``brain_mask.npy`` bool (Zc, Xc, Yc)             the brain mask
``seg.npy``        uint8 (Zc, Xc, Yc)            labels {0, 1, 2, 4} (only when the case has a seg)
``case.json``      JSON                          grid, crop box, scalings, affine, header, per-slice brain counts, sources
=================  ============================  =======================================================

Arrays are slice-major (axial slice first), so one training slice is one contiguous run of bytes: a random slice
read through ``np.load(mmap_mode="r")`` touches only that slice's pages, and the OS page cache that holds them is
shared by every DataLoader worker and every torchrun rank on the node. float16 keeps values in [0, 1] within
2**-12 (about 2.4e-4) of the float32 normalisation, under the 1e-3 this cache promises.

An entry is named by the case folder, the preprocessing options and the size and modification time of every
source file; a changed file or option therefore misses the cache and rebuilds that case alone (the superseded
entry is removed). Each entry is written into a hidden temporary folder and renamed into place, so a killed
preprocessing leaves no partial entry, and running it again redoes only the cases that were not finished.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ds3kit.data.normalize import IntensityScaling
from ds3kit.data.session import (
    LABEL_CONVENTIONS,
    TARGET_MODALITY,
    Session,
    detect_label_convention,
    find_brats_files,
    load_brats_case,
)
from ds3kit.errors import InputError
from ds3kit.utils.atomic import fsync_dir

PathLike = str | os.PathLike

# Bump when what an entry holds or how it is computed changes: entries of another version are never reused.
CACHE_FORMAT_VERSION = 2  # 2: sessions normalised by the brain's z-score (ds3kit.data.normalize), not percentiles
# The largest difference between a cached value and the float32 normalisation (values in [0, 1], float16).
CACHE_TOLERANCE = 2.0**-12
MANIFEST = "case.json"
_PARTIAL_SUFFIX = ".partial"


def default_cache_dir() -> Path:
    """``$DS3KIT_CACHE/preprocessed`` (``~/.cache/ds3kit/preprocessed`` without the variable)."""
    return Path(os.environ.get("DS3KIT_CACHE") or Path.home() / ".cache" / "ds3kit") / "preprocessed"


# --------------------------------------------------------------------------------------------------- reading
class CachedCase:
    """One preprocessed case: its manifest, and its arrays opened lazily as read-only memory maps.

    A pickled copy (a DataLoader worker under the spawn start method) carries the manifest only and maps the
    files again on first use, so no process ever holds a private copy of the arrays.

    Attributes:
        folder: the entry's folder.
        case_id: the case folder's name.
        shape: the T1 grid (X, Y, Z).
        box: the stored crop ``((x0, x1), (y0, y1), (z0, z1))`` of the grid; everything outside it is 0.
        has_target, has_seg: whether the case has a T1ce / a segmentation.
        brain_counts: brain voxels per axial slice of the full grid, length Z.
        scalings: per modality, the map to undo the normalisation.
        label_convention: the seg convention the source file was read in ("brats2020" or "brats2023").
    """

    def __init__(self, folder: PathLike) -> None:
        self.folder = Path(folder)
        try:
            manifest = json.loads((self.folder / MANIFEST).read_text())
        except (OSError, ValueError) as error:
            raise InputError(
                f"{self.folder}: not a ds3kit preprocessed case ({type(error).__name__}: {error})"
            ) from None
        if manifest.get("format_version") != CACHE_FORMAT_VERSION:
            raise InputError(
                f"{self.folder}: cache format {manifest.get('format_version')}, expected {CACHE_FORMAT_VERSION}"
            )
        self.manifest = manifest
        self.case_id: str = manifest["case_id"]
        self.shape: tuple[int, int, int] = tuple(manifest["shape"])  # type: ignore[assignment]
        self.box: tuple[tuple[int, int], ...] = tuple(tuple(pair) for pair in manifest["box"])
        self.has_target: bool = "target" in manifest["arrays"]
        self.has_seg: bool = "seg" in manifest["arrays"]
        self.brain_counts = np.asarray(manifest["brain_counts"], dtype=np.int64)
        self.scalings = {name: IntensityScaling(*values) for name, values in manifest["scalings"].items()}
        self.label_convention: str = manifest["label_convention"]
        self._arrays: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = {}  # re-mapped in the receiving process
        return state

    def __repr__(self) -> str:
        return f"CachedCase({self.case_id!r}, shape={self.shape}, box={self.box}, folder={str(self.folder)!r})"

    @property
    def brain_fractions(self) -> np.ndarray:
        """float64 (Z,): the brain fraction of each axial slice of the full grid (as ``brain_mask.mean((0, 1))``)."""
        return self.brain_counts / float(self.shape[0] * self.shape[1])

    def array(self, name: str) -> np.ndarray:
        """The stored (cropped, slice-major) array ``name`` as a read-only memory map."""
        if name not in self._arrays:
            if name not in self.manifest["arrays"]:
                raise KeyError(f"{self.case_id}: no cached array {name!r} (has {', '.join(self.manifest['arrays'])})")
            self._arrays[name] = np.load(self.folder / f"{name}.npy", mmap_mode="r")
        return self._arrays[name]

    def stored_slice(self, name: str, z: int) -> np.ndarray | None:
        """Slice ``z`` (a full-grid index) of array ``name`` as stored (cropped), or None outside the crop box."""
        z0, z1 = self.box[2]
        if not z0 <= z < z1:
            return None
        return self.array(name)[z - z0]

    def session(self, *, with_target: bool = True) -> Session:
        """The case as a :class:`Session` on its full grid, float32 (within :data:`CACHE_TOLERANCE` of a direct load).

        Raises:
            InputError: ``with_target`` while the case has no T1ce.
        """
        if with_target and not self.has_target:
            raise InputError(f"case {self.case_id}: with_target=True but the cached case has no T1ce ({self.folder})")
        inputs = self._full("inputs", 3, np.float32)
        target = self._full("target", 1, np.float32)[0] if with_target else None
        brain = self._full("brain_mask", None, bool)
        seg = self._full("seg", None, np.uint8) if self.has_seg else None
        scalings = {name: value for name, value in self.scalings.items() if with_target or name != TARGET_MODALITY}
        header = nib.Nifti1Header(binaryblock=base64.b64decode(self.manifest["header"]))
        return Session(
            case_id=self.case_id,
            inputs=inputs,
            target=target,
            seg=seg,
            brain_mask=brain,
            affine=np.asarray(self.manifest["affine"], dtype=np.float64),
            header=header,
            scalings=scalings,
        )

    def _full(self, name: str, channels: int | None, dtype: Any) -> np.ndarray:
        """Array ``name`` on the full grid, channel-first (C, X, Y, Z) or (X, Y, Z)."""
        stored = self.array(name)  # (Zc, C, Xc, Yc) or (Zc, Xc, Yc)
        (x0, x1), (y0, y1), (z0, z1) = self.box
        lead = () if channels is None else (channels,)
        full = np.zeros((*lead, *self.shape), dtype=dtype)
        order = (1, 2, 3, 0) if channels is not None else (1, 2, 0)
        full[..., x0:x1, y0:y1, z0:z1] = np.transpose(stored, order)
        return full


def open_cached_case(folder: PathLike) -> CachedCase:
    """Open one entry folder of the cache (see :class:`CachedCase`)."""
    return CachedCase(folder)


class CachedSessions(Sequence):
    """A lazy sequence of :class:`Session` objects over cached cases: each one is built from the cache when indexed
    and not kept, so evaluating over it holds one volume at a time."""

    def __init__(self, cases: Sequence[CachedCase], *, with_target: bool = True) -> None:
        self.cases = list(cases)
        self.with_target = bool(with_target)
        if self.with_target:
            missing = [case.case_id for case in self.cases if not case.has_target]
            if missing:
                raise InputError(f"with_target=True but cases {', '.join(missing)} have no T1ce")

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return CachedSessions(self.cases[index], with_target=self.with_target)
        return self.cases[index].session(with_target=self.with_target)

    def __iter__(self) -> Iterator[Session]:
        for case in self.cases:
            yield case.session(with_target=self.with_target)


class CachedSliceDataset(Dataset):
    """Axial training slices read from preprocessed cases through memory maps; the items of :class:`SliceDataset`.

    Nothing is loaded at construction but the manifests: an item reads one stored slice per array (its own pages
    only) and places it on the ``image_size`` canvas exactly where :func:`center_crop_or_pad` of the full slice
    would, in float32. Values differ from :class:`SliceDataset`'s by at most :data:`CACHE_TOLERANCE`; the masks
    are exact.

    Args:
        cases: :class:`CachedCase` objects (see :func:`preprocess_cases`) or entry folders.
        with_target: expose the normalised T1ce as ``"target"`` (every case must have one); with False no item has
            a ``"target"`` key and the T1ce file is never mapped.
        image_size: centre-crop / zero-pad each slice to ``image_size x image_size``; None keeps (X, Y).
        min_brain_fraction: in [0, 1]; slices whose brain fraction is lower are skipped.

    Items: ``"inputs"`` float32 (3, H, W), ``"target"`` float32 (1, H, W) only with ``with_target``,
    ``"brain_mask"``, ``"tumour_mask"`` and ``"seg"`` (labels 0, 1, 2, 4) float32 (1, H, W), ``"case_index"`` and
    ``"slice_index"`` ints.
    """

    def __init__(
        self,
        cases: Sequence[CachedCase | PathLike],
        *,
        with_target: bool,
        image_size: int | None = None,
        min_brain_fraction: float = 0.01,
    ) -> None:
        if not 0.0 <= min_brain_fraction <= 1.0:
            raise ValueError(f"min_brain_fraction must be in [0, 1], got {min_brain_fraction}")
        if image_size is not None and int(image_size) < 1:
            raise ValueError(f"image_size must be a positive int or None, got {image_size}")
        self.cases = [case if isinstance(case, CachedCase) else CachedCase(case) for case in cases]
        self.with_target = bool(with_target)
        self.image_size = None if image_size is None else int(image_size)
        self.min_brain_fraction = float(min_brain_fraction)
        if self.with_target:
            missing = [case.case_id for case in self.cases if not case.has_target]
            if missing:
                raise InputError(f"with_target=True but cases {', '.join(missing)} have no T1ce")
        self.index: list[tuple[int, int]] = []
        for case_index, case in enumerate(self.cases):
            kept = np.flatnonzero(case.brain_fractions >= self.min_brain_fraction)
            self.index.extend((case_index, int(z)) for z in kept)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def sessions(self) -> CachedSessions:
        """The cases as a lazy sequence of sessions (built on indexing, one at a time)."""
        return CachedSessions(self.cases, with_target=self.with_target)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        case_index, z = self.index[index]
        case = self.cases[case_index]
        height = self.image_size or case.shape[0]
        width = self.image_size or case.shape[1]
        window = _canvas_window(case, height, width)
        if case.has_seg:
            seg = _place(case, "seg", z, None, height, width, window)
        else:
            seg = torch.zeros(1, height, width)
        item: dict[str, torch.Tensor | int] = {  # SliceDataset's keys, in its order
            "inputs": _place(case, "inputs", z, 3, height, width, window),
            "brain_mask": _place(case, "brain_mask", z, None, height, width, window),
            "tumour_mask": (seg > 0).float(),
            "seg": seg,
            "case_index": case_index,
            "slice_index": z,
        }
        if self.with_target:
            item["target"] = _place(case, "target", z, 1, height, width, window)
        return item


def _canvas_window(case: CachedCase, height: int, width: int) -> tuple[slice, slice, slice, slice] | None:
    """Where the stored crop lands on the (height, width) canvas: (canvas rows, canvas cols, stored rows, stored cols).

    :func:`center_crop_or_pad` maps canvas index ``o`` to full-grid index ``o + shift``, with
    ``shift = (n - size) // 2`` when cropping and ``-((size - n) // 2)`` when padding.
    """
    pieces = []
    for axis, size in ((0, height), (1, width)):
        n = case.shape[axis]
        shift = (n - size) // 2 if n >= size else -((size - n) // 2)
        lo, hi = case.box[axis]
        first, last = max(0, lo - shift), min(size, hi - shift)
        if first >= last:
            return None
        pieces.append((slice(first, last), slice(first + shift - lo, last + shift - lo)))
    (rows, stored_rows), (cols, stored_cols) = pieces
    return rows, cols, stored_rows, stored_cols


def _place(
    case: CachedCase,
    name: str,
    z: int,
    channels: int | None,
    height: int,
    width: int,
    window: tuple[slice, slice, slice, slice] | None,
    *,
    positive: bool = False,
) -> torch.Tensor:
    canvas = np.zeros((channels or 1, height, width), dtype=np.float32)
    stored = case.stored_slice(name, z) if window is not None else None
    if stored is not None:
        rows, cols, stored_rows, stored_cols = window  # type: ignore[misc]
        part = stored[..., stored_rows, stored_cols]
        canvas[:, rows, cols] = part > 0 if positive else part
    return torch.from_numpy(canvas)


# --------------------------------------------------------------------------------------------------- writing
@dataclass
class PreprocessResult:
    """What :func:`preprocess_cases` found and did.

    Attributes:
        cases: every case's entry, in the order the case folders were given.
        built: case folders preprocessed by this call.
        reused: case folders whose entry was already complete.
        cache_dir: the cache folder.
    """

    cases: list[CachedCase]
    built: list[Path] = field(default_factory=list)
    reused: list[Path] = field(default_factory=list)
    cache_dir: Path | None = None
    _by_source: dict[Path, CachedCase] = field(default_factory=dict, repr=False)

    def __getitem__(self, case_dir: PathLike) -> CachedCase:
        """The entry of one of the given case folders."""
        return self._by_source[Path(case_dir)]

    def select(self, case_dirs: Sequence[PathLike]) -> list[CachedCase]:
        """The entries of some of the given case folders, in that order."""
        return [self[case] for case in case_dirs]


def case_fingerprint(case_dir: PathLike, *, label_convention: str = "auto") -> dict[str, Any]:
    """What an entry depends on: the format version, the options and each source file's path, size and mtime.

    Raises:
        InputError: see :func:`find_brats_files`.
        ValueError: ``label_convention`` is not one of :data:`LABEL_CONVENTIONS`.
    """
    if label_convention not in LABEL_CONVENTIONS:
        raise ValueError(f"label_convention must be one of {', '.join(LABEL_CONVENTIONS)}, got {label_convention!r}")
    folder = Path(case_dir)
    files = find_brats_files(folder)
    resolved = detect_label_convention(files) if label_convention == "auto" else label_convention
    sources = {}
    for modality, path in files.items():
        try:
            stat = path.stat()
        except OSError as error:
            raise InputError(f"{path}: cannot read the file's size and time ({error.strerror})") from None
        sources[modality] = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "options": {"label_convention": resolved, "dtype": "float16"},
        "source": str(folder.resolve()),
        "files": sources,
    }


def entry_name(fingerprint: dict[str, Any]) -> str:
    """``<case>-<source and options hash>-<files hash>``: one name per source folder, options and file versions."""
    case = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(fingerprint["source"]).name)[:80] or "case"
    stable = {key: fingerprint[key] for key in ("format_version", "options", "source")}
    return f"{case}-{_digest(stable, 10)}-{_digest(fingerprint['files'], 10)}"


def preprocess_cases(
    cases: Sequence[PathLike],
    *,
    cache_dir: PathLike | None = None,
    label_convention: str = "auto",
    workers: int = 0,
    progress: bool = True,
) -> PreprocessResult:
    """Preprocess BraTS-layout case folders into the cache (or find them there), and open every entry.

    Cases whose entry is complete and current are reused; the others are loaded with :func:`load_brats_case`
    (T1ce included when present) and written atomically, ``workers`` at a time in separate processes (0 or 1: in
    this process). Every case is attempted before any error is raised, so one run names every bad case; the good
    ones stay cached.

    Args:
        cases: case folders.
        cache_dir: the cache folder; default :func:`default_cache_dir`.
        label_convention: the seg convention, see :func:`ds3kit.data.load_brats_case`.
        workers: preprocessing processes.
        progress: show a progress bar (cases per second).

    Raises:
        InputError: one or more cases cannot be used; one line naming each of them and its problem.
        ValueError: ``workers`` is negative or ``label_convention`` unknown.
    """
    if int(workers) < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(root)
    folders = [Path(case) for case in cases]
    if len(set(folders)) != len(folders):
        raise ValueError("cases holds duplicate paths")

    errors: dict[Path, str] = {}
    names: dict[Path, str] = {}
    todo: list[tuple[Path, dict[str, Any]]] = []
    result = PreprocessResult(cases=[], cache_dir=root)
    for folder in folders:
        try:
            fingerprint = case_fingerprint(folder, label_convention=label_convention)
        except InputError as error:
            errors[folder] = str(error)
            continue
        names[folder] = entry_name(fingerprint)
        if (root / names[folder] / MANIFEST).is_file():
            result.reused.append(folder)
        else:
            todo.append((folder, fingerprint))

    bar = tqdm(
        total=len(folders),
        initial=len(folders) - len(todo),
        desc="preprocess",
        unit="case",
        disable=not progress or not todo,
        dynamic_ncols=True,
    )
    try:
        if int(workers) <= 1:
            for folder, fingerprint in todo:
                _record(folder, lambda f=folder, p=fingerprint: build_entry(f, p, root), result, errors)
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=int(workers), mp_context=get_context("spawn")) as pool:
                pending: dict[Future, Path] = {pool.submit(build_entry, f, p, root): f for f, p in todo}
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        _record(pending.pop(future), future.result, result, errors)
                        bar.update(1)
    finally:
        bar.close()

    if errors:
        listed = " | ".join(errors[folder] for folder in folders if folder in errors)
        raise InputError(f"{len(errors)} of {len(folders)} case(s) cannot be used: {listed}")
    for folder in folders:
        case = CachedCase(root / names[folder])
        result.cases.append(case)
        result._by_source[folder] = case
    return result


def _record(folder: Path, build, result: PreprocessResult, errors: dict[Path, str]) -> None:
    try:
        build()
    except InputError as error:
        errors[folder] = str(error)
    else:
        result.built.append(folder)


def build_entry(case_dir: PathLike, fingerprint: dict[str, Any], cache_dir: PathLike) -> Path:
    """Preprocess one case into ``cache_dir`` (atomically) and return its entry folder; see :func:`preprocess_cases`.

    Raises:
        InputError: the case cannot be used (see :func:`load_brats_case`).
    """
    root = Path(cache_dir)
    name = entry_name(fingerprint)
    final = root / name
    folder = Path(case_dir)
    has_target = TARGET_MODALITY in fingerprint["files"]
    session = load_brats_case(
        folder, with_target=has_target, label_convention=fingerprint["options"]["label_convention"]
    )

    occupied = session.brain_mask if session.seg is None else session.brain_mask | (session.seg > 0)
    box = []
    for axis in range(3):
        present = np.flatnonzero(occupied.any(axis=tuple(other for other in range(3) if other != axis)))
        box.append((int(present[0]), int(present[-1]) + 1))
    crop = tuple(slice(lo, hi) for lo, hi in box)

    arrays: dict[str, np.ndarray] = {
        # (C, X, Y, Z) -> slice-major (Z, C, X, Y): one axial slice of every channel is contiguous.
        "inputs": session.inputs[(slice(None), *crop)].astype(np.float16).transpose(3, 0, 1, 2),
        "brain_mask": session.brain_mask[crop].transpose(2, 0, 1),
    }
    if session.target is not None:
        arrays["target"] = session.target[crop].astype(np.float16)[None].transpose(3, 0, 1, 2)
    if session.seg is not None:
        arrays["seg"] = session.seg[crop].transpose(2, 0, 1)
    manifest = {
        **fingerprint,
        "case_id": session.case_id,
        "label_convention": fingerprint["options"]["label_convention"],
        "shape": list(session.shape),
        "box": [list(pair) for pair in box],
        "arrays": {key: {"dtype": str(value.dtype), "shape": list(value.shape)} for key, value in arrays.items()},
        "scalings": {key: [value.low, value.high] for key, value in session.scalings.items()},
        "affine": session.affine.tolist(),
        "header": base64.b64encode(session.header.binaryblock).decode("ascii"),
        "brain_counts": session.brain_mask.sum(axis=(0, 1)).astype(int).tolist(),
    }

    building = Path(tempfile.mkdtemp(prefix=f".{name}.{_owner_tag()}.", suffix=_PARTIAL_SUFFIX, dir=root))
    try:
        for key, value in arrays.items():
            _write_npy(building / f"{key}.npy", np.ascontiguousarray(value))
        _write_bytes(building / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
        fsync_dir(building)
        try:
            os.rename(building, final)
        except OSError:
            if not (final / MANIFEST).is_file():
                raise
            shutil.rmtree(building, ignore_errors=True)  # another process finished the same entry first
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    _remove_superseded(root, name)
    return final


def _write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _digest(value: Any, length: int) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()[:length]


def _owner_tag() -> str:
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
    return f"{host}.{os.getpid()}"


def _remove_abandoned(root: Path) -> None:
    """Delete temporary entry folders left by preprocessing processes of this host that no longer run."""
    host = _owner_tag().split(".")[0]
    for path in root.glob(f".*{_PARTIAL_SUFFIX}"):
        parts = path.name.split(".")  # "", name..., host, pid, random + suffix
        try:
            owner_host, pid = parts[-4], int(parts[-3])
        except (IndexError, ValueError):
            continue
        if owner_host != host or _alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_superseded(root: Path, name: str) -> None:
    """Delete entries of the same source and options built from older file versions (an open memory map survives)."""
    prefix = name.rsplit("-", 1)[0] + "-"
    for path in root.iterdir():
        if path.name != name and path.name.startswith(prefix) and len(path.name) == len(name) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
