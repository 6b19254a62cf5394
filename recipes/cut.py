"""CUT (Park et al., ECCV 2020): 0 % paired, unpaired translation with PatchNCE, the same generator.

    python recipes/cut.py

The generator sees T1/T2/FLAIR of one half of the training subjects; its (unconditional) discriminator sees
real T1ce of the other half, so no aligned pair is ever used.
"""

from __future__ import annotations

import argparse

from ds3kit.methods import CUT, CUTOptions
from ds3kit.models import build_discriminator, build_generator
from ds3kit.train import RunConfig, Trainer, add_method_arguments, add_run_arguments, parse_recipe_args, run_recipe

#: The recipe's method options type: its --flags, and the defaults a finished run's options are compared with.
OPTIONS = CUTOptions

DEFAULTS = RunConfig(out="runs/cut", paired_fraction=0.0)


def build(config: RunConfig, total_steps: int) -> CUT:
    return CUT(
        build_generator(**config.generator_kwargs()),
        build_discriminator(config.preset, in_channels=1),
        CUTOptions(**config.method_options),
        lr=config.lr,
        betas=config.betas,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, DEFAULTS)
    add_method_arguments(parser, OPTIONS)
    config = parse_recipe_args(parser, argv, DEFAULTS, OPTIONS)
    return run_recipe(Trainer(config, build, name="cut"))


if __name__ == "__main__":
    raise SystemExit(main())
