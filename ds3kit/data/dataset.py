"""Subject-level cohort splits and the 2-D axial slice dataset the generators train on."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ds3kit.data.session import Session, load_brats_case
from ds3kit.errors import InputError


@dataclass
class CohortSplit:
    """Disjoint subject lists. Only ``train_paired`` subjects may expose their T1ce during training."""

    train_paired: list[Path]
    train_unpaired: list[Path]
    val: list[Path]
    test: list[Path]

    @property
    def train(self) -> list[Path]:
        """All training subjects, paired first."""
        return [*self.train_paired, *self.train_unpaired]


def split_cohort(
    cases: Sequence[str | os.PathLike],
    *,
    paired_fraction: float,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> CohortSplit:
    """Split subjects (never slices) into paired / unpaired training, validation and test sets.

    The cases are sorted, then shuffled by ``seed``; the first ``round(test_fraction * n)`` are
    test, the next ``round(val_fraction * n)`` validation, the rest training, whose first
    ``round(paired_fraction * n_train)`` are paired. Hence the val/test sets do not depend on
    ``paired_fraction``, and the paired set of a smaller fraction is contained in that of a
    larger one (fair comparisons across fractions). A non-zero fraction gets at least one subject
    (while one training subject remains); ``paired_fraction == 1`` pairs every training subject.

    Args:
        cases: case folders (any order; duplicates are an error).
        paired_fraction: in [0, 1].
        val_fraction, test_fraction: in [0, 1), summing to < 1.
        seed: shuffling seed.

    Raises:
        ValueError: fractions out of range, duplicate cases, or too few cases for a training subject.
    """
    for name, value in (
        ("paired_fraction", paired_fraction),
        ("val_fraction", val_fraction),
        ("test_fraction", test_fraction),
    ):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    paths = sorted(Path(case) for case in cases)
    if len(set(paths)) != len(paths):
        raise ValueError("cases holds duplicate paths")
    count = len(paths)
    if count == 0:
        raise ValueError("cases is empty")

    test_count = _at_least_one(test_fraction * count, test_fraction, room=count - 1)
    val_count = _at_least_one(val_fraction * count, val_fraction, room=count - 1 - test_count)
    train_count = count - test_count - val_count
    if train_count < 1:
        raise ValueError(f"{count} case(s) leave no training subject after {test_count} test and {val_count} val")
    paired_count = (
        train_count
        if paired_fraction == 1.0
        else _at_least_one(paired_fraction * train_count, paired_fraction, room=train_count)
    )

    order = np.random.default_rng(seed).permutation(count)
    shuffled = [paths[i] for i in order]
    test = shuffled[:test_count]
    val = shuffled[test_count : test_count + val_count]
    train = shuffled[test_count + val_count :]
    return CohortSplit(
        train_paired=sorted(train[:paired_count]),
        train_unpaired=sorted(train[paired_count:]),
        val=sorted(val),
        test=sorted(test),
    )


def center_crop_or_pad(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre-crop and/or zero-pad the last two dimensions to ``size`` (H, W).

    Cropping takes the central window (an extra odd pixel is dropped from the end); padding adds
    zeros around, the extra odd pixel at the end. The same call with the original size maps a
    prediction back onto the native slice (regions that were cropped come back as 0).

    Shape: (..., H_in, W_in) -> (..., H, W).
    """
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size}")
    result = tensor
    for dim, target in ((-2, height), (-1, width)):
        current = result.shape[dim]
        if current > target:
            start = (current - target) // 2
            result = result.narrow(dim, start, target)
        elif current < target:
            before = (target - current) // 2
            pad = [0, 0, 0, 0]
            pad[0 if dim == -1 else 2] = before
            pad[1 if dim == -1 else 3] = target - current - before
            result = torch.nn.functional.pad(result, pad)
    return result


