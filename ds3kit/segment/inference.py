"""Segmenting a volume slice by slice, and the Dice of a (synthetic) T1ce through a trained segmenter."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from ds3kit.data.session import Session
from ds3kit.inference import default_batch_size
from ds3kit.segment.model import SEGMENTER_MODALITIES
from ds3kit.segment.regions import REGIONS, region_dice

# The two reference rows that go with every model's Dice, through the same segmenter: the real T1ce is the
# ceiling a synthesis can reach, the T1 copied in place of the T1ce (no synthesis at all) the floor.
REFERENCE_ROWS = ("real_t1ce", "copy_t1")


def segment_volume(
    segmenter: torch.nn.Module,
    t1: np.ndarray,
    t1ce: np.ndarray,
    t2: np.ndarray,
    flair: np.ndarray,
    brain_mask: np.ndarray,
    *,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    threshold: float = 0.5,
    progress: bool = False,
) -> np.ndarray:
    """Segment the BraTS regions of a normalised session, one batch of axial slices at a time.

    Slices without a brain voxel are not computed (no region there), and every region is cut to the brain mask.

    Args:
        segmenter: maps (B, 4, H, W) T1, T1ce, T2, FLAIR to (B, 3, H, W) logits of WT, TC, ET (a
            :class:`~ds3kit.segment.Segmenter`).
        t1, t1ce, t2, flair: float (X, Y, Z), each normalised as ``ds3kit.data`` sessions are (brain mean
            +- 3 sd -> [0, 1], 0 outside); slices along the last axis.
        brain_mask: bool (X, Y, Z).
        batch_size: slices per forward pass; None: :func:`ds3kit.inference.default_batch_size`.
        device: where the segmenter runs (it is moved there and put in eval mode); None: where its parameters are.
        threshold: a region is ``sigmoid(logit) > threshold``.

    Returns:
        bool (3, X, Y, Z), channels WT, TC, ET (:data:`~ds3kit.segment.REGIONS`).
    """
    volumes = {"t1": t1, "t1ce": t1ce, "t2": t2, "flair": flair}
    brain_mask = np.asarray(brain_mask)
    if brain_mask.ndim != 3:
        raise ValueError(f"brain_mask must be (X, Y, Z), got shape {brain_mask.shape}")
    for name, volume in volumes.items():
        if np.shape(volume) != brain_mask.shape:
            raise ValueError(f"{name} must have the brain mask's shape {brain_mask.shape}, got {np.shape(volume)}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if device is None:
        device = next(segmenter.parameters()).device
    device = torch.device(device)
    segmenter = segmenter.to(device).eval()
    if batch_size is None:
        batch_size = default_batch_size(device, brain_mask.shape[:2])
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    brain_mask = brain_mask.astype(bool, copy=False)
    regions = np.zeros((len(REGIONS), *brain_mask.shape), dtype=bool)
    wanted = np.flatnonzero(brain_mask.any(axis=(0, 1)))
    stacked = np.stack([np.asarray(volumes[name], dtype=np.float32) for name in SEGMENTER_MODALITIES])
    slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(stacked, -1, 0)[wanted]))  # (Z', 4, X, Y)
    logit_threshold = float(np.log(threshold / (1.0 - threshold)))  # sigmoid(l) > t  <=>  l > logit(t)
    with torch.inference_mode():
        for start in tqdm(
            range(0, len(wanted), batch_size), desc="segment", unit="batch", disable=not progress, leave=False
        ):
            logits = segmenter(slices[start : start + batch_size].to(device)).float()
            index = wanted[start : start + logits.shape[0]]
            regions[..., index] = np.moveaxis((logits > logit_threshold).cpu().numpy(), 0, -1)
    regions &= brain_mask
    return regions


def session_dice(
    segmenter: torch.nn.Module,
    session: Session,
    t1ce: np.ndarray,
    *,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Dice of the tumour regions segmented with ``t1ce`` in place of the session's real T1ce.

    The session's own T1, T2, FLAIR and brain mask go with it; its segmentation is the truth.

    Args:
        segmenter: see :func:`segment_volume`.
        session: a loaded session with a segmentation.
        t1ce: float (X, Y, Z) on the session's grid and in its normalised [0, 1] scale: a generator's output
            (:func:`ds3kit.inference.synthesize_volume`), or :func:`reference_t1ce` for the reference rows.

    Returns:
        ``{"dice_et", "dice_tc", "dice_wt"}`` (:func:`~ds3kit.segment.region_dice`).

    Raises:
        ValueError: the session has no segmentation, or ``t1ce`` is not on its grid.
    """
    if session.seg is None:
        raise ValueError(f"{session.case_id}: Dice needs the session's segmentation, it has none")
    if np.shape(t1ce) != session.shape:
        raise ValueError(f"t1ce must be on the session's grid {session.shape}, got shape {np.shape(t1ce)}")
    t1, t2, flair = session.inputs
    regions = segment_volume(segmenter, t1, t1ce, t2, flair, session.brain_mask, batch_size=batch_size, device=device)
    return region_dice(regions, session.seg)


