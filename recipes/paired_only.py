"""DS3-Net (paired only): the teacher alone, trained on the paired subjects with the difficulty-guided losses.

    python recipes/paired_only.py --paired-fraction 0.05

The paper's "DS3-Net (paired only)" row: what the semi-supervised method must beat with the same paired data.
"""

from __future__ import annotations

import argparse

from ds3kit.methods import RECIPE_OPTIONS, DS3NetOptions, PairedTeacher
from ds3kit.models import build_discriminator, build_generator
from ds3kit.train import RunConfig, Trainer, add_method_arguments, add_run_arguments, parse_recipe_args, run_recipe

#: The recipe's method options type: its --flags, and the defaults a finished run's options are compared with.
OPTIONS = DS3NetOptions

# The same defaults as recipes/ds3net.py, so the two compare like for like (docs/method.md).
DEFAULTS = RunConfig(out="runs/paired_only", lr=5e-4, method_options=dict(RECIPE_OPTIONS))


def build(config: RunConfig, total_steps: int) -> PairedTeacher:
    return PairedTeacher(
        build_generator(**config.generator_kwargs()),
        build_discriminator(config.preset),
        DS3NetOptions(**config.method_options),
        total_steps=total_steps,
        lr=config.lr,
        betas=config.betas,
        role="teacher",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, DEFAULTS)
    add_method_arguments(parser, OPTIONS, DEFAULTS.method_options)
    config = parse_recipe_args(parser, argv, DEFAULTS, OPTIONS)
    return run_recipe(Trainer(config, build, name="paired_only"))


if __name__ == "__main__":
    raise SystemExit(main())
