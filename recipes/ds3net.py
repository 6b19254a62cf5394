"""DS3-Net: semi-supervised T1ce synthesis from T1, T2 and FLAIR (Huang et al., MICCAI 2022).

    python recipes/ds3net.py                     # phantom cohort, 5 % paired, CPU or GPU
    python recipes/ds3net.py --data BraTS2020/ --paired-fraction 0.05 --preset large --steps 40000
    torchrun --standalone --nproc_per_node=2 recipes/ds3net.py --smoke

A teacher trains on the paired subjects alone (difficulty-weighted L1 + PatchNCE + LSGAN); after its warm-up a
student learns from the unpaired subjects through dual-level distillation. The student is the model shipped;
the teacher is the paper's "DS3-Net (paired only)", so the final table compares the two on held-out subjects.
"""

from __future__ import annotations

import argparse

from ds3kit.methods import RECIPE_OPTIONS, DS3Net, DS3NetOptions
from ds3kit.models import build_discriminator, build_generator
from ds3kit.train import RunConfig, Trainer, add_method_arguments, add_run_arguments, parse_recipe_args, run_recipe
from ds3kit.utils.streams import STUDENT_INIT_STREAM, random_stream, stream_seed

#: The recipe's method options type: its --flags, and the defaults a finished run's options are compared with.
OPTIONS = DS3NetOptions

# The defaults that measured best on CPU budgets (docs/method.md): L1-dominant training at lr 5e-4. The
# discriminators still train and draw the difficulty maps; at the paper's weights (adversarial 1, PatchNCE 1) the
# paired-only teacher scored 17.75 dB brain PSNR on the demo's test subjects against 18.47 dB with these. The paired
# subjects' tumour voxels count five times in L_pid (tumour PSNR +0.65 dB, ET Dice +0.09 over five seeds). The
# student's pseudo-targets take the paired subjects' T1ce level inside the unpaired subjects' tumour labels, counted
# over their whole volumes before augmentation (which warps the T1ce bilinearly and the labels by nearest neighbour),
# and its L_id counts their tumour five times too and their enhancing rim four times more (20), because under L1
# alone the student left the thin rim too dark (docs/method.md has the figures over five seeds). They need the tumour labels of
# every training subject (--no-tumour-levels --student-enhancing-weight 1 without them).
DEFAULTS = RunConfig(
    out="runs/ds3net",
    lr=5e-4,
    method_options={
        **RECIPE_OPTIONS,
        "tumour_levels": True,
        "tumour_levels_from": "subjects",
        "student_tumour_weight": 5.0,
        "student_enhancing_weight": 4.0,
    },
)


def build(config: RunConfig, total_steps: int) -> DS3Net:
    options = DS3NetOptions(**config.method_options)
    generator = config.generator_kwargs()
    # The teacher's networks first, from the global stream as recipes/paired_only.py builds them, then the student's
    # from a stream of their own: the teacher starts where the paired-only model starts.
    teacher, teacher_discriminator = build_generator(**generator), build_discriminator(config.preset)
    with random_stream(stream_seed(config.seed, STUDENT_INIT_STREAM)):
        student = build_generator(**generator)
        # With real T1ce of other subjects (--unpaired-t1ce other-subjects), D^S judges T1ce alone, unaligned.
        student_discriminator = build_discriminator(
            config.preset, in_channels=1 if config.unpaired_t1ce == "other-subjects" else 4
        )
    return DS3Net(
        teacher=teacher,
        student=student,
        teacher_discriminator=teacher_discriminator,
        student_discriminator=student_discriminator,
        options=options,
        total_steps=total_steps,
        lr=config.lr,
        betas=config.betas,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, DEFAULTS)
    add_method_arguments(parser, OPTIONS, DEFAULTS.method_options)
    config = parse_recipe_args(parser, argv, DEFAULTS, OPTIONS)
    return run_recipe(Trainer(config, build, name="ds3net"))


if __name__ == "__main__":
    raise SystemExit(main())
