"""pix2pix (Isola et al., 2017): fully supervised, 100 % paired, L1 + conditional LSGAN, the same generator.

    python recipes/pix2pix.py

The upper reference of the paper's table: what full supervision reaches with ds3kit's generator.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from ds3kit.methods import RECIPE_OPTIONS, DS3NetOptions, PairedTeacher
from ds3kit.models import build_discriminator, build_generator
from ds3kit.train import RunConfig, Trainer, add_method_arguments, add_run_arguments, parse_recipe_args, run_recipe

# L1 at lr 5e-4 by default, as the other recipes, and the tumour counted five times in L1, as in the 5 % recipes
# (docs/method.md); --lambda-adv 1 --lr 2e-4 --tumour-weight 1 is the original pix2pix.
DEFAULTS = RunConfig(
    out="runs/pix2pix",
    paired_fraction=1.0,
    lr=5e-4,
    method_options={"lambda_adv": 0.0, "tumour_weight": RECIPE_OPTIONS["tumour_weight"]},
)


@dataclass
class Pix2PixOptions:
    """pix2pix's own knobs; the rest of the teacher's step is switched off (no difficulty map, no PatchNCE)."""

    lambda_adv: float = DS3NetOptions.lambda_adv
    lambda_pixel: float = DS3NetOptions.lambda_pixel
    gan_mode: str = DS3NetOptions.gan_mode
    tumour_weight: float = DS3NetOptions.tumour_weight
    pixel_loss: str = DS3NetOptions.pixel_loss

    HELP: ClassVar[dict[str, str]] = {
        "lambda_adv": "weight of the adversarial term",
        "lambda_pixel": "weight of the pixel loss to the real T1ce",
        "gan_mode": "adversarial loss: lsgan, bce or hinge",
        "tumour_weight": DS3NetOptions.HELP["tumour_weight"],
        "pixel_loss": DS3NetOptions.HELP["pixel_loss"],
    }

    def __post_init__(self) -> None:
        DS3NetOptions(**dataclasses.asdict(self))  # the same ranges as the teacher's step these options build


#: The recipe's method options type: its --flags, and the defaults a finished run's options are compared with.
OPTIONS = Pix2PixOptions


def build(config: RunConfig, total_steps: int) -> PairedTeacher:
    # pix2pix is the teacher's step without the difficulty map and without the patchwise loss.
    options = DS3NetOptions(
        **dataclasses.asdict(Pix2PixOptions(**config.method_options)), use_difficulty=False, use_nce=False
    )
    return PairedTeacher(
        build_generator(**config.generator_kwargs()),
        build_discriminator(config.preset),
        options,
        total_steps=total_steps,
        lr=config.lr,
        betas=config.betas,
        role="generator",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, DEFAULTS)
    add_method_arguments(parser, OPTIONS, DEFAULTS.method_options)
    config = parse_recipe_args(parser, argv, DEFAULTS, OPTIONS)
    return run_recipe(Trainer(config, build, name="pix2pix"))


if __name__ == "__main__":
    raise SystemExit(main())
