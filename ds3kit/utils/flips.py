"""Flip averaging: a generator's predictions on flipped copies of a batch of slices, each flipped back, averaged.

Test-time augmentation for synthesis (:func:`ds3kit.inference.synthesize_volume`) and an ensemble of the teacher
for DS3-Net's pseudo-targets (``DS3NetOptions.teacher_flips``). Every flip is its own inverse, so each prediction
is aligned with the unflipped slice voxel for voxel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

#: Test-time flip averaging: the in-plane flips (dims of a (B, C, X, Y) batch) whose predictions, flipped back, are
#: averaged. "lr" is the left-right flip training augments with; "all" adds the anterior-posterior one and both.
FLIPS: dict[str, tuple[tuple[int, ...], ...]] = {
    "none": ((),),
    "lr": ((), (-2,)),
    "all": ((), (-2,), (-1,), (-2, -1)),
}


def flip_passes(
    generator: Callable[[Tensor], Tensor],
    batch: Tensor,
    flips: str,
    *,
    clamp: bool = False,
    unflipped: Tensor | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Tensor:
    """``generator``'s float32 predictions on the flipped copies of ``batch`` (B, C, X, Y), each flipped back, stacked
    along a new first dim (one per flip of ``FLIPS[flips]``, the plain pass first).

    ``flips`` is a key of :data:`FLIPS` ("none": one plain pass). ``clamp`` clamps every pass to [0, 1]. ``unflipped``:
    the plain pass's prediction when the caller already has it (it is then not recomputed, and is used as given:
    clamped too when ``clamp``). Gradients flow as the caller's grad mode says.
    """
    if flips not in FLIPS:
        raise ValueError(f"flips must be one of {', '.join(FLIPS)}, got {flips!r}")
    passes = []
    for dims in FLIPS[flips]:
        if not dims and unflipped is not None:
            prediction = unflipped.float()
        else:
            prediction = generator(batch.flip(dims).contiguous(memory_format=memory_format)).float().flip(dims)
        passes.append(prediction.clamp(0, 1) if clamp else prediction)
    return passes[0].unsqueeze(0) if len(passes) == 1 else torch.stack(passes)  # one pass: a view, no copy


def flip_mean(generator: Callable[[Tensor], Tensor], batch: Tensor, flips: str, **options: Any) -> Tensor:
    """The mean of :func:`flip_passes` (the same arguments, ``options`` its keywords): the flip-averaged prediction,
    float32, (B, C, X, Y)."""
    passes = flip_passes(generator, batch, flips, **options)
    return passes[0] if len(passes) == 1 else passes.mean(0)
