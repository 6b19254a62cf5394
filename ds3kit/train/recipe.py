"""What a recipe's ``main`` does after parsing: run the trainer and turn known failures into one-line errors."""

from __future__ import annotations

import sys
import time

from ds3kit.errors import InputError
from ds3kit.methods.base import NonFiniteLossError
from ds3kit.train.trainer import Trainer


def run_recipe(trainer: Trainer) -> int:
    """Run ``trainer.fit()``; exit code 0 on success (also after ``--stop-after-steps``), 2 on bad input,
    1 when a loss became non-finite."""
    started = time.perf_counter()
    try:
        trainer.fit()
    except InputError as error:
        print(f"{trainer.name}: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"{trainer.name}: error: {error}", file=sys.stderr)
        return 1
    if trainer.context.is_main:
        print(
            f"{trainer.name}: wall time {time.perf_counter() - started:.1f} s, run directory {trainer.config.out}",
            file=sys.stderr,
        )
    return 0
