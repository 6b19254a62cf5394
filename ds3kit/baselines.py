"""The reference predictors every synthesis is judged beside: the trivial floor and, on the phantom, the ceiling.

A trained generator is only worth shipping if it beats predictors that need no training:

- ``copy-T1``: the normalised T1 taken as the T1ce. T1ce *is* T1 plus contrast uptake, so this is the floor a network
  must clear.
- ``linear``: one least-squares line ``a1 T1 + a2 T2 + a3 FLAIR + b`` fitted on the brain voxels of the paired
  training subjects (the same subjects the model learns from), applied voxel by voxel.

On phantom data (:mod:`ds3kit.data.phantom`) the cohort also records what no model can beat:

- ``ceiling: tissue map``: the true tissue classes painted with the nominal T1ce contrasts, one linear fit per subject
  against that subject's T1ce (it knows the anatomy and the subject's intensity scale);
- ``ceiling: noise-free T1ce``: the phantom's T1ce before its Rician noise;
- ``ceiling: tissue map, paired levels``: the true tissue classes, each painted with its mean T1ce over the paired
  training subjects. It knows the anatomy perfectly but, like any model trained on those subjects, learns the
  T1ce levels from them alone: each subject's own contrasts and intensity scale are out of its reach. It is the
  ceiling that moves with the paired fraction.
- ``ceiling: tissue map, population levels``: the same with each tissue's mean T1ce over *every* training subject
  (paired and unpaired). It is what perfect anatomy plus fully supervised levels gives without looking at the test
  subject's T1ce: the ceiling of pix2pix at 100 % and of any setting that learns the cohort's levels. ``ceiling:
  tissue map`` sits above it only by fitting each test subject's own scale to its real T1ce, which no synthesis
  can do (the phantom draws every subject's contrasts, bias field and scale per modality, independently).

Every predictor maps a :class:`~ds3kit.data.Session` to an (X, Y, Z) float32 volume in the normalised T1ce scale,
0 outside the brain, like :func:`ds3kit.inference.synthesize_volume`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ds3kit.data import Session
from ds3kit.data.phantom import TISSUE_CONTRASTS, load_phantom_truth

Predictor = Callable[[Session], np.ndarray]

COPY_T1 = "copy-T1"
LINEAR = "linear"
CEILING_TISSUE = "ceiling: tissue map"
CEILING_NOISE_FREE = "ceiling: noise-free T1ce"
CEILING_PAIRED_LEVELS = "ceiling: tissue map, paired levels"
CEILING_POPULATION_LEVELS = "ceiling: tissue map, population levels"


def copy_t1(session: Session) -> np.ndarray:
    """The normalised T1 as the T1ce prediction: (X, Y, Z) float32, 0 outside the brain."""
    return np.where(session.brain_mask, session.inputs[0], 0.0).astype(np.float32)


@dataclass(frozen=True)
class LinearBaseline:
    """``T1ce ~ w . (T1, T2, FLAIR) + b``, least squares over brain voxels; predictions clipped to [0, 1].

    Attributes:
        weights: (3,) coefficients of T1, T2, FLAIR.
        intercept: the constant term.
    """

    weights: tuple[float, float, float]
    intercept: float

    @classmethod
    def fit(cls, sessions: Iterable[Session]) -> LinearBaseline:
        """Fit on the brain voxels of ``sessions`` (each needs its T1ce), every voxel weighted equally.

        ``sessions`` is consumed once, one session at a time (a lazy iterable keeps one session in memory).

        Raises:
            ValueError: no session, a session without T1ce, or no brain voxel at all.
        """
        # Normal equations accumulated per session: memory stays one session's brain, not the cohort's.
        gram = np.zeros((4, 4))
        moment = np.zeros(4)
        count = 0
        for session in sessions:
            count += 1
            if session.target is None:
                raise ValueError(f"LinearBaseline.fit: session {session.case_id} has no T1ce to fit against")
            design = _design(session)
            target = session.target[session.brain_mask].astype(np.float64)
            gram += design.T @ design
            moment += design.T @ target
        if count == 0:
            raise ValueError("LinearBaseline.fit needs at least one paired session, got none")
        if gram[3, 3] == 0:
            raise ValueError("LinearBaseline.fit: the sessions hold no brain voxel")
        solution = np.linalg.lstsq(gram, moment, rcond=None)[0]
        return cls(weights=tuple(float(v) for v in solution[:3]), intercept=float(solution[3]))  # type: ignore[arg-type]

    def __call__(self, session: Session) -> np.ndarray:
        prediction = np.tensordot(np.asarray(self.weights, dtype=np.float32), session.inputs, axes=1) + self.intercept
        return np.where(session.brain_mask, np.clip(prediction, 0.0, 1.0), 0.0).astype(np.float32)


def _design(session: Session) -> np.ndarray:
    brain = session.brain_mask
    columns = [session.inputs[channel][brain].astype(np.float64) for channel in range(3)]
    return np.stack([*columns, np.ones(int(brain.sum()))], axis=1)


def tissue_map_ceiling(session: Session, tissue: np.ndarray) -> np.ndarray:
    """The nominal T1ce contrast of each true tissue class, fitted to the subject's T1ce by one line (2 parameters).

    Args:
        session: a phantom session with its T1ce.
        tissue: (X, Y, Z) integer tissue codes, in the order of :data:`~ds3kit.data.phantom.TISSUE_CONTRASTS`.
    """
    if session.target is None:
        raise ValueError(f"tissue_map_ceiling: session {session.case_id} has no T1ce")
    if tissue.shape != session.shape:
        raise ValueError(f"tissue map must be {session.shape}, got {tissue.shape}")
    nominal = np.array([contrasts[1] for contrasts in TISSUE_CONTRASTS.values()], dtype=np.float64)[tissue]
    brain = session.brain_mask
    design = np.stack([nominal[brain], np.ones(int(brain.sum()))], axis=1)
    slope, offset = np.linalg.lstsq(design, session.target[brain].astype(np.float64), rcond=None)[0]
    return np.where(brain, np.clip(slope * nominal + offset, 0.0, 1.0), 0.0).astype(np.float32)


def reference_predictors(paired: Iterable[Session]) -> dict[str, Predictor]:
    """``copy-T1`` and, when ``paired`` holds a session, ``linear`` fitted on them (consumed once)."""
    predictors: dict[str, Predictor] = {COPY_T1: copy_t1}
    sessions = iter(paired)
    first = next(sessions, None)
    if first is not None:
        predictors[LINEAR] = LinearBaseline.fit(itertools.chain([first], sessions))
    return predictors


def tissue_levels(sessions_and_tissues: Iterable[tuple[Session, np.ndarray]]) -> np.ndarray:
    """Mean normalised T1ce of each tissue code over the brain voxels of the given (session, tissue map) pairs.

    Tissues absent from every subject get the mean of all brain voxels. Returns float32 (len(TISSUE_CONTRASTS),).
    """
    totals = np.zeros(len(TISSUE_CONTRASTS))
    counts = np.zeros(len(TISSUE_CONTRASTS))
    for session, tissue in sessions_and_tissues:
        if session.target is None:
            raise ValueError(f"tissue_levels: session {session.case_id} has no T1ce")
        brain = session.brain_mask
        codes = tissue[brain].astype(np.int64)
        totals += np.bincount(codes, weights=session.target[brain], minlength=len(totals))[: len(totals)]
        counts += np.bincount(codes, minlength=len(counts))[: len(counts)]
    if counts.sum() == 0:
        raise ValueError("tissue_levels: no brain voxel in the given sessions")
    overall = totals.sum() / counts.sum()
    return np.where(counts > 0, totals / np.maximum(counts, 1), overall).astype(np.float32)


def tissue_errors(
    prediction: np.ndarray, target: np.ndarray, tissue: np.ndarray, brain: np.ndarray
) -> dict[str, tuple[float, int]]:
    """Where a prediction's brain error lies on a phantom subject: per tissue, the squared error summed over the
    tissue's brain voxels and their count.

    Summed over subjects, ``sum / count`` is a tissue's MSE and the sums over all tissues divided by the brain's
    voxels the pooled brain MSE, so a model's loss to another can be split by tissue.

    Args:
        prediction, target: (X, Y, Z) in the normalised T1ce scale.
        tissue: (X, Y, Z) integer tissue codes, in the order of :data:`~ds3kit.data.phantom.TISSUE_CONTRASTS`.
        brain: (X, Y, Z) boolean brain mask; voxels outside it are not counted.

    Returns:
        ``{tissue name: (sum of squared errors, voxels)}`` for every tissue of ``TISSUE_CONTRASTS``, in its order
        (a tissue absent from the brain has ``(0.0, 0)``).
    """
    shapes = {
        name: np.shape(array)
        for name, array in (("prediction", prediction), ("target", target), ("tissue", tissue), ("brain", brain))
    }
    if len(set(shapes.values())) != 1:
        raise ValueError(f"tissue_errors needs arrays of one shape, got {shapes}")
    brain = np.asarray(brain, dtype=bool)
    codes = np.asarray(tissue)[brain].astype(np.int64)
    if codes.size and (codes.min() < 0 or codes.max() >= len(TISSUE_CONTRASTS)):
        raise ValueError(
            f"tissue codes must lie in [0, {len(TISSUE_CONTRASTS) - 1}] inside the brain, got {codes.min()}..{codes.max()}"
        )
    error = np.asarray(prediction, dtype=np.float64)[brain] - np.asarray(target, dtype=np.float64)[brain]
    sums = np.bincount(codes, weights=error * error, minlength=len(TISSUE_CONTRASTS))
    counts = np.bincount(codes, minlength=len(TISSUE_CONTRASTS))
    return {name: (float(sums[code]), int(counts[code])) for code, name in enumerate(TISSUE_CONTRASTS)}


def ceiling_predictors(
    case_dirs: Sequence[str | Path],
    paired_case_dirs: Sequence[str | Path] = (),
    training_case_dirs: Sequence[str | Path] = (),
) -> dict[str, Predictor] | None:
    """The phantom's ceilings for the sessions of ``case_dirs``, or None when a case has no phantom truth.

    With ``paired_case_dirs`` (the paired training subjects) also ``ceiling: tissue map, paired levels``; with
    ``training_case_dirs`` (every training subject) also ``ceiling: tissue map, population levels``. Either is left
    out when one of its subjects has no phantom truth. The returned predictors look the session up by ``case_id``
    (the case folder's name).
    """
    truths = {}
    for case_dir in case_dirs:
        truth = load_phantom_truth(case_dir)
        if truth is None:
            return None
        truths[Path(case_dir).name] = truth

    def truth_of(session: Session) -> dict[str, np.ndarray]:
        if session.case_id not in truths:
            raise ValueError(f"no phantom truth for session {session.case_id}; known: {sorted(truths)}")
        return truths[session.case_id]

    def noise_free(session: Session) -> np.ndarray:
        clean = session.scalings["t1ce"].normalize(truth_of(session)["t1ce_clean"])
        return np.where(session.brain_mask, clean, 0.0).astype(np.float32)

    def painted_with_levels_of(level_case_dirs: Sequence[str | Path]) -> Predictor | None:
        level_truths = [load_phantom_truth(case_dir) for case_dir in level_case_dirs]
        if not level_case_dirs or any(truth is None for truth in level_truths):
            return None
        from ds3kit.data import load_brats_case

        levels = tissue_levels(
            (load_brats_case(case_dir), truth["tissue"]) for case_dir, truth in zip(level_case_dirs, level_truths)
        )

        def painted(session: Session) -> np.ndarray:
            return np.where(session.brain_mask, levels[truth_of(session)["tissue"]], 0.0).astype(np.float32)

        return painted

    ceilings: dict[str, Predictor] = {
        CEILING_TISSUE: lambda session: tissue_map_ceiling(session, truth_of(session)["tissue"]),
        CEILING_NOISE_FREE: noise_free,
    }
    for name, level_case_dirs in (
        (CEILING_PAIRED_LEVELS, paired_case_dirs),
        (CEILING_POPULATION_LEVELS, training_case_dirs),
    ):
        predictor = painted_with_levels_of(level_case_dirs)
        if predictor is not None:
            ceilings[name] = predictor
    return ceilings
