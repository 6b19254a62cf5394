"""The learning-rate schedule of every recipe: pix2pix's constant rate, then a linear decay to zero."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch


class LinearDecay:
    """pix2pix's schedule: the base rate, then a linear decay to zero over the last ``fraction`` of the steps.

    A pure function of the step, applied to every optimiser before each step (the student's optimiser, idle
    during the teacher's warm-up, follows the same clock). Its state (the step count and where the decay starts)
    goes into the training checkpoint, and a resumed run restores it, so it continues the decay it started with.
    """

    KIND = "linear_decay"

    def __init__(self, total: int, fraction: float) -> None:
        self.total = total
        self.decay_start = total - max(1, round(fraction * total))

    def factor(self, step: int) -> float:
        if step < self.decay_start:
            return 1.0
        return max(0.0, (self.total - step) / (self.total - self.decay_start))

    def apply(self, optimizers: Iterable[torch.optim.Optimizer], step: int, base_lr: float) -> None:
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = base_lr * self.factor(step)

    def state_dict(self) -> dict[str, int | str]:
        return {"kind": self.KIND, "total": self.total, "decay_start": self.decay_start}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take over the step count and decay start of :meth:`state_dict`'s output; ``ValueError`` for another kind."""
        if state.get("kind") != self.KIND:
            raise ValueError(f"expected a {self.KIND} schedule state, got kind {state.get('kind')!r}")
        self.total = int(state["total"])
        self.decay_start = int(state["decay_start"])