def reference_t1ce(session: Session, row: str) -> np.ndarray:
    """The T1ce of a reference row: ``"real_t1ce"`` the session's real T1ce (ceiling), ``"copy_t1"`` its T1 (floor).

    Raises:
        ValueError: an unknown row, or ``"real_t1ce"`` for a session without T1ce.
    """
    if row == "real_t1ce":
        if session.target is None:
            raise ValueError(f"{session.case_id}: the real_t1ce row needs the session's T1ce, it has none")
        return session.target
    if row == "copy_t1":
        return session.inputs[0]
    raise ValueError(f"row must be one of {REFERENCE_ROWS}, got {row!r}")


def check_held_out(metadata: dict, case_ids: list[str] | tuple[str, ...]) -> None:
    """Refuse to score subjects the segmenter was trained on.

    ``recipes/segmenter.py`` records its training subjects in the checkpoint's ``metadata["train_cases"]``
    (the split depends on the seed: a generator run with another seed has other test subjects).

    Raises:
        ValueError: some of ``case_ids`` are among the segmenter's training subjects (named), or the metadata
            does not list them.
    """
    if "train_cases" not in metadata:
        raise ValueError("the segmenter's metadata does not list its training subjects (train_cases)")
    seen = sorted(set(case_ids) & set(metadata["train_cases"]))
    if seen:
        raise ValueError(
            f"the segmenter was trained on {len(seen)} of the evaluated subjects ({', '.join(seen[:5])}"
            f"{', ...' if len(seen) > 5 else ''}); train it with the evaluation's split seed"
        )


def check_reads_t1ce(metadata: dict) -> None:
    """Refuse a segmenter trained without T1ce (``recipes/segmenter.py --without-t1ce``) where a synthesis is scored.

    That segmenter learned the T1 in the T1ce's channel, so a synthetic T1ce there is outside what it was trained on;
    it scores one row, the T1 copied in, and only its own run reports it.

    Raises:
        ValueError: ``metadata["t1ce_channel"]`` says the T1ce's channel held the T1 in training.
    """
    if metadata.get("t1ce_channel", "t1ce") != "t1ce":
        raise ValueError(
            "the segmenter was trained without T1ce (its T1ce channel held the T1), so it cannot judge a synthetic "
            "T1ce; pass one trained on the four modalities (recipes/segmenter.py without --without-t1ce)"
        )


def dice_by_subject(
    segmenter: torch.nn.Module,
    sessions: Iterable[Session],
    t1ce: Mapping[str, np.ndarray] | Callable[[Session], np.ndarray],
    *,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, dict[str, float]]:
    """:func:`session_dice` for every session: ``{case_id: {"dice_et", "dice_tc", "dice_wt"}}``.

    Args:
        segmenter: see :func:`segment_volume`.
        sessions: loaded sessions with segmentations (consumed one at a time).
        t1ce: the T1ce each session is segmented with: a mapping ``case_id -> (X, Y, Z)`` volume (e.g.
            ``Evaluation.predictions`` of ``evaluate_generator(..., keep_predictions=True)``), or a predictor
            ``session -> volume`` (a :mod:`ds3kit.baselines` predictor; ``lambda s: reference_t1ce(s, "real_t1ce")``).

    Raises:
        ValueError: a session has no segmentation or no volume in the mapping, or a volume is off its grid.
    """
    scores = {}
    for session in sessions:
        if callable(t1ce):
            volume = t1ce(session)
        elif session.case_id in t1ce:
            volume = t1ce[session.case_id]
        else:
            raise ValueError(f"{session.case_id}: no T1ce given for this session; given: {sorted(t1ce)[:5]}")
        scores[session.case_id] = session_dice(segmenter, session, volume, batch_size=batch_size, device=device)
    return scores
