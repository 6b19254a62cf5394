"""The quality study's arms and runs: train one arm at one seed (or reuse it), its references, its diagnostics, and
the Dice of a per-seed segmenter on its saved test predictions."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _quality_stats import reference_label
from _recipes import load_recipe

from ds3kit.baselines import (
    CEILING_NOISE_FREE,
    CEILING_PAIRED_LEVELS,
    CEILING_POPULATION_LEVELS,
    CEILING_TISSUE,
    COPY_T1,
    LINEAR,
)
from ds3kit.train import RunConfig, Trainer
from ds3kit.train.config import option_defaults
from ds3kit.train.trainer import resolve_device
from ds3kit.utils.atomic import atomic_write_text


@dataclass(frozen=True)
class Arm:
    """One row of the study: a recipe at a paired fraction with method options."""

    name: str
    recipe: str
    paired_fraction: float
    options: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)  # RunConfig fields, e.g. the unpaired pool's data setting
    # The arms the page compares this one with; empty: its recipe's default arm (DS3-Net variants: DS3-Net 5 % and
    # paired-only 5 %). An arm measured on earlier defaults names the arms of those defaults.
    versus: tuple[str, ...] = ()
    # (generator role, arm, other arms ...): this arm is read from the runs of those arms, which all hold it as that
    # generator, instead of training its own: from the first of them with a finished run at the seed, or, when none
    # has one, from the first arm's, trained then. "paired-only 5%" is the teacher of "DS3-Net 5%" and of every
    # DS3-Net arm whose options leave the teacher alone: with common random numbers they are one model draw for draw
    # (the recipes' test_ds3net_teacher_is_the_paired_only_model_draw_for_draw), so training it again only costs time.
    read_from: tuple[str, ...] = ()


# The defaults before tumour-slice oversampling (`--tumour-repeats 0`, 2026-12-02): the mechanism probes below were
# measured on them, so they pin them and are compared with these arms.
EARLIER = {"tumour_repeats": 0}
EARLIER_ARMS = ("DS3-Net 5% (no tumour oversampling)", "paired-only 5% (no tumour oversampling)")

# DS3-Net's options before tumour-level pseudo-targets became the default (2026-12-06): the DS3-Net arms measured
# before pin them and are compared with the arm of those defaults.
WITHOUT_LEVELS = {"tumour_levels": False, "student_tumour_weight": 1.0, "student_enhancing_weight": 1.0}
WITHOUT_LEVELS_ARMS = ("DS3-Net 5% (no tumour-level pseudo-targets)", "paired-only 5%")


# DS3-Net's tumour levels before they were counted over the paired subjects' whole volumes (2026-12-06, sixteenth
# session): a running mean over the augmented paired batches. The arms measured on that rule pin it.
BATCH_LEVELS = {"tumour_levels_from": "batches"}
BATCH_LEVELS_ARMS = ("DS3-Net 5% (levels from augmented batches)", "paired-only 5%")


ARMS = (
    Arm(
        "paired-only 5%",
        "paired_only",
        0.05,
        read_from=(
            "teacher",
            "DS3-Net 5%",
            "DS3-Net 5% (levels from augmented batches)",
            "DS3-Net 5% (no enhancing weight)",
            "DS3-Net 5% (no tumour-level pseudo-targets)",
        ),
    ),
    Arm("DS3-Net 5%", "ds3net", 0.05),
    Arm("pix2pix 100%", "pix2pix", 1.0),
    Arm("CUT 0%", "cut", 0.0),
    # The synthesis issue's sampling lead, now the default (`--tumour-repeats 2`: every paired slice holding tumour
    # listed three times per epoch); these arms are the defaults before it.
    Arm("paired-only 5% (no tumour oversampling)", "paired_only", 0.05, run=EARLIER),
    Arm("DS3-Net 5% (no tumour oversampling)", "ds3net", 0.05, WITHOUT_LEVELS, run=EARLIER),
    Arm("pix2pix 100% (no tumour oversampling)", "pix2pix", 1.0, run=EARLIER),
    Arm("DS3-Net 5% - difficulty map", "ds3net", 0.05, {"use_difficulty": False}),
    # PatchNCE and the adversarial term are off in the recipes' defaults (docs/method.md); this arm puts them back
    # at the paper's weights, the figure-faithful method.
    Arm(
        "DS3-Net 5% (paper's loss weights)",
        "ds3net",
        0.05,
        {**WITHOUT_LEVELS, "lambda_adv": 1.0, "use_nce": True},
        versus=WITHOUT_LEVELS_ARMS,
    ),
    Arm("DS3-Net 5% - feature distillation", "ds3net", 0.05, {"use_feature_distillation": False}),
    Arm("DS3-Net 5% - image distillation", "ds3net", 0.05, {"use_image_distillation": False}),
    # Not in the paper: the student copies a teacher trained for 70 % of the steps (default 30 %), a probe of whether
    # the student's own training on unpaired data adds to what it copies or takes away from it.
    Arm(
        "DS3-Net 5% (teacher warm-up 70%)",
        "ds3net",
        0.05,
        {**WITHOUT_LEVELS, "teacher_warmup_fraction": 0.7},
        versus=WITHOUT_LEVELS_ARMS,
    ),
    # Not in the paper: the student also gets L_pid on the paired batches (`student_pixel`), the one probe whose
    # single seed came closest to the teacher: its own source of T1ce beyond what the teacher tells it.
    Arm(
        "DS3-Net 5% (student also on paired)",
        "ds3net",
        0.05,
        {**WITHOUT_LEVELS, "student_pixel": True},
        versus=WITHOUT_LEVELS_ARMS,
    ),
    # Ours, for the semi-supervision issue (docs/method.md): pseudo-targets from a moving average of the teacher, the
    # student also on the paired subjects; and the data setting where other unpaired subjects lend real T1ce to D^S.
    # Measured on the earlier defaults.
    Arm(
        "DS3-Net 5% (EMA teacher, student also on paired)",
        "ds3net",
        0.05,
        {**WITHOUT_LEVELS, "teacher_ema": 0.99, "student_pixel": True},
        run=EARLIER,
        versus=EARLIER_ARMS,
    ),
    Arm(
        "DS3-Net 5% (unpaired T1ce of other subjects)",
        "ds3net",
        0.05,
        WITHOUT_LEVELS,
        run={**EARLIER, "unpaired_t1ce": "other-subjects"},
        versus=EARLIER_ARMS,
    ),
    # The data setting where other unpaired subjects lend real T1ce to D^S, on the current defaults (the arm above is
    # the same setting on the earlier ones): the issue's first candidate, run at every seed on the bf16 defaults.
    Arm(
        "DS3-Net 5% (other subjects' T1ce)",
        "ds3net",
        0.05,
        WITHOUT_LEVELS,
        run={"unpaired_t1ce": "other-subjects"},
        versus=WITHOUT_LEVELS_ARMS,
    ),
    # The synthesis issue's width lead (2026-12-02: +0.42 / +0.50 dB at seed 0, -0.06 dB at seed 1), at every seed:
    # 24 base channels instead of the small preset's 16, about twice the generator's step time.
    Arm("paired-only 5% (width 24)", "paired_only", 0.05, run={"base_channels": 24}),
    # The semi-supervision issue's noisy student on the current defaults: the student's unpaired inputs get an
    # intensity perturbation its teacher does not see (`student_noise`), so it distils under a consistency constraint.
    Arm(
        "DS3-Net 5% (noisy student)",
        "ds3net",
        0.05,
        {**WITHOUT_LEVELS, "student_noise": True},
        versus=WITHOUT_LEVELS_ARMS,
    ),
    # The recipes' L_pid counts the paired subjects' tumour voxels (seg > 0) five times (`tumour_weight 5`, the
    # default of every recipe that trains on real T1ce since 2026-12-04), so the enhancing rim, under 1 % of
    # the brain, is not drowned by white and grey matter in the mean; these arms are the defaults before it.
    Arm("paired-only 5% (no tumour weight)", "paired_only", 0.05, {"tumour_weight": 1.0}),
    Arm(
        "DS3-Net 5% (no tumour weight)",
        "ds3net",
        0.05,
        {**WITHOUT_LEVELS, "tumour_weight": 1.0},
        versus=WITHOUT_LEVELS_ARMS,
    ),
    Arm("pix2pix 100% (no tumour weight)", "pix2pix", 1.0, {"tumour_weight": 1.0}),
    # Twice the default tumour weight: whether the tumour's gain at 5 keeps growing, and what the brain pays for it.
    Arm("paired-only 5% (tumour weight 10)", "paired_only", 0.05, {"tumour_weight": 10.0}),
    # Ours, for the semi-supervision issue: the student's L_id counts the unpaired subjects' tumour (seg > 0) five
    # times, as the teacher's L_pid counts the paired subjects', so distillation pays for the tumour as much as the
    # teacher's own training did.
    Arm(
        "DS3-Net 5% (student tumour weight 5)",
        "ds3net",
        0.05,
        {**WITHOUT_LEVELS, "student_tumour_weight": 5.0},
        versus=WITHOUT_LEVELS_ARMS,
    ),
    # The student's adversarial term (weight 1, against a D^S whose only real images are the paired subjects') off,
    # with the two mechanisms above: the student then learns from L_pid, L_id and L_fd only.
    Arm(
        "DS3-Net 5% (EMA teacher, student also on paired, no student adversarial)",
        "ds3net",
        0.05,
        {**WITHOUT_LEVELS, "teacher_ema": 0.99, "student_pixel": True, "lambda_student_adv": 0.0},
        run=EARLIER,
        versus=EARLIER_ARMS,
    ),
    # Ours, for the semi-supervision issue, on the current defaults: pseudo-targets from a moving average of the
    # teacher's weights (decay 0.99). The teacher itself still trains as the paired-only model does, draw for draw,
    # so one run scores three models: paired-only, its moving average (what weight averaging alone gives, with no
    # unpaired data) and the student distilled from the average.
    Arm(
        "DS3-Net 5% (EMA teacher)", "ds3net", 0.05, {**WITHOUT_LEVELS, "teacher_ema": 0.99}, versus=WITHOUT_LEVELS_ARMS
    ),
    # The recipes train the teacher without an adversarial term (RECIPE_OPTIONS) but left the student's at 1, against
    # a D^S whose only real images are the paired subject's: the student alone is pulled by a GAN, which in the
    # twelfth session's runs weighed as much as its L_id. These arms take it away, then add the semi-supervised
    # learner's usual pair: the real T1ce of the paired batches too, and targets from the teacher's average.
    Arm(
        "DS3-Net 5% (no student adversarial)",
        "ds3net",
        0.05,
        {**WITHOUT_LEVELS, "lambda_student_adv": 0.0},
        versus=WITHOUT_LEVELS_ARMS,
    ),
    Arm(
        "DS3-Net 5% (mean teacher: EMA, student also on paired, no student adversarial)",
        "ds3net",
        0.05,
        {**WITHOUT_LEVELS, "lambda_student_adv": 0.0, "student_pixel": True, "teacher_ema": 0.99},
        versus=WITHOUT_LEVELS_ARMS,
    ),
    # DS3-Net before the enhancing weight became its default (2026-12-06, fourteenth session): tumour-level
    # pseudo-targets, the unpaired tumour counted five times in L_id and its enhancing rim no more than the rest.
    Arm(
        "DS3-Net 5% (no enhancing weight)",
        "ds3net",
        0.05,
        {**BATCH_LEVELS, "student_enhancing_weight": 1.0},
        versus=BATCH_LEVELS_ARMS,
    ),
    # Four times the default enhancing weight (the rim counts 5 x 16 = 80 times a healthy voxel in L_id): at 4 the
    # student's rim was still a tenth too dark on the test subjects, and its ET Dice 54 % of the real T1ce's. Lost
    # to 4 at seeds 2 and 3 in every column (2026-12-06): it brightens the whole tumour, not the rim.
    Arm(
        "DS3-Net 5% (enhancing weight 16)",
        "ds3net",
        0.05,
        {**BATCH_LEVELS, "student_enhancing_weight": 16.0},
        versus=BATCH_LEVELS_ARMS,
    ),
    # The necrotic / non-enhancing core counted as much as the rim in L_id (5 x 4 = 20): it stayed 0.1-0.2 too
    # bright in every student, more so the more the rim was weighted, and a bright core reads as enhancement.
    # Level with the default at seeds 0, 2, 3, 4 (2026-12-06): the core's bias is in its pseudo-target's level.
    Arm(
        "DS3-Net 5% (core weight 4)",
        "ds3net",
        0.05,
        {**BATCH_LEVELS, "student_core_weight": 4.0},
        versus=BATCH_LEVELS_ARMS,
    ),
    # The tumour levels as a running mean over the augmented paired batches: the warp (bilinear T1ce, nearest
    # labels) put the core 0.04-0.05 too bright and the rim 0.015-0.04 too dark against the paired subjects' own
    # means (2026-12-06). The default until the sixteenth session.
    Arm("DS3-Net 5% (levels from augmented batches)", "ds3net", 0.05, BATCH_LEVELS),
    # DS3-Net before tumour-level pseudo-targets became its default (2026-12-06): the student distils the teacher's
    # own predictions, its L_id counting every voxel once. The arms measured on these defaults pin them.
    Arm("DS3-Net 5% (no tumour-level pseudo-targets)", "ds3net", 0.05, WITHOUT_LEVELS),
    # The semi-supervision issue's ensemble teacher (seventeenth session): the pseudo-target is the mean of the
    # teacher's four passes on the flipped unpaired batch, each flipped back. At test time those flips gave the
    # teacher +0.17 dB brain PSNR; a student distilling them gets targets better than its teacher's single pass.
    # Five seeds: -0.08 dB brain on the test-time flips (p = 0.032), +0.16 dB with one pass; not the default.
    Arm("DS3-Net 5% (flip-averaged pseudo-targets)", "ds3net", 0.05, {"teacher_flips": "all"}),
    # The semi-supervision issue's consistency training (eighteenth session): the student sees each unpaired batch
    # through a random warp of its own (20 degrees, zoom 0.85-1.15, shift, flip), and learns the teacher's unwarped
    # answer carried into that view, so it is taught to be equivariant where its teacher was only shown examples.
    Arm("DS3-Net 5% (consistency: warped student)", "ds3net", 0.05, {"student_warp": True}),
    # The unpaired stream's tumour slices listed three times per epoch, as the paired stream's are by default
    # (eighteenth session): the student meets more of the tumours whose levels and rims it is taught.
    Arm("DS3-Net 5% (unpaired tumour slices x3)", "ds3net", 0.05, run={"unpaired_tumour_repeats": 2}),
    # L_pid as squared error (nineteenth session): L1's minimiser is the conditional median, L2's the conditional mean
    # that MSE and PSNR score. The teacher (the paired-only model) changes, so the pair is read from one run.
    Arm(
        "paired-only 5% (L2 pixel loss)",
        "paired_only",
        0.05,
        {"pixel_loss": "l2"},
        read_from=("teacher", "DS3-Net 5% (L2 pixel loss)"),
    ),
    Arm("DS3-Net 5% (L2 pixel loss)", "ds3net", 0.05, {"pixel_loss": "l2"}),
    Arm("pix2pix 100% (L2 pixel loss)", "pix2pix", 1.0, {"pixel_loss": "l2"}),
    # The weights that ship as the mean of the weights at the validation checks in the learning-rate decay
    # (`--select average`, nineteenth session) instead of the single best-validation step, which four validation
    # subjects pick noisily. The training is the default arm's draw for draw; only what ships differs.
    Arm(
        "paired-only 5% (weight average)",
        "paired_only",
        0.05,
        run={"select": "average"},
        read_from=("teacher", "DS3-Net 5% (weight average)"),
    ),
    Arm("DS3-Net 5% (weight average)", "ds3net", 0.05, run={"select": "average"}),
    Arm("pix2pix 100% (weight average)", "pix2pix", 1.0, run={"select": "average"}),
    # Calibrated pseudo-targets (twenty-first session): the teacher's intensity calibration, refitted on the validation
    # subjects after every check, maps the pseudo-targets inside the brain, so the student learns levels fitted on
    # held-out T1ce where its teacher hedges between tissues. The teacher is the default arm's draw for draw.
    # Five seeds: +0.16 dB brain before the final calibration, -0.01 dB after it (it learns the map); not the default.
    Arm("DS3-Net 5% (calibrated pseudo-targets)", "ds3net", 0.05, {"calibrated_targets": True}),
    # Co-training (twenty-first session): once the student has joined, the teacher also learns the L1 to the student's
    # prediction on the unpaired batch at a tenth of L_pid's weight, so better targets can come back from the student
    # that has seen the unpaired subjects. The teacher is no longer the paired-only model: read the student against
    # the paired-only arm (the default arm's teacher, the same seed and split). Five seeds: +0.24 dB brain over
    # paired-only (p = 0.031), +0.09 dB over the default student, -0.05 ET Dice; second cohort +0.05 dB: off.
    Arm("DS3-Net 5% (co-training)", "ds3net", 0.05, {"teacher_mutual": 10.0}),
    # Co-training's weight swept (twenty-second session): W = 3 and W = 30, a third and three times the pull of W = 10.
    # W = 30, five seeds: +0.17 dB brain over paired-only (p = 0.12), level with the default student. W = 3, five
    # seeds (twenty-third session): +0.23 dB (p = 0.025), +0.08 over the default student, tumour and ET Dice level
    # with it; second cohort +0.03 dB over paired-only. Off at every weight.
    Arm("DS3-Net 5% (co-training, W = 3)", "ds3net", 0.05, {"teacher_mutual": 3.0}),
    Arm("DS3-Net 5% (co-training, W = 30)", "ds3net", 0.05, {"teacher_mutual": 30.0}),
    # Confidence-weighted pseudo-targets (twenty-second session), the one candidate of the semi-supervision issue no
    # session had run: L_id's weight inside the brain follows the teacher's agreement with itself across the four
    # flips of the unpaired batch, so the student copies its teacher least where the teacher contradicts itself.
    # Five seeds: +0.24 dB brain over paired-only (p = 0.063), +0.09 over the default student, ET Dice -0.025 at
    # every seed (p = 0.016); second cohort (twenty-third session, seeds 0-2) +0.01 dB; not the default.
    Arm("DS3-Net 5% (agreement-weighted pseudo-targets)", "ds3net", 0.05, {"teacher_agreement": "all"}),
    # The two together (twenty-third session): each gained about +0.1 dB brain over the default student by its own
    # route (the teacher learning back at W = 3; L_id moved to the voxels the teacher agrees on), so they may add.
    # Seeds 0-1: -0.03 dB brain and -0.015 ET Dice against the default student, under either part alone; they do not.
    Arm(
        "DS3-Net 5% (co-training W = 3, agreement-weighted)",
        "ds3net",
        0.05,
        {"teacher_mutual": 3.0, "teacher_agreement": "all"},
    ),
    # The student's adversarial term on the current defaults (twenty-fourth session). The recipes train the teacher
    # without one; the student's, at weight 1, is judged by a D^S whose only real images are the paired subject's, and
    # in the default arm's log at seed 0 it weighs as much as L_id once D^S wins (d_real, d_fake 0.003-0.03 from step
    # 900). The default student loses to its own teacher in the healthy white and grey matter (test MSE 0.0044 against
    # 0.0041 inside the white matter, five seeds) and gains only in the tumour; an adversary that pushes toward one
    # subject's texture is a suspect. The twelfth session's arm "no student adversarial" measured it on defaults
    # since replaced. Five seeds: +0.04 ± 0.04 dB brain over the default student (ahead at every seed), ET Dice
    # -0.010; the white matter still +0.144 x 1e-3 MSE above the teacher's: not the adversary; off.
    Arm("DS3-Net 5% (lambda_student_adv 0)", "ds3net", 0.05, {"lambda_student_adv": 0.0}),
    # The noisy student on the current defaults, with the adversarial term off (twenty-fourth session). The default
    # student carries more of its inputs' noise into its synthesis than its teacher and pix2pix do (inside the white
    # matter of three test subjects at seed 0, 0.0138 against 0.0118 and 0.0098 std of the change for input noise of
    # 0.02), and its synthesis fluctuates more there (0.024 against 0.020 and 0.016 std, five seeds). Its unpaired
    # inputs perturbed as the augmentation does (gamma, bias field, noise) while the teacher's pseudo-target comes
    # from the clean inputs teach it to ignore what its teacher's target does not follow. On the z-score defaults
    # before the tumour levels it gained +0.13 dB brain over its teacher and lost the tumour; the tumour levels now
    # set the tumour's target. Five seeds: -0.03 dB brain, -0.64 dB tumour, ET Dice -0.084 against the default
    # student; second cohort -0.04 dB over paired-only (split seed 1 +0.22, seed 0 -0.44). Off.
    Arm(
        "DS3-Net 5% (noisy student, lambda_student_adv 0)",
        "ds3net",
        0.05,
        {"student_noise": True, "lambda_student_adv": 0.0},
    ),
    # Five seeds: the white matter as good as the teacher's again (4.49 against 4.43 and the default student's 4.77
    # x 1e-3 MSE), the tumour lost (rim 45.3 against 35.0, ET Dice 0.387 against 0.471): gamma and bias field
    # perturbed per channel blur the T2 / FLAIR contrasts that set the rim apart from the oedema. The same with the
    # augmentation's additive noise alone (`student_noise_kind gaussian`), which leaves those contrasts as they are.
    # Five seeds: +0.08 ± 0.06 dB brain over the default student (p = 0.055, level or ahead at every seed), tumour
    # -0.02, ET Dice -0.011; +0.23 ± 0.18 over paired-only (p = 0.053). Second cohort (split seeds 0-2) +0.01 over the
    # default student, +0.07 over paired-only. Its white matter is still +0.113 x 1e-3 above the teacher's. Off.
    Arm(
        "DS3-Net 5% (noisy student: gaussian, lambda_student_adv 0)",
        "ds3net",
        0.05,
        {"student_noise": True, "student_noise_kind": "gaussian", "lambda_student_adv": 0.0},
    ),
    # The same at three times the noise (std drawn up to 0.06 instead of 0.02, the inputs' own noise being 1.2-3 % of
    # their signal): the student passes more input noise into its white matter than its teacher does (0.0138
    # against 0.0118 std per 0.02 of input noise), and a denoising task that weak may not teach it to stop.
    # Five seeds: -0.02 ± 0.04 dB brain against the default student, ET Dice -0.017; the white matter no
    # better (+0.154 x 1e-3 above the teacher), grey matter and CSF worse: more noise blurs the edges. Off.
    Arm(
        "DS3-Net 5% (noisy student: gaussian 0.06, lambda_student_adv 0)",
        "ds3net",
        0.05,
        {"student_noise": True, "student_noise_kind": "gaussian", "student_noise_std": 0.06, "lambda_student_adv": 0.0},
    ),
    # The twenty-fifth session read the student's excess error in the white matter as slow and following the T1's
    # own slow variation (the input's receive-coil bias field; low-pass correlation 0.44 as its teacher's, pix2pix's
    # 0.21), which additive noise does not touch. Here the student's inputs get the augmentation's slow multiplicative field per channel alone (no
    # gamma, no noise), so it is taught the teacher's answer to the input without that field. Five seeds (twenty-sixth
    # session, another machine, its own default arm beside it): +0.05 ± 0.05 dB brain over the default student
    # (p = 0.09), tumour +0.07, +0.12 ± 0.21 over paired-only; second cohort +0.09 over paired-only. Its white matter
    # varies as much as the default student's (0.78 against 0.80 x 1e-3): on that machine neither student follows the
    # T1's slow variation more than its teacher does, so the field was not what the student adds. Off.
    Arm(
        "DS3-Net 5% (noisy student: bias field, lambda_student_adv 0)",
        "ds3net",
        0.05,
        {
            "student_noise": True,
            "student_noise_kind": "bias-field",
            "student_noise_std": 0.0,
            "lambda_student_adv": 0.0,
        },
    ),
    # The two five-seed variants that each gained about +0.08 dB brain over the default student by different routes,
    # together: the teacher learning back from the student (co-training at W = 3) and the student denoising (the
    # gaussian noisy student without its adversarial term). Five seeds: +0.26 ± 0.17 dB brain over paired-only
    # (p = 0.026), +0.11 over the default student, only +0.03 over co-training alone; ET Dice 0.469. On a second
    # machine (twenty-seventh session): +0.15 ± 0.15 over paired-only (p = 0.08), +0.09 over the default student;
    # second cohort +0.06 over paired-only, -0.03 against the bias-field student. Off.
    Arm(
        "DS3-Net 5% (co-training W = 3, noisy student: gaussian, lambda_student_adv 0)",
        "ds3net",
        0.05,
        {"teacher_mutual": 3.0, "student_noise": True, "student_noise_kind": "gaussian", "lambda_student_adv": 0.0},
    ),
    # The student's excess white-matter error over its teacher grows away from the tumour whose levels it is taught
    # (2 % above the teacher's within 3 voxels of it, 13 % beyond 16), and averaging a quarter of the teacher's
    # synthesis into the student's gains +0.07 dB brain PSNR: the student drifts from its teacher where its
    # pseudo-target is the teacher's own output. Feature distillation ten times as strong (L_fd about 0.2 against
    # L_id about 1 at the default weights) holds its encoder nearer the teacher's. Five seeds (twenty-seventh session):
    # -0.09 ± 0.09 dB brain against the default student (p = 0.10), tumour -0.04; its white matter worse (4.82 against
    # 4.70 x 1e-3). Off.
    Arm("DS3-Net 5% (feature distillation x10)", "ds3net", 0.05, {"lambda_feature": 10.0}),
    # Where the room is (twenty-eighth session, offline on the default arm's saved test predictions, five seeds): the
    # paired-only model with each tumour label painted at the paired subject's level (the true labels) stands at
    # 23.76 dB brain, +0.59 over itself, its tumour at 23.8 dB against the student's 19.7; the student's own
    # tumour put into its teacher's synthesis reaches only +0.22. The shifted pseudo-targets keep the teacher's
    # blurred pattern inside the labels; painted ones teach the label map itself. Five seeds: -0.03 ± 0.08 dB brain
    # against the default student, tumour +0.05 (the rim nearer, the core further); second cohort +0.04 against its
    # bias-field student (+0.13 over paired-only). The student's tumour stays 4 dB below the painted labels': where it
    # puts them, not their pattern, limits it. Off.
    Arm("DS3-Net 5% (painted tumour-level targets)", "ds3net", 0.05, {"tumour_levels_mode": "replace"}),
    # One paired subject whatever the cohort's size (a fraction that rounds to one, at least one is kept), so a larger
    # cohort grows the unpaired pool alone: does the student's gain over its teacher grow with it? Its teacher is the
    # paired-only model of that one subject draw for draw. On a 100-case cohort (69 unpaired; twenty-eighth session)
    # +0.16 ± 0.16 dB brain over paired-only at five seeds (p = 0.11), against +0.07 with 27 unpaired. "DS3-Net 5%"
    # on 100-case cohorts (4 paired, 66 unpaired; twenty-ninth session): +0.27 ± 0.26 on phantom seed 2, -0.01 on seed 3.
    Arm("DS3-Net 1%", "ds3net", 0.01, versus=("paired-only 1%",)),
    Arm("paired-only 1%", "paired_only", 0.01, read_from=("teacher", "DS3-Net 1%")),
)

# Run when --arms is not given: the semi-supervision question (paired-only vs DS3-Net) and the fully supervised
# reference, on the current defaults. The mechanisms, the earlier defaults, the ablations and CUT are a --arms away.
DEFAULT_ARMS = ("paired-only 5%", "DS3-Net 5%", "pix2pix 100%")


def source_arm(arm: Arm, seed: int, out: Path) -> Arm:
    """The arm whose run at ``seed`` holds ``arm``'s model: ``arm`` itself, or one of the arms it is ``read_from``
    (the first with a finished run in ``out``, else the first)."""
    if not arm.read_from:
        return arm
    candidates = [next(other for other in ARMS if other.name == name) for name in arm.read_from[1:]]
    finished = (other for other in candidates if (out / _run_name(other, seed) / "metrics.json").exists())
    return next(finished, candidates[0])


def run_dir(arm: Arm, seed: int, out: Path) -> Path:
    """The run directory that holds ``arm`` at ``seed`` (its source arm's, for an arm read from another)."""
    return out / _run_name(source_arm(arm, seed, out), seed)


def _role(arm: Arm, report: dict[str, Any]) -> str:
    """The generator of the run that is ``arm``'s model: the role it is read as, or the run's shipped one."""
    return arm.read_from[0] if arm.read_from else report["shipped"]


def run_arm(arm: Arm, seed: int, base: RunConfig, out: Path) -> dict[str, float]:
    """Train one arm at one seed (or reuse a finished run) and return its shipped model's held-out means."""
    return run_report(arm, seed, base, out)["models"]["__shipped__"]


def run_report(arm: Arm, seed: int, base: RunConfig, out: Path) -> dict[str, Any]:
    """Train one arm at one seed (or reuse a finished run); its ``metrics.json`` with the shipped model's means under
    ``report["models"]["__shipped__"]`` (for an arm read from another arm's runs: the generator it is read as)."""
    if arm.read_from:
        report = run_report(source_arm(arm, seed, out), seed, base, out)
        report["models"]["__shipped__"] = report["models"][_role(arm, report)]["mean"]
        return report
    run_dir = out / _run_name(arm, seed)
    metrics_file = run_dir / "metrics.json"
    last = run_dir / "checkpoints" / "last.pt"
    # Each arm starts from its recipe's own defaults (learning rate, method options), then the arm's changes.
    recipe = load_recipe(arm.recipe)
    defaults = getattr(recipe, "DEFAULTS", base)
    config = dataclasses.replace(
        base,
        **arm.run,
        out=str(run_dir),
        seed=seed,
        paired_fraction=arm.paired_fraction,
        lr=defaults.lr,
        method_options={**defaults.method_options, **arm.options},
        resume=last.exists(),
    )
    finished = metrics_file.exists()
    if finished:
        _check_reusable(run_dir, config, getattr(recipe, "OPTIONS", None))
    # A fresh run, or one the trainer resumes (it refuses a checkpoint of other settings itself). A finished run
    # scored with other test-time flips, or before the intensity calibration existed, is resumed at its last step:
    # nothing trains, and the weights that shipped are calibrated and scored again (predictions, metrics.json; the
    # Dice caches are keyed by the flips and the calibration).
    stored = json.loads(metrics_file.read_text()) if finished else {}
    rescore = (
        finished
        and last.exists()
        and (
            stored.get("test_flips", "none") != config.test_flips or (config.calibrate and "calibration" not in stored)
        )
    )
    if not finished or rescore:
        Trainer(config, recipe.build, name=arm.recipe).fit()
    report = json.loads(metrics_file.read_text())
    report["models"]["__shipped__"] = report["models"][report["shipped"]]["mean"]
    return report


def _check_reusable(run_dir: Path, config: RunConfig, options_type: type | None = None) -> None:
    """Refuse a finished run trained with other settings than ``config`` asks (its length, or a
    :data:`~ds3kit.train.config.TRAINING_SETTINGS` entry): a changed default (or arm) must not silently reuse runs
    of the old one. The settings come from the run's checkpoint; a run without one has its metrics.json's."""
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists():  # memory-mapped: only the config is read, not the weights
        stored = torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("config", {})
    else:
        report = json.loads((run_dir / "metrics.json").read_text())
        stored = {key: report[key] for key in ("steps", "paired_fraction", "seed") if key in report}
    changed = config.differences(stored, option_defaults(options_type) if options_type else None)
    if "steps" in stored and stored["steps"] != config.steps:
        changed["steps"] = (stored["steps"], config.steps)
    if changed:
        found = ", ".join(f"{key} {old!r} (asked {new!r})" for key, (old, new) in changed.items())
        raise SystemExit(
            f"{run_dir} was trained with {found}: pass another --out, or move the run to the arm it belongs to "
            "(finished runs are reused only when they match)"
        )


def reference_rows(report: dict[str, Any], paired_fraction: float) -> dict[str, dict[str, float]]:
    """The baselines and ceilings of one run's report, as study rows: those that depend on the paired subjects
    (``linear``, the paired-levels ceiling) are labelled with the paired fraction, the others are not."""
    rows = {}
    order = (COPY_T1, LINEAR, CEILING_PAIRED_LEVELS, CEILING_POPULATION_LEVELS, CEILING_TISSUE, CEILING_NOISE_FREE)
    baselines = report.get("baselines", {})
    for name, result in sorted(baselines.items(), key=lambda item: order.index(item[0]) if item[0] in order else 99):
        depends_on_paired = name in (LINEAR, CEILING_PAIRED_LEVELS)
        rows[reference_label(name, paired_fraction if depends_on_paired else None)] = result["mean"]
    return rows


DIAGNOSED_ARM = "DS3-Net 5%"
DIAGNOSTIC_SUBSETS = ("train_paired", "train_unpaired", "test")


def diagnose(arm: Arm, seed: int, base: RunConfig, out: Path, *, max_subjects: int = 4) -> dict[str, dict[str, float]]:
    """Where a DS3-Net run's error comes from: its teacher and student on the subjects each one trained on.

    Evaluates ``teacher.pt`` and ``student.pt`` of the run on its paired training subjects, on (up to
    ``max_subjects`` of) its unpaired training subjects and on all its test subjects (the main table's); the result
    is cached in the run directory. Returns ``{"<model>/<subset>": held-out-style mean metrics}``.
    """
    from ds3kit.data import load_brats_case
    from ds3kit.evaluation import evaluate_generator
    from ds3kit.inference import load_generator

    run_dir = out / _run_name(arm, seed)
    cache = run_dir / "diagnostics.json"
    report = json.loads((run_dir / "metrics.json").read_text())
    flips = report.get("test_flips", "none")  # scored as the run's test scores were (its test row is theirs)
    cached = _cached(cache, flips)
    if cached is not None:
        return cached
    split = report["split"]
    root = _cohort_root(base)
    # Every paired and every test subject (the test row is then the main table's own); at most max_subjects of
    # the unpaired ones.
    limits = {"train_paired": None, "train_unpaired": max_subjects, "test": None}
    sessions = {
        name: [load_brats_case(root / case) for case in split[name][: limits[name]]] for name in DIAGNOSTIC_SUBSETS
    }
    device = resolve_device(base.device)
    result = {}
    for model in ("teacher", "student"):
        generator, _ = load_generator(run_dir / "checkpoints" / f"{model}.pt", device=device)
        for name, subset in sessions.items():
            if subset:
                result[f"{model}/{name}"] = evaluate_generator(generator, subset, device=device, flips=flips).mean
    atomic_write_text(cache, json.dumps({"test_flips": flips, "result": result}, indent=2))
    return result


def _cached(cache: Path, flips: str) -> Any:
    """The result a cache file holds when it was computed with these test-time flips; None otherwise (a file from
    before the flips were recorded holds the bare result of single passes)."""
    if not cache.exists():
        return None
    stored = json.loads(cache.read_text())
    if "test_flips" not in stored:
        stored = {"test_flips": "none", "result": stored}
    return stored["result"] if stored["test_flips"] == flips else None


def last_step_scores(arm: Arm, seed: int, base: RunConfig, out: Path) -> dict[str, dict[str, Any]]:
    """What the step selection chose: each generator of a finished run at the step that shipped (best validation)
    and at the run's last step (``checkpoints/last.pt``, what ``--select last`` would ship), on the test subjects.

    Both are scored before any intensity calibration (``metrics.json["uncalibrated"]``), so the difference is the
    step's alone. Returns ``{role: {"selected_step", "last_step", "selected": means, "last": means}}``, cached in the run
    directory as ``last_step.json``. The network is rebuilt by the arm's recipe from the run's own configuration.
    """
    from ds3kit.checkpoint import TRAINING_FORMAT, load_checkpoint
    from ds3kit.data import load_brats_case
    from ds3kit.evaluation import evaluate_generator

    if arm.read_from:
        role = arm.read_from[0]
        return {role: last_step_scores(source_arm(arm, seed, out), seed, base, out)[role]}
    run_dir = out / _run_name(arm, seed)
    cache = run_dir / "last_step.json"
    report = json.loads((run_dir / "metrics.json").read_text())
    flips = report.get("test_flips", "none")  # the last step scored as the shipped one was
    cached = _cached(cache, flips)
    if cached is not None:
        return cached
    payload = load_checkpoint(run_dir / "checkpoints" / "last.pt", kind=TRAINING_FORMAT, map_location="cpu")
    known = {f.name for f in dataclasses.fields(RunConfig)}
    config = RunConfig(**{key: value for key, value in payload["config"].items() if key in known})
    method = load_recipe(arm.recipe).build(config, payload["schedule"]["total"])
    method.load_state_dict(payload["model"])
    root = _cohort_root(base)
    cases = report["split"]["test"][: config.max_test_subjects] if config.max_test_subjects else report["split"]["test"]
    tests = [load_brats_case(root / case) for case in cases]  # the subjects the shipped model was scored on
    device = resolve_device(base.device)
    result = {}
    for role, generator in method.generators().items():
        if role not in report["models"]:
            continue
        result[role] = {
            "selected_step": report["selected_step"].get(role),
            "last_step": payload["step"],
            # Both steps as the network gives them: the calibration fitted after training is not a choice of step.
            "selected": report.get("uncalibrated", {}).get(role, report["models"][role])["mean"],
            "last": evaluate_generator(generator.to(device).eval(), tests, device=device, flips=flips).mean,
        }
    atomic_write_text(cache, json.dumps({"test_flips": flips, "result": result}, indent=2))
    return result


# The tissue split's oracle: the true tissue map painted with each test subject's own mean T1ce per tissue. It sees
# the test subject's T1ce; what it leaves inside a tissue is mostly the T1ce's own bias field, texture and noise, which
# the phantom draws independently of the inputs (ds3kit.data.phantom). At partial-volume edges, where a hard map is
# wrong, a network can beat it (pix2pix at 100 % does in the grey matter and CSF).
OWN_LEVELS = "oracle: tissue map, each subject's own levels"
# The references the tissue split puts beside the arms: the floor, the ceiling fully supervised levels allow, the
# oracle.
TISSUE_REFERENCES = (COPY_T1, CEILING_POPULATION_LEVELS, OWN_LEVELS)


def tissue_errors_of(arm: Arm, seed: int, base: RunConfig, out: Path) -> dict[str, dict[str, list[float]]] | None:
    """Where the brain error of ``arm``'s model lies at ``seed``, by the phantom's tissue, beside the references.

    Each entry of the result is ``{tissue: [sum of squared errors, voxels]}`` over the seed's test subjects
    (:func:`ds3kit.baselines.tissue_errors`): the arm's model under ``"model"``, read from its saved test predictions
    (the calibrated synthesis the run scored), and each of :data:`TISSUE_REFERENCES` under its name. None when the
    data has no phantom truth or the run saved no predictions. Cached per run in ``tissue_errors.json`` (every role
    with predictions), keyed by the run's test-time flips like the other caches.
    """
    import nibabel as nib

    from ds3kit.baselines import ceiling_predictors, copy_t1, tissue_errors, tissue_levels
    from ds3kit.data import load_brats_case
    from ds3kit.data.phantom import load_phantom_truth

    folder = run_dir(arm, seed, out)
    report = json.loads((folder / "metrics.json").read_text())
    role = _role(arm, report)
    cache = folder / "tissue_errors.json"
    flips = report.get("test_flips", "none")
    cached = _cached(cache, flips)
    if cached is None:
        root = _cohort_root(base)
        predictions = folder / "predictions"
        roles = sorted(path.name for path in predictions.iterdir() if path.is_dir()) if predictions.is_dir() else []
        cases = [
            case
            for case in report["split"]["test"]
            if roles and (predictions / roles[0] / f"{case}_t1ce.nii.gz").exists()
        ]
        training = [root / case for case in report["split"]["train_paired"] + report["split"]["train_unpaired"]]
        ceilings = ceiling_predictors([root / case for case in cases], (), training) if cases else None
        cached = {}
        if ceilings is not None and CEILING_POPULATION_LEVELS in ceilings:
            for case in cases:
                session = load_brats_case(root / case)
                brain, tissue = session.brain_mask, load_phantom_truth(root / case)["tissue"]
                candidates = {
                    COPY_T1: copy_t1(session),
                    CEILING_POPULATION_LEVELS: ceilings[CEILING_POPULATION_LEVELS](session),
                    OWN_LEVELS: np.where(brain, tissue_levels([(session, tissue)])[tissue], 0.0),
                }
                for name in roles:
                    image = nib.load(predictions / name / f"{case}_t1ce.nii.gz")
                    candidates[name] = np.asarray(image.dataobj, dtype=np.float32)
                for name, prediction in candidates.items():
                    totals = cached.setdefault(name, {})
                    for tissue_name, (error, count) in tissue_errors(prediction, session.target, tissue, brain).items():
                        entry = totals.setdefault(tissue_name, [0.0, 0])
                        entry[0] += error
                        entry[1] += count
        atomic_write_text(cache, json.dumps({"test_flips": flips, "result": cached}, indent=2))
    if role not in cached:
        return None
    return {"model": cached[role], **{name: cached[name] for name in TISSUE_REFERENCES}}


def _cohort_root(base: RunConfig) -> Path:
    """The study's data: ``--data``, or the phantom cohort of the study's size (generated on first use)."""
    from ds3kit.data import default_cohort

    return Path(base.data) if base.data else default_cohort(cases=base.phantom_cases, shape=base.phantom_shape)


def _run_name(arm: Arm, seed: int) -> str:
    return f"{arm.recipe}-{_slug(arm.name)}-seed{seed}"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


# --- the downstream metric: Dice of a segmenter run on each arm's synthesis ------------------------------------------

REAL_T1CE = "real T1ce (segmenter)"  # the Dice ceiling row: the segmenter with the real T1ce
# What segmenting without any T1ce reaches: a segmenter of the same network and budget trained on T1, T2, FLAIR (the
# T1 in the T1ce's channel), scored with the T1 copied in. A synthesis below it has added nothing to its inputs.
WITHOUT_T1CE = "no T1ce (segmenter on T1, T2, FLAIR)"


def segmenter_for(
    seed: int,
    base: RunConfig,
    out: Path,
    *,
    steps: int | None = None,
    smoke: bool = False,
    without_t1ce: bool = False,
    train: bool = True,
) -> Path | None:
    """The seed's segmenter checkpoint (``recipes/segmenter.py`` on the seed's split, so it never saw the seed's test
    subjects), trained into ``out/segmenter-seed{seed}`` (``segmenter-without-t1ce-seed{seed}`` for the one trained
    on T1, T2, FLAIR alone) the first time and reused after. With ``train=False`` a missing one is not trained:
    None."""
    folder = out / f"segmenter-{'without-t1ce-' if without_t1ce else ''}seed{seed}"
    checkpoint = folder / "checkpoints" / "segmenter.pt"
    if not checkpoint.exists():
        if not train:
            return None
        argv = ["--seed", str(seed), "--out", str(folder), "--no-progress", "--overwrite"]
        argv += ["--without-t1ce"] if without_t1ce else []
        argv += ["--data", base.data] if base.data else []
        argv += ["--device", base.device] if base.device else []
        argv += ["--steps", str(steps)] if steps else []
        argv += ["--smoke"] if smoke else []
        if load_recipe("segmenter").main(argv) != 0:
            raise SystemExit(f"training the segmenter of seed {seed} failed (see above)")
    return checkpoint


def run_dice(
    arm: Arm, seed: int, base: RunConfig, out: Path, segmenter: Path, without_t1ce: Path | None = None
) -> dict[str, dict[str, float]]:
    """ET / TC / WT Dice of the run's shipped model (its saved test predictions through the seed's segmenter), and
    of the two reference rows on the same subjects: ``{"__shipped__": means, REAL_T1CE: means, COPY_T1: means}``;
    with ``without_t1ce`` (the seed's segmenter trained on T1, T2, FLAIR alone) also ``WITHOUT_T1CE``.

    Cached in the run directory as ``dice.json``, keyed by the segmenters, so a finished study is only read.
    """
    from ds3kit.data import load_brats_case, load_volume
    from ds3kit.segment import check_held_out, check_reads_t1ce, load_segmenter, reference_t1ce, session_dice

    folder = run_dir(arm, seed, out)
    report = json.loads((folder / "metrics.json").read_text())
    shipped = _role(arm, report)
    # One cache per generator of the run: dice.json for the one it ships, dice-<role>.json for another read from it.
    cache = folder / ("dice.json" if shipped == report["shipped"] else f"dice-{shipped}.json")
    key = {
        "segmenter": str(segmenter),
        "without_t1ce": None if without_t1ce is None else str(without_t1ce),
        "test_flips": report.get("test_flips", "none"),  # the predictions the Dice was taken of
        "calibration": report.get("calibration", {}).get(shipped),  # and their intensity calibration
    }
    if cache.exists():
        cached = json.loads(cache.read_text())
        if {name: cached.get(name) for name in key} == key:
            return cached["rows"]
    cases = list(report["models"][shipped]["subjects"])  # the subjects the run scored (and wrote predictions of)
    device = resolve_device(base.device)
    model, metadata = load_segmenter(segmenter, device=device)
    check_reads_t1ce(metadata)
    check_held_out(metadata, cases)
    root = _cohort_root(base)
    # The reference rows depend on the seed's subjects only: recipes/segmenter.py already scored them on its test
    # subjects, so they are read from its report when the run scored the same ones, and computed otherwise.
    references = _segmenter_reference_rows(segmenter, cases)
    per_row: dict[str, list[dict[str, float]]] = {"__shipped__": []}
    if references is None:
        per_row.update({REAL_T1CE: [], COPY_T1: []})
    for case in cases:
        session = load_brats_case(root / case)
        prediction = load_volume(folder / "predictions" / shipped / f"{case}_t1ce.nii.gz").data
        per_row["__shipped__"].append(session_dice(model, session, prediction, device=device))
        if references is None:
            for row, name in ((REAL_T1CE, "real_t1ce"), (COPY_T1, "copy_t1")):
                per_row[row].append(session_dice(model, session, reference_t1ce(session, name), device=device))
    rows = {
        row: {key: float(np.mean([s[key] for s in scores])) for key in scores[0]} for row, scores in per_row.items()
    }
    rows.update(references or {})
    if without_t1ce is not None:
        rows[WITHOUT_T1CE] = _without_t1ce_row(without_t1ce, [root / case for case in cases], device)
    atomic_write_text(cache, json.dumps({**key, "rows": rows}, indent=2))
    return rows


def _without_t1ce_row(segmenter: Path, cases: list[Path], device: torch.device) -> dict[str, float]:
    """Mean Dice of the segmenter trained without T1ce on ``cases``, the T1 copied in: read from its run's report
    when it scored the same subjects, computed otherwise."""
    from ds3kit.data import load_brats_case
    from ds3kit.segment import check_held_out, load_segmenter, reference_t1ce, session_dice

    report_file = segmenter.parent.parent / "metrics.json"
    if report_file.exists():
        test = json.loads(report_file.read_text()).get("rows", {}).get("test", {}).get("copy_t1")
        if test is not None and set(test["subjects"]) == {case.name for case in cases}:
            return test["mean"]
    model, metadata = load_segmenter(segmenter, device=device)
    if metadata.get("t1ce_channel") != "t1":
        raise ValueError(f"{segmenter}: not a segmenter trained without T1ce (recipes/segmenter.py --without-t1ce)")
    check_held_out(metadata, [case.name for case in cases])
    scores = []
    for case in cases:
        session = load_brats_case(case, with_target=False)
        scores.append(session_dice(model, session, reference_t1ce(session, "copy_t1"), device=device))
    return {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}


def _segmenter_reference_rows(segmenter: Path, cases: list[str]) -> dict[str, dict[str, float]] | None:
    """``{REAL_T1CE: means, COPY_T1: means}`` from the segmenter run's own ``metrics.json`` (its test rows), or None
    when it is missing or scored other subjects than ``cases``."""
    report_file = segmenter.parent.parent / "metrics.json"
    if not report_file.exists():
        return None
    test = json.loads(report_file.read_text()).get("rows", {}).get("test", {})
    if not {"real_t1ce", "copy_t1"} <= test.keys() or set(test["real_t1ce"]["subjects"]) != set(cases):
        return None
    return {REAL_T1CE: test["real_t1ce"]["mean"], COPY_T1: test["copy_t1"]["mean"]}