class SliceDataset(Dataset):
    """Axial slices (the last axis) of a set of sessions, as 2-D training samples.

    Every session is loaded and normalised once, at construction, and kept in memory as
    slice-major tensors, so indexing is a view plus (optionally) a crop/pad. Slices whose brain
    fraction is below ``min_brain_fraction`` are skipped.

    Args:
        cases: case folders in BraTS layout (read with :func:`load_brats_case`) or loaded
            :class:`Session` objects.
        with_target: expose the normalised T1ce as ``"target"``. With False, T1ce is not read
            from disk and no sample has a ``"target"`` key (unpaired subjects).
        image_size: centre-crop / zero-pad each slice to ``image_size x image_size``; None keeps
            the native (X, Y) size.
        min_brain_fraction: in [0, 1].
        cache: keep every session in memory (default). With False only the most recently used
            session is kept, which is slow for random access but bounds memory. For real cohorts use
            :class:`ds3kit.data.CachedSliceDataset` over :func:`ds3kit.data.preprocess_cases` instead:
            the same items, read from memory-mapped preprocessed files.
        label_convention: the seg convention of case folders, see :func:`load_brats_case`.

    Each item is a dict: ``"inputs"`` float32 (3, H, W) (t1, t2, flair), ``"target"`` float32
    (1, H, W) only with ``with_target``, ``"brain_mask"`` and ``"tumour_mask"`` float32 (1, H, W)
    (tumour = seg > 0, zeros without seg), ``"seg"`` float32 (1, H, W) (BraTS labels 0, 1, 2, 4;
    zeros without seg), ``"case_index"`` and ``"slice_index"`` ints. H is the volume's X axis and W
    its Y axis.
    """

    def __init__(
        self,
        cases: Sequence[str | os.PathLike | Session],
        *,
        with_target: bool,
        image_size: int | None = None,
        min_brain_fraction: float = 0.01,
        cache: bool = True,
        label_convention: str = "auto",
    ) -> None:
        if not 0.0 <= min_brain_fraction <= 1.0:
            raise ValueError(f"min_brain_fraction must be in [0, 1], got {min_brain_fraction}")
        if image_size is not None and int(image_size) < 1:
            raise ValueError(f"image_size must be a positive int or None, got {image_size}")
        self.with_target = bool(with_target)
        self.image_size = None if image_size is None else int(image_size)
        self.min_brain_fraction = float(min_brain_fraction)
        self.cache = bool(cache)
        self.label_convention = label_convention
        self._sources = list(cases)
        self._tensors: dict[int, dict[str, torch.Tensor]] = {}
        self._sessions: dict[int, Session] = {}
        self.index: list[tuple[int, int]] = []  # (case_index, slice_index) per item
        for case_index in range(len(self._sources)):
            session = self._session(case_index)
            fractions = session.brain_mask.mean(axis=(0, 1))
            kept = np.flatnonzero(fractions >= self.min_brain_fraction)
            self.index.extend((case_index, int(z)) for z in kept)
            if not self.cache:
                self._tensors.clear()
                self._sessions.clear()

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        case_index, slice_index = self.index[index]
        tensors = self._case_tensors(case_index)
        item: dict[str, torch.Tensor | int] = {
            "inputs": tensors["inputs"][slice_index],
            "brain_mask": tensors["brain_mask"][slice_index],
            "tumour_mask": tensors["tumour_mask"][slice_index],
            "seg": tensors["seg"][slice_index],
            "case_index": case_index,
            "slice_index": slice_index,
        }
        if self.with_target:
            item["target"] = tensors["target"][slice_index]
        return item

    @property
    def sessions(self) -> list[Session]:
        """The loaded sessions, in case order (all of them are loaded when ``cache`` is False)."""
        return [self._session(case_index) for case_index in range(len(self._sources))]

    def _session(self, case_index: int) -> Session:
        if case_index in self._sessions:
            return self._sessions[case_index]
        source = self._sources[case_index]
        if isinstance(source, Session):
            session = source
            if self.with_target and session.target is None:
                raise InputError(f"case {session.case_id}: with_target=True but the session has no T1ce target")
        else:
            session = load_brats_case(source, with_target=self.with_target, label_convention=self.label_convention)
        if not self.cache:
            self._sessions.clear()
        self._sessions[case_index] = session
        return session

    def _case_tensors(self, case_index: int) -> dict[str, torch.Tensor]:
        if case_index in self._tensors:
            return self._tensors[case_index]
        session = self._session(case_index)
        # Slice-major (Z, C, X, Y) and already cropped/padded: __getitem__ is then a plain view.
        volumes = {
            "inputs": session.inputs,
            "brain_mask": session.brain_mask[None].astype(np.float32),
            "tumour_mask": session.tumour_mask[None].astype(np.float32),
            "seg": (np.zeros(session.shape) if session.seg is None else session.seg)[None].astype(np.float32),
        }
        if self.with_target:
            volumes["target"] = session.target[None]  # type: ignore[index]
        tensors = {}
        for name, volume in volumes.items():
            tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).permute(3, 0, 1, 2)
            if self.image_size is not None:
                tensor = center_crop_or_pad(tensor, (self.image_size, self.image_size))
            tensors[name] = tensor.contiguous()
        if not self.cache:
            self._tensors.clear()
        self._tensors[case_index] = tensors
        return tensors


def _at_least_one(raw_count: float, fraction: float, *, room: int) -> int:
    """round(raw_count), raised to 1 for a non-zero fraction, capped at ``room`` (subjects left to give)."""
    count = int(np.floor(raw_count + 0.5))  # half up, not Python's half-to-even
    if fraction > 0:
        count = max(count, 1)
    return max(0, min(count, room))
