"""Volume-wise evaluation of generators on held-out subjects: whole image, brain and tumour region."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ds3kit.data import Session
from ds3kit.inference import synthesize_volume
from ds3kit.metrics import region_metrics


@dataclass
class Evaluation:
    """Per-subject metrics and their mean (NaN-aware: a subject with no tumour has no tumour metrics)."""

    subjects: dict[str, dict[str, float]] = field(default_factory=dict)
    predictions: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def mean(self) -> dict[str, float]:
        keys = sorted({key for metrics in self.subjects.values() for key in metrics})
        summary = {}
        for key in keys:
            values = [m[key] for m in self.subjects.values() if key in m and math.isfinite(m[key])]
            if values:
                summary[key] = float(np.mean(values))
        return summary

    @property
    def std(self) -> dict[str, float]:
        keys = sorted({key for metrics in self.subjects.values() for key in metrics})
        return {
            key: float(np.std([m[key] for m in self.subjects.values() if key in m and math.isfinite(m[key])]))
            for key in keys
        }


def session_metrics(session: Session, prediction: np.ndarray) -> dict[str, float]:
    """One subject's metrics of :func:`~ds3kit.metrics.region_metrics`: the whole image, the brain, and the tumour
    (segmentation > 0) when the subject has one, of ``prediction`` (X, Y, Z) against the session's real T1ce."""
    if session.target is None:
        raise ValueError(f"{session.case_id}: evaluation needs the real T1ce, the session has none")
    if prediction.shape != session.shape:
        raise ValueError(f"{session.case_id}: prediction must be {session.shape}, got {prediction.shape}")
    tumour = None if session.seg is None else torch.from_numpy(session.seg > 0)[None, None]
    return region_metrics(
        torch.from_numpy(np.ascontiguousarray(prediction, dtype=np.float32))[None, None],
        torch.from_numpy(session.target)[None, None],
        brain_mask=torch.from_numpy(session.brain_mask)[None, None],
        tumour_mask=tumour if tumour is not None and bool(tumour.any()) else None,
    )


def evaluate_generator(
    generator: nn.Module,
    sessions: Sequence[Session],
    *,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    keep_predictions: bool = False,
    on_prediction: Callable[[Session, np.ndarray], None] | None = None,
    flips: str = "none",
    calibrate: bool = True,
) -> Evaluation:
    """Synthesize every session's T1ce and score it against the real one over the whole 3-D volume.

    Regions: the whole image, the brain mask, and the tumour (segmentation > 0) when a segmentation exists.
    ``batch_size`` None picks :func:`~ds3kit.inference.default_batch_size` for the device and slice size; ``flips``
    and ``calibrate`` are :func:`~ds3kit.inference.synthesize_volume`'s.
    """

    def synthesize(session: Session) -> np.ndarray:
        return synthesize_volume(
            generator,
            session.inputs,
            brain_mask=session.brain_mask,
            batch_size=batch_size,
            device=device,
            flips=flips,
            calibrate=calibrate,
        )

    return evaluate_predictor(synthesize, sessions, keep_predictions=keep_predictions, on_prediction=on_prediction)


def evaluate_predictor(
    predict: Callable[[Session], np.ndarray],
    sessions: Iterable[Session],
    *,
    keep_predictions: bool = False,
    on_prediction: Callable[[Session, np.ndarray], None] | None = None,
) -> Evaluation:
    """Score any predictor (a session -> (X, Y, Z) normalised T1ce) like :func:`evaluate_generator` does.

    The baselines and ceilings of :mod:`ds3kit.baselines` go through here, so every row of a report is scored by
    the same code on the same voxels. Sessions are consumed one at a time (a lazy iterable streams);
    ``on_prediction(session, prediction)`` sees each prediction as it is made (to write it out), so nothing but the
    metrics needs to stay in memory unless ``keep_predictions``.
    """
    result = Evaluation()
    for session in sessions:
        if session.target is None:
            raise ValueError(f"{session.case_id}: evaluation needs the real T1ce, the session has none")
        prediction = predict(session)
        result.subjects[session.case_id] = session_metrics(session, prediction)
        if on_prediction is not None:
            on_prediction(session, prediction)
        if keep_predictions:
            result.predictions[session.case_id] = prediction
    return result
