"""pix2pix (Isola et al., 2017): fully supervised, 100 % paired, L1 + conditional LSGAN, the same generator.

    python recipes/pix2pix.py

The upper reference of the paper's table: what full supervision reaches with ds3kit's generator.
"""

from __future__ import annotations

import argparse

from ds3kit.methods import DS3NetOptions, PairedTeacher
from ds3kit.models import build_discriminator, build_generator
from ds3kit.train import RunConfig, Trainer, add_run_arguments, config_from_args, run_recipe

DEFAULTS = RunConfig(out="runs/pix2pix", paired_fraction=1.0)
# pix2pix is the teacher's step without the difficulty map and without the patchwise loss.
PIX2PIX = DS3NetOptions(use_difficulty=False, use_nce=False)


def build(config: RunConfig, total_steps: int) -> PairedTeacher:
    return PairedTeacher(
        build_generator(preset=config.preset, encoder=config.encoder, output=config.generator_output),
        build_discriminator(config.preset),
        PIX2PIX,
        total_steps=total_steps,
        lr=config.lr,
        betas=config.betas,
        role="generator",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, DEFAULTS)
    config = config_from_args(parser.parse_args(argv), DEFAULTS)
    return run_recipe(Trainer(config, build, name="pix2pix"))


if __name__ == "__main__":
    raise SystemExit(main())
